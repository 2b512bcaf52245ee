#include "model/pipelines/pipeline_stable_diffusion.h"

#include <cmath>
#include <map>
#include <mutex>
#include <stdexcept>

#include <torch/torch.h>

#include "model/clip/modeling_clip.h"
#include "model/clip/prompt_weighting.h"
#include "model/clip/tokenization_clip.h"
#include "model/clip/weighted_encoding.h"
#include "model/lora/lora_cache.h"
#include "model/lora/lora_weights.h"
#include "model/models/autoencoders/autoencoder_kl.h"
#include "model/models/unets/unet_2d_condition.h"
#include "model/pipelines/image_conditioning.h"
#include "model/pipelines/model_components.h"
#include "model/pruning/unet_pruner.h"
#include "model/runtime/flop_counter.h"
#include "model/runtime/memory_meter.h"
#include "model/schedulers/scheduler.h"

namespace ldcp::pipelines {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument(message);
}

// diffusers' rescale_noise_cfg (Lin et al. 2023, section 3.4): rescales the guided noise to
// the standard deviation of the text-conditioned one, mixed by `factor`.
at::Tensor rescale_noise_cfg(const at::Tensor& noise_cfg, const at::Tensor& noise_text,
                             double factor) {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < noise_text.dim(); ++d) dims.push_back(d);
  auto std_text = noise_text.std(dims, /*unbiased=*/true, /*keepdim=*/true);
  auto std_cfg = noise_cfg.std(dims, /*unbiased=*/true, /*keepdim=*/true);
  auto rescaled = noise_cfg * (std_text / std_cfg);
  return factor * rescaled + (1.0 - factor) * noise_cfg;
}

// One transformer's linears per attention resolution of the U-Net at its native size, batch 1,
// rows capped at 1024 so that timing SD1.5's 4096-row products does not add seconds to every
// start (a cap for start-up time: whether the ranking holds at 4096 rows is not checked here;
// bench/linear_bench.py measures the full shapes): the shapes "auto" times.
std::vector<runtime::LinearShape> unet_linear_shapes(const models::UNet2DConditionConfig& c) {
  std::vector<runtime::LinearShape> shapes;
  int64_t latent = c.sample_size ? c.sample_size->first : 64;
  auto add = [&](int64_t tokens, int64_t channels, int64_t cross) {
    const int64_t m = std::min<int64_t>(tokens, 1024);
    shapes.push_back({m, channels, channels});      // to_q, to_k, to_v, to_out, proj_in/out
    shapes.push_back({m, channels, 8 * channels});  // GEGLU proj (2 x 4c)
    shapes.push_back({m, 4 * channels, channels});  // net.2
    shapes.push_back({77, cross, channels});        // attn2's to_k, to_v on the text
  };
  for (size_t i = 0; i < c.num_blocks(); ++i) {
    const int64_t cross = c.cross_attention_dim[c.cross_attention_dim.size() == 1 ? 0 : i];
    if (c.down_block_types[i].find("CrossAttn") != std::string::npos) {
      add(latent * latent, c.block_out_channels[i], cross);
    }
    if (i + 1 < c.num_blocks()) latent = std::max<int64_t>(1, latent / 2);
  }
  add(latent * latent, c.block_out_channels.back(), c.cross_attention_dim.back());  // mid block
  return shapes;
}

}  // namespace

struct StableDiffusionPipeline::Parts {
  std::filesystem::path model_dir;
  PipelineOptions options;
  std::unique_ptr<clip::ClipTokenizer> tokenizer;
  clip::ClipTextModel text_encoder{nullptr};
  models::UNet2DConditionModel unet{nullptr};
  models::AutoencoderKL vae{nullptr};
  nlohmann::json scheduler_config;
  std::unique_ptr<pruning::UNetPruner> pruner;
  runtime::LinearChoice linear_choice;
  std::map<std::pair<int64_t, int64_t>, int64_t> unet_macs;  // (h, w) latent -> per sample
  // The gates' keep counts are state of the shared U-Net: a plan is applied and the forward
  // run under this lock, so that batches on several threads (the server's --workers) never
  // see each other's levels. Text encoding, sampling and decoding run outside it.
  mutable std::mutex unet_mutex;
  std::unique_ptr<lora::LoraTargets> lora_targets;
  std::unique_ptr<lora::LoraCache> lora_cache;

  // A request's LoRAs, loaded (or from the cache) and checked against the model; throws
  // std::invalid_argument naming loras[i].name or loras[i].weight.
  std::vector<std::pair<std::shared_ptr<const lora::LoraWeights>, double>> loras(
      const GenerationParams& p) const {
    std::vector<std::pair<std::shared_ptr<const lora::LoraWeights>, double>> out;
    for (size_t i = 0; i < p.loras.size(); ++i) {
      const auto& spec = p.loras[i];
      const std::string field = "loras[" + std::to_string(i) + "].";
      require(std::isfinite(spec.weight) && std::abs(spec.weight) <= lora::kMaxLoraWeight,
              field + "weight must be finite and in [-" + std::to_string(lora::kMaxLoraWeight) +
                  ", " + std::to_string(lora::kMaxLoraWeight) + "]");
      try {
        const auto file = lora_cache->resolve(spec.name);
        out.emplace_back(lora_cache->get(file, [&](const std::filesystem::path& f) {
          return lora_targets->read(f);
        }),
                         spec.weight);
      } catch (const std::exception& e) {
        throw std::invalid_argument(field + "name: " + e.what());
      }
    }
    return out;
  }
};

StableDiffusionPipeline::StableDiffusionPipeline(std::unique_ptr<Parts> parts)
    : parts_(std::move(parts)) {}
StableDiffusionPipeline::~StableDiffusionPipeline() = default;

std::unique_ptr<StableDiffusionPipeline> StableDiffusionPipeline::load(
    const std::filesystem::path& model_dir, const PipelineOptions& options) {
  if (options.dtype != torch::kFloat && options.dtype != torch::kHalf &&
      options.dtype != torch::kBFloat16) {
    throw std::invalid_argument("dtype must be float32, float16 or bfloat16");
  }
  // On the CPU, install the tracking allocator before the weights are read, so that memory
  // figures count them (as resident) too.
  runtime::MemoryMeter{c10::Device(c10::kCPU)};
  auto parts = std::make_unique<Parts>();
  parts->model_dir = model_dir;
  parts->options = options;
  io::LoadOptions load_options;
  load_options.prefer_fp16 = options.prefer_fp16_weights;
  load_options.dtype = options.dtype;  // converted while reading: no fp32 copy of a bf16 run
  auto components = load_model_components(model_dir, load_options, options.channels_last,
                                          options.single_file_config);
  parts->tokenizer = std::move(components.tokenizer);
  parts->text_encoder = std::move(components.text_encoder);
  parts->unet = std::move(components.unet);
  parts->vae = std::move(components.vae);
  parts->scheduler_config = std::move(components.scheduler_config);
  const int64_t scale = parts->vae->config().spatial_scale();
  if (options.vae_tile_size < 0 || options.vae_tile_size % scale != 0) {
    throw std::invalid_argument("vae_tile_size: " + std::to_string(options.vae_tile_size) +
                                " is not 0 or a positive multiple of " + std::to_string(scale));
  }
  if (!(options.vae_tile_overlap >= 0 && options.vae_tile_overlap < 1)) {
    throw std::invalid_argument("vae_tile_overlap: must be in [0, 1)");
  }
  for (torch::nn::Module* module : {static_cast<torch::nn::Module*>(parts->text_encoder.get()),
                                    static_cast<torch::nn::Module*>(parts->unet.get()),
                                    static_cast<torch::nn::Module*>(parts->vae.get())}) {
    module->eval();
    module->to(options.device, options.dtype);
  }
  // Gates on every ResNet block and feed-forward, units reordered once by importance: level 0
  // computes the full model; other levels slice a prefix of each layer.
  pruning::GateScores scores;
  if (!options.gates_file.empty()) {
    scores = pruning::load_gate_scores(options.gates_file);
  } else if (options.score_source == "random") {
    scores = pruning::random_scores(*parts->unet, options.random_scores_seed);
  } else if (options.score_source == "magnitude") {
    scores = pruning::magnitude_scores(*parts->unet);
  } else {
    throw std::invalid_argument("score source \"" + options.score_source +
                                "\" needs a gates file (known without one: magnitude, random)");
  }
  parts->pruner = std::make_unique<pruning::UNetPruner>(*parts->unet, scores);
  parts->lora_targets = std::make_unique<lora::LoraTargets>(
      *parts->unet, *parts->text_encoder, parts->pruner.get(), options.device, options.dtype);
  parts->lora_cache = std::make_unique<lora::LoraCache>(options.lora_dir, options.lora_cache_bytes);
  if (options.device.is_cpu()) {
    parts->linear_choice = runtime::configure_linear_backend(
        options.linear_backend, options.dtype, unet_linear_shapes(parts->unet->config()));
  } else {
    parts->linear_choice.reason = "CUDA: cuBLAS";
  }
  return std::unique_ptr<StableDiffusionPipeline>(new StableDiffusionPipeline(std::move(parts)));
}

const runtime::LinearChoice& StableDiffusionPipeline::linear_backend_choice() const {
  return parts_->linear_choice;
}

const lora::LoraTargets& StableDiffusionPipeline::lora_targets() const {
  return *parts_->lora_targets;
}
lora::LoraCache& StableDiffusionPipeline::lora_cache() const { return *parts_->lora_cache; }

int64_t StableDiffusionPipeline::vae_scale_factor() const {
  return parts_->vae->config().spatial_scale();
}

int64_t StableDiffusionPipeline::native_resolution() const {
  const auto& sample_size = parts_->unet->config().sample_size;
  return (sample_size ? sample_size->first : 64) * vae_scale_factor();
}

models::UNet2DConditionModelImpl& StableDiffusionPipeline::unet() { return *parts_->unet; }
pruning::UNetPruner& StableDiffusionPipeline::pruner() { return *parts_->pruner; }

int64_t StableDiffusionPipeline::unet_macs_per_sample(int64_t latent_height,
                                                      int64_t latent_width) const {
  std::lock_guard unet_lock(parts_->unet_mutex);
  auto it = parts_->unet_macs.find({latent_height, latent_width});
  return it == parts_->unet_macs.end() ? 0 : it->second;
}

const PipelineOptions& StableDiffusionPipeline::options() const { return parts_->options; }
const std::filesystem::path& StableDiffusionPipeline::model_dir() const {
  return parts_->model_dir;
}
const nlohmann::json& StableDiffusionPipeline::scheduler_config() const {
  return parts_->scheduler_config;
}

namespace {

std::vector<clip::PromptChunk> a1111_chunks(const clip::ClipTokenizer& tokenizer,
                                            const std::string& text) {
  return clip::chunk_weighted_prompt(
      clip::parse_prompt_attention(text),
      [&](const std::string& piece) { return tokenizer.tokenize(piece); },
      clip::chunking_options(tokenizer));
}

}  // namespace

void StableDiffusionPipeline::validate(const GenerationParams& p) const {
  require(p.width >= 8 && p.width % 8 == 0,
          "width must be a positive multiple of 8, got " + std::to_string(p.width));
  require(p.height >= 8 && p.height % 8 == 0,
          "height must be a positive multiple of 8, got " + std::to_string(p.height));
  require(p.width % vae_scale_factor() == 0 && p.height % vae_scale_factor() == 0,
          "width and height must be multiples of the VAE scale factor " +
              std::to_string(vae_scale_factor()));
  require(p.steps >= 1, "steps must be at least 1, got " + std::to_string(p.steps));
  require(std::isfinite(p.guidance_scale), "guidance_scale must be finite");
  require(std::isfinite(p.guidance_rescale) && p.guidance_rescale >= 0 && p.guidance_rescale <= 1,
          "guidance_rescale must be in [0, 1]");
  require(std::isfinite(p.eta) && p.eta >= 0, "eta must be a finite number >= 0");
  require(p.num_images >= 1, "num_images must be at least 1, got " + std::to_string(p.num_images));
  p.pruning.validate();
  const int64_t layers = parts_->text_encoder->config().num_hidden_layers;
  require(p.clip_skip >= 0 && p.clip_skip <= layers,
          "clip_skip must be in [0, " + std::to_string(layers) +
              "] (the text encoder's layers), got " + std::to_string(p.clip_skip));
  if (p.prompt_syntax == PromptSyntax::kA1111) {
    for (const auto* text : {&p.prompt, &p.negative_prompt}) {
      const auto chunks = static_cast<int64_t>(a1111_chunks(*parts_->tokenizer, *text).size());
      require(chunks <= kMaxPromptChunks,
              std::string(text == &p.prompt ? "prompt" : "negative_prompt") + " has " +
                  std::to_string(chunks) + " chunks of 75 tokens, at most " +
                  std::to_string(kMaxPromptChunks) + " allowed");
    }
  }
  validate_image_params(p, parts_->unet->config().in_channels);
  parts_->loras(p);
  const auto& names = schedulers::sampler_names();
  if (std::find(names.begin(), names.end(), p.sampler) == names.end()) {
    std::string known;
    for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
    throw std::invalid_argument("unknown sampler \"" + p.sampler + "\" (known: " + known + ")");
  }
}

at::Tensor StableDiffusionPipeline::encode_prompt(const std::string& prompt,
                                                  const std::string& negative_prompt,
                                                  int64_t num_images, bool classifier_free_guidance,
                                                  PromptSyntax syntax, int64_t clip_skip) {
  torch::NoGradGuard no_grad;
  const auto& device = parts_->options.device;
  auto& encoder = *parts_->text_encoder;
  auto embed = [&](const std::string& text) {
    auto ids = parts_->tokenizer->encode(text);
    auto input = torch::tensor(ids, torch::kInt64).unsqueeze(0).to(device);
    return clip::encode_with_clip_skip(encoder, input, clip_skip).to(parts_->options.dtype);
  };
  if (syntax == PromptSyntax::kA1111) {
    auto positive = a1111_chunks(*parts_->tokenizer, prompt);
    if (!classifier_free_guidance) {
      return clip::encode_weighted_chunks(encoder, positive, clip_skip)
          .to(parts_->options.dtype)
          .repeat({num_images, 1, 1});
    }
    auto negative = a1111_chunks(*parts_->tokenizer, negative_prompt);
    const auto empty = clip::empty_prompt_chunk(clip::chunking_options(*parts_->tokenizer));
    while (positive.size() < negative.size()) positive.push_back(empty);
    while (negative.size() < positive.size()) negative.push_back(empty);
    auto pos = clip::encode_weighted_chunks(encoder, positive, clip_skip).to(parts_->options.dtype);
    auto neg = clip::encode_weighted_chunks(encoder, negative, clip_skip).to(parts_->options.dtype);
    return torch::cat({neg.repeat({num_images, 1, 1}), pos.repeat({num_images, 1, 1})});
  }
  auto positive = embed(prompt).repeat({num_images, 1, 1});
  if (!classifier_free_guidance) return positive;
  auto negative = embed(negative_prompt).repeat({num_images, 1, 1});
  return torch::cat({negative, positive});
}

bool batchable(const GenerationParams& a, const GenerationParams& b) {
  // The first step an init image's run takes; -1 for text-to-image.
  auto start = [](const GenerationParams& p) -> int64_t {
    return p.init_image.defined() ? first_denoising_step(p.steps, effective_strength(p)) : -1;
  };
  return a.width == b.width && a.height == b.height && a.steps == b.steps &&
         a.sampler == b.sampler && a.eta == b.eta &&
         (a.guidance_scale > 1.0) == (b.guidance_scale > 1.0) && a.pruning == b.pruning &&
         a.mask_image.defined() == b.mask_image.defined() && start(a) == start(b) &&
         a.prompt_syntax == b.prompt_syntax && a.loras == b.loras &&
         (a.prompt_syntax == PromptSyntax::kPlain ||
          (a.prompt == b.prompt && a.negative_prompt == b.negative_prompt));
}

GenerationResult StableDiffusionPipeline::generate(const GenerationParams& params,
                                                   const StepCallback& callback) {
  BatchStepCallback batch_callback;
  if (callback) batch_callback = [&](size_t, const StepInfo& info) { return callback(info); };
  return std::move(generate_batch({params}, batch_callback).front());
}

std::vector<GenerationResult> StableDiffusionPipeline::generate_batch(
    const std::vector<GenerationParams>& requests, const BatchStepCallback& callback) {
  if (requests.empty()) return {};
  for (const auto& r : requests) {
    validate(r);
    if (!batchable(requests.front(), r)) {
      throw std::invalid_argument(
          "requests in one batch must share size, steps, sampler, guidance on/off, pruning, "
          "kind (text-to-image, img2img, inpainting), strength's first step and LoRAs");
    }
  }
  torch::NoGradGuard no_grad;
  const auto start = Clock::now();
  const auto& opts = parts_->options;
  runtime::MemoryMeter meter(opts.device);
  const int64_t baseline_bytes = meter.stats().allocated_bytes;
  meter.reset_peak();
  // The batch's LoRA branches, on this thread for the whole batch (text encoder and U-Net).
  std::unique_ptr<lora::ActiveAdapters> adapters;
  if (!requests.front().loras.empty()) {
    adapters = parts_->lora_targets->adapters(parts_->loras(requests.front()));
  }
  lora::ScopedAdapters lora_scope(adapters.get());

  const auto& first = requests.front();
  const bool guided = first.guidance_scale > 1.0;
  const size_t count = requests.size();
  std::vector<GenerationResult> results(count);

  // Per request: its embeddings, its own sampler state and its own generator, so that each
  // result equals the request run alone.
  struct Slot {
    at::Tensor embeddings, latents;
    std::unique_ptr<schedulers::Scheduler> scheduler;
    at::Generator generator;
    ImageConditioning conditioning;  // img2img and inpainting
    bool active = true;
  };
  std::vector<Slot> slots(count);
  const int64_t scale = vae_scale_factor();
  const auto& unet_config = parts_->unet->config();
  at::Tensor timesteps;
  int64_t first_step = 0;  // > 0: an init image's run starts part way (strength)
  for (size_t r = 0; r < count; ++r) {
    const auto& p = requests[r];
    auto& slot = slots[r];
    const auto encode_start = Clock::now();
    slot.embeddings = encode_prompt(p.prompt, p.negative_prompt, p.num_images, guided,
                                    p.prompt_syntax, p.clip_skip);
    results[r].timings.text_encoding_s = seconds_since(encode_start);
    schedulers::SamplerOptions sampler_options;
    sampler_options.eta = p.eta;
    slot.scheduler =
        schedulers::make_scheduler(p.sampler, parts_->scheduler_config, sampler_options);
    slot.scheduler->set_timesteps(p.steps);
    slot.generator = at::make_generator<at::CPUGeneratorImpl>(p.seed);
    if (p.init_image.defined()) {
      // img2img / inpainting: the sampler's timesteps cut by strength (get_timesteps).
      const int64_t start = first_denoising_step(p.steps, effective_strength(p));
      slot.scheduler->set_begin_index(start);
      if (r == 0) {
        timesteps = slot.scheduler->timesteps().slice(0, start);
        first_step = start;
      }
      const auto image_start = Clock::now();
      slot.latents =
          prepare_image_latents(p, *parts_->vae, *slot.scheduler,
                                slot.scheduler->timesteps()[start], unet_config.in_channels, guided,
                                slot.generator, opts.dtype, opts.device, slot.conditioning);
      results[r].timings.image_encoding_s = seconds_since(image_start);
      continue;
    }
    if (r == 0) timesteps = slot.scheduler->timesteps();
    // As diffusers' randn_tensor with a CPU generator: drawn on the CPU in the target dtype.
    slot.latents =
        at::randn({p.num_images, unet_config.in_channels, p.height / scale, p.width / scale},
                  slot.generator, at::TensorOptions().dtype(opts.dtype))
            .to(opts.device) *
        slot.scheduler->init_noise_sigma();
  }

  const auto denoise_start = Clock::now();
  const int64_t num_steps = timesteps.size(0);
  const std::pair<int64_t, int64_t> latent_size{first.height / scale, first.width / scale};
  std::map<double, pruning::LevelPlan> plans;
  double channel_fraction_sum = 0, macs_fraction_sum = 0;
  int64_t steps_run = 0;
  for (int64_t i = 0; i < num_steps; ++i) {
    const auto t = timesteps[i];
    const double t_value = t.item<double>();
    // Indexed in the full schedule: an init image's step keeps its level whatever the strength.
    const double level = first.pruning.level_at(first_step + i, t_value);
    auto plan_it = plans.find(level);
    if (plan_it == plans.end()) plan_it = plans.emplace(level, parts_->pruner->plan(level)).first;
    const auto& plan = plan_it->second;
    std::vector<at::Tensor> inputs, embeddings;
    std::vector<size_t> active;
    for (size_t r = 0; r < count; ++r) {
      if (!slots[r].active) continue;
      active.push_back(r);
      auto& slot = slots[r];
      auto input = guided ? torch::cat({slot.latents, slot.latents}) : slot.latents;
      inputs.push_back(slot.conditioning.unet_input(slot.scheduler->scale_model_input(input, t)));
      embeddings.push_back(slot.embeddings);
    }
    if (active.empty()) break;
    auto batch_input = torch::cat(inputs);
    auto batch_embeddings = torch::cat(embeddings);
    at::Tensor noise_all;
    int64_t full_macs = 0, dropped_macs = 0;
    {
      std::lock_guard unet_lock(parts_->unet_mutex);
      parts_->pruner->apply(plan);
      auto macs_it = parts_->unet_macs.find(latent_size);
      if (macs_it == parts_->unet_macs.end()) {
        // Count the operators of the first forward at this size: what ran plus what the plan
        // dropped is the full U-Net's cost.
        runtime::FlopCounter counter;
        noise_all = parts_->unet->forward(batch_input, t.to(opts.device), batch_embeddings);
        const int64_t batch = batch_input.size(0);
        const int64_t full =
            counter.macs() / batch + parts_->pruner->dropped_macs_last_forward(plan);
        macs_it = parts_->unet_macs.emplace(latent_size, full).first;
      } else {
        noise_all = parts_->unet->forward(batch_input, t.to(opts.device), batch_embeddings);
      }
      full_macs = macs_it->second;
      dropped_macs = parts_->pruner->dropped_macs_last_forward(plan);
      parts_->pruner->reset();
    }
    ++steps_run;
    channel_fraction_sum += plan.dropped_channel_fraction;
    macs_fraction_sum +=
        full_macs > 0 ? static_cast<double>(dropped_macs) / static_cast<double>(full_macs) : 0.0;
    int64_t offset = 0;
    for (size_t k = 0; k < active.size(); ++k) {
      const size_t r = active[k];
      auto& slot = slots[r];
      const auto& p = requests[r];
      const int64_t rows = inputs[k].size(0);
      auto noise = noise_all.narrow(0, offset, rows);
      offset += rows;
      if (guided) {
        auto chunks = noise.chunk(2);
        auto noise_text = chunks[1];
        noise = chunks[0] + p.guidance_scale * (noise_text - chunks[0]);
        if (p.guidance_rescale > 0)
          noise = rescale_noise_cfg(noise, noise_text, p.guidance_rescale);
      }
      slot.latents = slot.scheduler->step(noise, t, slot.latents, slot.generator);
      slot.latents = slot.conditioning.after_step(slot.latents, *slot.scheduler, timesteps, i);
      results[r].timesteps.push_back(t_value);
      results[r].step_levels.push_back(level);
      if (callback && !callback(r, StepInfo{i, num_steps, t_value, &slot.latents})) {
        slot.active = false;
        results[r].stopped = true;
      }
    }
  }
  const double denoising_s = seconds_since(denoise_start);
  // The U-Net's freed activations, kept by the heap for reuse between steps, must not add to
  // the decoder's peak (the process's resident peak at 512x512).
  if (parts_->options.device.is_cpu()) runtime::release_free_cpu_memory();

  // One image at a time: the decoder's activations at full resolution dominate a request's
  // peak memory, and they scale with the batch.
  const double scaling_factor = parts_->vae->config().scaling_factor;
  const int64_t tile = parts_->options.vae_tile_size;
  auto decode_latents = [&](const at::Tensor& latents) {
    if (tile > 0 && (latents.size(2) * scale > tile || latents.size(3) * scale > tile)) {
      return parts_->vae->decode_tiled(latents, tile / scale, parts_->options.vae_tile_overlap);
    }
    return parts_->vae->decode(latents);
  };
  for (size_t r = 0; r < count; ++r) {
    auto& result = results[r];
    result.timings.denoising_s = denoising_s;
    if (result.stopped) continue;
    const auto decode_start = Clock::now();
    std::vector<at::Tensor> images;
    for (int64_t n = 0; n < slots[r].latents.size(0); ++n) {
      auto image = decode_latents(slots[r].latents.narrow(0, n, 1) / scaling_factor);
      images.push_back((image / 2 + 0.5).clamp(0, 1).to(torch::kCPU, torch::kFloat));
    }
    result.images = torch::cat(images).permute({0, 2, 3, 1}).contiguous();
    result.timings.decoding_s = seconds_since(decode_start);
  }
  // Likewise the decoder's, so that an idle server does not hold them.
  if (parts_->options.device.is_cpu()) runtime::release_free_cpu_memory();
  const auto memory = meter.stats();
  const double total_s = seconds_since(start);
  for (auto& result : results) {
    result.timings.total_s = total_s;
    result.peak_memory_bytes = memory.peak_allocated_bytes;
    result.peak_memory_above_weights_bytes = memory.peak_allocated_bytes - baseline_bytes;
    if (steps_run > 0) {
      result.pruned_channel_fraction = channel_fraction_sum / static_cast<double>(steps_run);
      result.pruned_flops_fraction = macs_fraction_sum / static_cast<double>(steps_run);
    }
  }
  return results;
}

at::Tensor to_uint8(const at::Tensor& images) {
  return (images.to(torch::kFloat) * 255).round().clamp(0, 255).to(torch::kUInt8).contiguous();
}

}  // namespace ldcp::pipelines
