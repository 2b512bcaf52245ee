// `ldcp generate`: text to PNG with the C++ pipeline.
#include <cstdio>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <sstream>

#include <torch/torch.h>

#include "cli/progress.h"
#include "model/pipelines/image_io.h"
#include "model/pipelines/model_identity.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "model/pruning/gate_scores.h"
#include "model/pruning/step_schedule.h"
#include "model/pruning/unet_pruner.h"
#include "model/runtime/device.h"
#include "model/runtime/dtype.h"
#include "model/schedulers/scheduler.h"
#include "tools/commands.h"

namespace ldcp::tools {

using cli::Progress;

c10::ScalarType parse_dtype(const std::string& name, const c10::Device& device) {
  const auto choice = runtime::resolve_dtype(name, device);
  if (name == "auto") {
    std::fprintf(stderr, "dtype: %s (%s)\n", choice.name.c_str(), choice.reason.c_str());
  }
  return choice.dtype;
}

void add_linear_backend_option(CLI::App& command, std::string& backend) {
  command
      .add_option("--linear-backend", backend,
                  "The U-Net's linear layers on the CPU: auto (time ATen and oneDNN on the "
                  "U-Net's shapes at load, keep the faster), aten or onednn")
      ->envname("LDCP_LINEAR_BACKEND")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "aten", "onednn"}));
}

void print_linear_backend(const std::string& requested,
                          const pipelines::StableDiffusionPipeline& pipeline) {
  if (requested != "auto") return;
  const auto& choice = pipeline.linear_backend_choice();
  std::fprintf(stderr, "linears: %s (%s)\n", runtime::linear_backend_name(choice.backend).c_str(),
               choice.reason.c_str());
}

void add_dtype_option(CLI::App* app, std::string& dtype, const std::string& help) {
  app->add_option("--dtype", dtype,
                  help.empty() ? "auto (fp16 on CUDA, bf16 on a CPU with native bf16 "
                                 "arithmetic, else fp32), fp32, fp16 or bf16"
                               : help)
      ->envname("LDCP_DTYPE")
      ->capture_default_str()
      ->check(CLI::IsMember({"auto", "fp32", "fp16", "bf16", "float32", "float16", "bfloat16"}));
}

void add_memory_format_option(CLI::App& command, bool& channels_last) {
  command
      .add_option_function<std::string>(
          "--memory-format",
          [&channels_last](const std::string& value) { channels_last = value == "channels_last"; },
          "Convolution weight layout: channels_last (NHWC, faster) or contiguous (NCHW)")
      ->default_str("channels_last")
      ->check(CLI::IsMember({"channels_last", "contiguous"}));
}

std::vector<double> parse_levels(const std::string& text, const std::string& option) {
  std::vector<double> levels;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    double level = 0;
    try {
      level = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || !(level >= 0.0 && level < 1.0)) {
      throw std::invalid_argument(option + ": \"" + item + "\" is not a level in [0, 1)");
    }
    levels.push_back(level);
  }
  if (levels.empty()) throw std::invalid_argument(option + ": no levels given");
  return levels;
}

namespace {

// FILE.png for one image; FILE-0.png, FILE-1.png, ... for several.
std::filesystem::path output_path(const std::filesystem::path& out, int64_t index, int64_t count) {
  if (count == 1) return out;
  auto name = out.stem().string() + "-" + std::to_string(index) + out.extension().string();
  return out.parent_path() / name;
}

struct GenerateArgs {
  std::string model, out, device = "cpu", dtype = "auto", gates, scores = "magnitude";
  std::string linear_backend = "auto";
  int64_t vae_tile_size = 0;
  pipelines::GenerationParams params;
  std::optional<uint64_t> seed;
  bool fp16_weights = false;
  bool channels_last = true;
  std::optional<double> pruning_level;
  std::optional<double> pruning_below_timestep;
  std::string pruning_steps;
  std::optional<double> pruning_budget;
  std::string lora_dir;            // --lora NAME: NAME.safetensors there (or NAME a path)
  std::vector<std::string> loras;  // NAME:WEIGHT
  std::string init_image, mask;    // img2img / inpainting

  bool no_metadata = false;  // no "parameters" text in the PNGs
};

// --pruning-budget: the gates file's learned schedule for that mean FLOPs fraction, mapped onto
// this run's timesteps (step_schedule.h: as stored for the sampler and step count it was tuned
// for, re-mapped over the timestep otherwise).
pruning::PruningSchedule budget_schedule(pipelines::StableDiffusionPipeline& pipeline,
                                         const GenerateArgs& args,
                                         const pipelines::GenerationParams& params) {
  const double budget = *args.pruning_budget;
  std::ostringstream what;
  what << "--pruning-budget " << budget;
  if (!(budget > 0.0 && budget <= 1.0)) {
    throw std::invalid_argument(what.str() + ": must be a FLOPs fraction in (0, 1]");
  }
  if (args.gates.empty()) {
    throw std::invalid_argument(what.str() +
                                ": needs --gates FILE with learned step schedules (ldcp "
                                "tune-schedule writes them)");
  }
  const auto schedules =
      pruning::step_schedules_from_metadata(pipeline.pruner().scores().metadata, args.gates);
  const auto& schedule = pruning::find_step_schedule(schedules, budget, what.str());
  auto sampler = schedulers::make_scheduler(params.sampler, pipeline.scheduler_config());
  sampler->set_timesteps(params.steps);
  const auto t = sampler->timesteps().to(torch::kDouble).contiguous();
  const std::vector<double> timesteps(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
  auto levels = pruning::levels_for_timesteps(schedule, timesteps);
  std::printf("pruning budget %g: schedule tuned for %s, %lld steps (floor %g)%s; step levels",
              schedule.budget, schedule.sampler.c_str(), static_cast<long long>(schedule.steps),
              schedule.floor, levels == schedule.levels ? "" : ", re-mapped onto these timesteps");
  for (size_t i = 0; i < levels.size(); ++i) std::printf("%s%.6f", i ? "," : " ", levels[i]);
  std::printf("\n");
  return pruning::PruningSchedule::steps(std::move(levels));
}

void run_generate(GenerateArgs& args) {
  pipelines::PipelineOptions options;
  options.device = runtime::parse_device(args.device);
  options.dtype = parse_dtype(args.dtype, options.device);
  options.prefer_fp16_weights = args.fp16_weights;
  options.gates_file = args.gates;
  options.score_source = args.scores;
  options.vae_tile_size = args.vae_tile_size;
  options.channels_last = args.channels_last;
  options.linear_backend = args.linear_backend;
  options.lora_dir = args.lora_dir;
  auto& params = args.params;
  for (const auto& text : args.loras) params.loras.push_back(lora::parse_lora_option(text));
  params.seed = args.seed ? *args.seed : std::random_device{}();
  if (!args.pruning_steps.empty()) {
    params.pruning =
        pruning::PruningSchedule::steps(parse_levels(args.pruning_steps, "--pruning-steps"));
  } else if (args.pruning_level) {
    params.pruning = pruning::PruningSchedule::fixed(*args.pruning_level);
    params.pruning.below_timestep = args.pruning_below_timestep;
  }

  // img2img / inpainting: PNG or JPEG files, not resized (0 width or height: the image's).
  if (!args.init_image.empty()) {
    params.init_image = pipelines::read_image(args.init_image);
    if (params.width == 0) params.width = params.init_image.size(1);
    if (params.height == 0) params.height = params.init_image.size(0);
  }
  if (!args.mask.empty()) params.mask_image = pipelines::read_image(args.mask);

  auto pipeline = pipelines::StableDiffusionPipeline::load(args.model, options);
  print_linear_backend(args.linear_backend, *pipeline);
  // A1111's "parameters" text for the PNGs (generation_parameters.h): the model hashed once.
  std::optional<pipelines::ModelIdentity> identity;
  if (!args.no_metadata) {
    identity = pipelines::identify_model(args.model, args.fp16_weights, args.gates);
    identity->gate_scores = pipeline->pruner().scores().source;
    identity->lora_hashes = std::make_shared<pipelines::LoraFileHashes>(args.lora_dir);
  }
  // 0 means the model's native size, as diffusers' default (unet sample_size x VAE factor).
  if (params.width == 0) params.width = pipeline->native_resolution();
  if (params.height == 0) params.height = pipeline->native_resolution();
  if (args.pruning_budget) params.pruning = budget_schedule(*pipeline, args, params);
  pipeline->validate(params);

  Progress progress("denoising", params.steps);
  auto result = pipeline->generate(params, [&](const pipelines::StepInfo& step) {
    progress.set_total(step.num_steps);  // PNDM runs one timestep more than it is asked for
    progress.update(step.step + 1, "t=" + std::to_string(static_cast<int64_t>(step.timestep)));
    return true;
  });
  progress.finish();

  const auto images = pipelines::to_uint8(result.images);
  for (int64_t i = 0; i < images.size(0); ++i) {
    const auto path = output_path(args.out, i, images.size(0));
    std::vector<pipelines::PngText> text;
    if (identity) {
      text.push_back({"parameters", pipelines::png_parameters(params, result, i, *identity)});
    }
    pipelines::write_png(path, images[i], text);
    std::cout << "wrote " << path.string() << "\n";
  }
  std::printf(
      "seed %llu, %lldx%lld, %zu steps, pruned %.1f%% of U-Net FLOPs (%.1f%% of gated channels), "
      "peak memory %.1f MiB (%.1f MiB above weights), text %.2fs, denoise %.2fs, decode %.2fs, "
      "total %.2fs\n",
      static_cast<unsigned long long>(params.seed), static_cast<long long>(params.width),
      static_cast<long long>(params.height), result.timesteps.size(),
      100 * result.pruned_flops_fraction, 100 * result.pruned_channel_fraction,
      static_cast<double>(result.peak_memory_bytes) / (1 << 20),
      static_cast<double>(result.peak_memory_above_weights_bytes) / (1 << 20),
      result.timings.text_encoding_s, result.timings.denoising_s, result.timings.decoding_s,
      result.timings.total_s);
}

}  // namespace

void add_generate_command(CLI::App& app) {
  auto args = std::make_shared<GenerateArgs>();
  auto& gen = *args;
  gen.params.width = gen.params.height = 0;
  auto* generate = app.add_subcommand("generate", "Generate images from a text prompt");
  generate
      ->add_option("--model", gen.model,
                   "Model folder in diffusers format, or a single-file SD1.5 checkpoint "
                   "(.safetensors, original layout)")
      ->required()
      ->check(CLI::ExistingPath);
  generate->add_option("--prompt", gen.params.prompt, "Text prompt")->required();
  generate->add_option("--out", gen.out, "Output PNG (FILE-0.png, FILE-1.png, ... for several)")
      ->required();
  generate->add_option("--negative-prompt", gen.params.negative_prompt, "Negative prompt");
  generate->add_option("--width", gen.params.width, "Width in pixels, multiple of 8 (0: model's)")
      ->capture_default_str();
  generate
      ->add_option("--height", gen.params.height, "Height in pixels, multiple of 8 (0: model's)")
      ->capture_default_str();
  generate->add_option("--steps", gen.params.steps, "Denoising steps")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  generate
      ->add_option("--guidance", gen.params.guidance_scale,
                   "Classifier-free guidance scale (<= 1 turns guidance off)")
      ->capture_default_str();
  generate
      ->add_option("--guidance-rescale", gen.params.guidance_rescale,
                   "Guidance rescale factor in [0, 1]")
      ->capture_default_str();
  generate->add_option("--sampler", gen.params.sampler, "Sampler")
      ->capture_default_str()
      ->check(CLI::IsMember(schedulers::sampler_names()));
  generate->add_option("--eta", gen.params.eta, "DDIM eta")->capture_default_str();
  generate->add_option("--seed", gen.seed, "Random seed (default: a random one, printed)");
  generate->add_option("--num-images", gen.params.num_images, "Images to generate")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  generate->add_option("--device", gen.device, "cpu, cuda or cuda:N")->capture_default_str();
  add_dtype_option(generate, gen.dtype, "");
  add_linear_backend_option(*generate, gen.linear_backend);
  generate->add_flag("--fp16-weights", gen.fp16_weights,
                     "Load *.fp16.safetensors weight variants when present");
  auto* level =
      generate
          ->add_option("--pruning-level", gen.pruning_level,
                       "Prune the U-Net at this level in [0, 1) (fraction of gated FLOPs dropped)")
          ->check(CLI::Range(0.0, 0.999999));
  generate->add_option("--pruning-below-timestep", gen.pruning_below_timestep,
                       "With --pruning-level: prune only the steps whose timestep is below this");
  auto* steps = generate->add_option("--pruning-steps", gen.pruning_steps,
                                     "Per-step levels, comma-separated (the last repeats)");
  generate
      ->add_option("--pruning-budget", gen.pruning_budget,
                   "Mean U-Net FLOPs fraction in (0, 1]: the gates file's learned per-step "
                   "schedule for it (ldcp tune-schedule)")
      ->excludes(level)
      ->excludes(steps);
  generate
      ->add_option("--init-image", gen.init_image,
                   "img2img: start from this PNG or JPEG (as diffusers' Img2Img pipeline; not "
                   "resized: --width/--height must be 0 or its size)")
      ->check(CLI::ExistingFile);
  generate
      ->add_option("--strength", gen.params.strength,
                   "With --init-image: how much of it to re-noise, in (0, 1] (the last "
                   "int(steps * strength) steps run; default 0.8, with --mask 1.0)")
      ->check(CLI::Range(0.0, 1.0));
  static const std::map<std::string, pipelines::PromptSyntax> kSyntaxes{
      {"plain", pipelines::PromptSyntax::kPlain}, {"a1111", pipelines::PromptSyntax::kA1111}};
  generate
      ->add_option("--prompt-syntax", gen.params.prompt_syntax,
                   "plain (as diffusers, 77 tokens) or a1111: A1111's (word:1.3) (word) [word] "
                   "\\( BREAK attention syntax and prompts in chunks of 75 tokens")
      ->transform(CLI::CheckedTransformer(kSyntaxes, CLI::ignore_case));
  generate->add_option("--lora", gen.loras,
                       "NAME:WEIGHT (repeatable): a LoRA (kohya/A1111 or diffusers/PEFT "
                       "safetensors) on the U-Net and text encoder at that weight; NAME is a file "
                       "stem in --lora-dir or a path");
  generate->add_option("--lora-dir", gen.lora_dir, "Where --lora names are looked up");
  generate
      ->add_option("--clip-skip", gen.params.clip_skip,
                   "0 or 1: the text encoder's last layer; N: the hidden state N - 1 layers "
                   "before it, through the final layer norm (A1111's clip skip)")
      ->check(CLI::NonNegativeNumber);
  generate
      ->add_option("--mask", gen.mask,
                   "Inpainting (with --init-image): PNG or JPEG mask of the same size, white "
                   "repainted (as diffusers' Inpaint pipeline, 4- or 9-channel U-Nets)")
      ->check(CLI::ExistingFile);
  generate->add_option("--gates", gen.gates, "Gates file with learned scores (ldcp train-gates)")
      ->check(CLI::ExistingFile);
  generate
      ->add_option("--vae-tile-size", gen.vae_tile_size,
                   "Decode images larger than this (pixels) in overlapping tiles (0: whole)")
      ->capture_default_str();
  generate->add_option("--scores", gen.scores, "Scores without a gates file: magnitude or random")
      ->capture_default_str()
      ->check(CLI::IsMember({"magnitude", "random"}));
  add_memory_format_option(*generate, gen.channels_last);
  generate->add_flag("--no-metadata", gen.no_metadata,
                     "Write no \"parameters\" text (prompt, seed, settings, model hash) into the "
                     "PNGs");
  generate->final_callback([args] { run_generate(*args); });
}

}  // namespace ldcp::tools
