#include "model/pruning/gate_trainer.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <mutex>
#include <numeric>
#include <optional>
#include <sstream>
#include <unordered_map>

#include <ATen/autocast_mode.h>
#include <torch/torch.h>

#include "model/clip/modeling_clip.h"
#include "model/clip/tokenization_clip.h"
#include "model/io/model_folder.h"
#include "model/io/safetensors.h"
#include "model/models/autoencoders/autoencoder_kl.h"
#include "model/models/unets/unet_2d_condition.h"
#include "model/pruning/gated_layer.h"
#include "model/pruning/image_dataset.h"
#include "model/pruning/latent_cache.h"
#include "model/pruning/unet_pruner.h"
#include "model/schedulers/scheduling_utils.h"

namespace ldcp::pruning {
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// LevelAllocator

LevelAllocator::LevelAllocator(std::vector<int64_t> units, std::vector<double> unit_cost,
                               std::vector<int64_t> floor)
    : units_(std::move(units)), floor_(std::move(floor)), unit_cost_(std::move(unit_cost)) {
  if (units_.size() != unit_cost_.size() || units_.size() != floor_.size()) {
    throw std::invalid_argument("LevelAllocator: units, costs and floors differ in length");
  }
  std::vector<float> fraction;
  for (size_t l = 0; l < units_.size(); ++l) {
    offsets_.push_back(total_units_);
    total_units_ += units_[l];
    total_cost_ += unit_cost_[l] * static_cast<double>(units_[l]);
  }
  for (size_t l = 0; l < units_.size(); ++l) {
    for (int64_t u = 0; u < units_[l]; ++u) {
      fraction.push_back(static_cast<float>(total_cost_ > 0 ? unit_cost_[l] / total_cost_ : 0.0));
    }
  }
  cost_fraction_ = torch::tensor(fraction, torch::kFloat);
  protected_ = torch::zeros({total_units_}, torch::kFloat);
}

void LevelAllocator::set_scores(const at::Tensor& flat_scores) {
  if (flat_scores.numel() != total_units_) {
    throw std::invalid_argument("LevelAllocator: " + std::to_string(flat_scores.numel()) +
                                " scores for " + std::to_string(total_units_) + " units");
  }
  auto scores = flat_scores.detach().to(torch::kCPU, torch::kDouble).contiguous();
  const double* values = scores.data_ptr<double>();
  auto protect = protected_.accessor<float, 1>();
  // As UNetPruner: each layer sorted by descending score (stable), its first `floor` units
  // kept; the others are candidates, dropped globally in ascending (score, layer, -rank).
  std::vector<std::tuple<double, size_t, int64_t, int64_t>> candidates;
  for (size_t l = 0; l < units_.size(); ++l) {
    const int64_t offset = offsets_[l], n = units_[l];
    std::vector<int64_t> order(n);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return values[offset + a] > values[offset + b]; });
    for (int64_t rank = 0; rank < n; ++rank) {
      const int64_t unit = offset + order[rank];
      protect[unit] = rank < floor_[l] ? 1.0f : 0.0f;
      if (rank >= floor_[l]) candidates.emplace_back(values[unit], l, -rank, unit);
    }
  }
  std::sort(candidates.begin(), candidates.end());
  candidates_.clear();
  cumulative_cost_.clear();
  candidate_score_.clear();
  double cost = 0;
  for (const auto& [score, layer, neg_rank, unit] : candidates) {
    cost += unit_cost_[layer];
    candidates_.push_back(unit);
    cumulative_cost_.push_back(cost);
    candidate_score_.push_back(score);
  }
}

namespace {

// How many candidates a level drops: UNetPruner::plan drops while the dropped cost is below
// level * total, so the smallest k whose cumulative cost reaches the target (all if none).
size_t dropped_count(double level, double total_cost, const std::vector<double>& cumulative) {
  if (!(level >= 0.0 && level < 1.0)) {
    throw std::invalid_argument("pruning level must be in [0, 1), got " + std::to_string(level));
  }
  if (level == 0.0 || total_cost == 0 || cumulative.empty()) return 0;
  const double target = level * total_cost;
  const auto it = std::lower_bound(cumulative.begin(), cumulative.end(), target);
  return std::min(cumulative.size(), static_cast<size_t>(it - cumulative.begin()) + 1);
}

}  // namespace

at::Tensor LevelAllocator::keep_mask(double level, double* tau) const {
  const size_t k = dropped_count(level, total_cost_, cumulative_cost_);
  auto mask = torch::ones({total_units_}, torch::kFloat);
  auto m = mask.accessor<float, 1>();
  for (size_t i = 0; i < k; ++i) m[candidates_[i]] = 0.0f;
  if (tau) {
    const size_t n = candidate_score_.size();
    if (n == 0) {
      *tau = 0.0;
    } else if (k == 0) {
      *tau = candidate_score_.front() - 1.0;
    } else if (k == n) {
      *tau = candidate_score_.back() + 1.0;
    } else {
      *tau = 0.5 * (candidate_score_[k - 1] + candidate_score_[k]);
    }
  }
  return mask;
}

std::vector<int64_t> LevelAllocator::kept_units(double level) const {
  std::vector<int64_t> kept = units_;
  const size_t k = dropped_count(level, total_cost_, cumulative_cost_);
  for (size_t i = 0; i < k; ++i) {
    const int64_t unit = candidates_[i];
    const auto layer =
        std::upper_bound(offsets_.begin(), offsets_.end(), unit) - offsets_.begin() - 1;
    kept[layer] -= 1;
  }
  return kept;
}

double ValidationReport::mean() const {
  if (relative_error.empty()) return 0.0;
  return std::accumulate(relative_error.begin(), relative_error.end(), 0.0) /
         static_cast<double>(relative_error.size());
}

fs::path default_cache_dir() {
  if (const char* dir = std::getenv("LDCP_CACHE_DIR"); dir && *dir) return dir;
  if (const char* dir = std::getenv("XDG_CACHE_HOME"); dir && *dir) return fs::path(dir) / "ldcp";
  if (const char* home = std::getenv("HOME"); home && *home) {
    return fs::path(home) / ".cache" / "ldcp";
  }
  return fs::temp_directory_path() / "ldcp-cache";
}

// ---------------------------------------------------------------------------------------------
// The trainer

namespace {

constexpr double kEmaDecay = 0.98;
constexpr uint64_t kSplitSeed = 0x6c646370;       // held-out set: fixed, whatever --seed
constexpr uint64_t kValidationSeed = 0x76616c69;  // validation noise and timesteps: fixed
constexpr size_t kMaxCachedPrompts = 1024;

std::string format_double(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.6g", value);
  return text;
}

// Exact (round-trip) text of a double, for checkpoint state.
std::string exact_double(double value) {
  char text[40];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

std::string join_levels(const std::vector<double>& values) {
  std::string out;
  for (double v : values) out += (out.empty() ? "" : ",") + format_double(v);
  return out;
}

// Autocast for the U-Net's passes on CUDA (the backward follows the forward's dtypes).
class AutocastScope {
 public:
  AutocastScope(c10::Device device, c10::ScalarType dtype)
      : active_(device.is_cuda() && dtype != torch::kFloat) {
    if (!active_) return;
    was_enabled_ = at::autocast::is_autocast_enabled(at::kCUDA);
    old_dtype_ = at::autocast::get_autocast_dtype(at::kCUDA);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
    at::autocast::set_autocast_dtype(at::kCUDA, dtype);
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (!active_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(at::kCUDA, was_enabled_);
    at::autocast::set_autocast_dtype(at::kCUDA, old_dtype_);
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  bool active_;
  bool was_enabled_ = false;
  c10::ScalarType old_dtype_ = torch::kFloat;
};

// Text conditions, embedded once per distinct prompt (up to a bound, then on the fly).
class TextConditioner {
 public:
  TextConditioner(const io::ModelFolder& folder, const io::LoadOptions& load, c10::Device device)
      : tokenizer_(clip::ClipTokenizer::from_folder(folder.tokenizer)),
        encoder_(clip::load_clip_text_model(folder.text_encoder, load)),
        device_(device) {
    encoder_->eval();
    encoder_->to(device);
    for (auto& p : encoder_->parameters()) p.set_requires_grad(false);
  }

  at::Tensor embed(const std::vector<std::string>& prompts) {
    std::vector<at::Tensor> rows;
    for (const auto& prompt : prompts) rows.push_back(embed_one(prompt));
    return torch::cat(rows);
  }

 private:
  at::Tensor embed_one(const std::string& prompt) {
    if (auto it = cache_.find(prompt); it != cache_.end()) return it->second;
    torch::NoGradGuard no_grad;
    auto ids = torch::tensor(tokenizer_.encode(prompt), torch::kInt64).unsqueeze(0).to(device_);
    auto embedding = encoder_->forward(ids).to(torch::kFloat);
    if (cache_.size() < kMaxCachedPrompts) cache_.emplace(prompt, embedding);
    return embedding;
  }

  clip::ClipTokenizer tokenizer_;
  clip::ClipTextModel encoder_;
  c10::Device device_;
  std::unordered_map<std::string, at::Tensor> cache_;
};

// "relative/path<TAB>caption" lines; a path may also be given without its folder's prefix
// as the file's stem ("00000<TAB>a face").
std::unordered_map<std::string, std::string> read_captions(const fs::path& path) {
  std::ifstream in(path);
  if (!in) throw DataError("cannot open captions file " + path.string());
  std::unordered_map<std::string, std::string> captions;
  std::string line;
  int64_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const auto tab = line.find('\t');
    if (tab == std::string::npos) {
      throw DataError("captions file " + path.string() + " line " + std::to_string(number) +
                      ": expected \"relative/path<TAB>caption\"");
    }
    captions[line.substr(0, tab)] = line.substr(tab + 1);
  }
  return captions;
}

// A hand-written Adam over one flat tensor, so that its state is three tensors and a count.
struct Adam {
  at::Tensor m, v;
  int64_t t = 0;
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;

  void init(const at::Tensor& param) {
    m = torch::zeros_like(param);
    v = torch::zeros_like(param);
    t = 0;
  }
  // global: one second moment for all units (v's every entry holds the mean square).
  void step(at::Tensor& param, const at::Tensor& grad, double lr, bool global) {
    torch::NoGradGuard no_grad;
    ++t;
    m.mul_(beta1).add_(grad, 1 - beta1);
    if (global) {
      v.mul_(beta2).add_(grad.pow(2).mean(), 1 - beta2);
    } else {
      v.mul_(beta2).addcmul_(grad, grad, 1 - beta2);
    }
    const double c1 = 1 - std::pow(beta1, static_cast<double>(t));
    const double c2 = 1 - std::pow(beta2, static_cast<double>(t));
    param.addcdiv_(m / c1, (v / c2).sqrt_().add_(eps), -lr);
  }
};

struct Gates {
  std::vector<GatedLayerRef> layers;
  std::vector<int64_t> units;
  std::vector<double> unit_cost;
  std::vector<int64_t> floor;
  std::vector<int64_t> offsets;
  int64_t total_units = 0;

  // [B, total] or [total] masks -> each gate's slice; undefined clears them.
  void set_masks(const at::Tensor& mask) const {
    for (size_t l = 0; l < layers.size(); ++l) {
      auto& gate = layers[l].layer->gate();
      if (!mask.defined()) {
        gate->set_mask({});
      } else {
        gate->set_mask(mask.narrow(-1, offsets[l], units[l]));
      }
      gate->keep_all();
    }
  }
};

// Gates on every gated layer, with UNetPruner's unit costs and floors: one forward at the
// U-Net's smallest latent records each gate's positions, scaled to the model's native size
// (as UNetPruner's constructor does, so that the plans agree).
Gates attach(models::UNet2DConditionModelImpl& unet) {
  Gates gates;
  gates.layers = attach_gates(unet);
  if (gates.layers.empty()) throw std::invalid_argument("the U-Net has no gated layers");
  const auto& config = unet.config();
  const int64_t side = int64_t{1} << unet.num_upsamplers();
  const auto& weight = unet.conv_in->weight;
  auto options = torch::TensorOptions().dtype(weight.dtype()).device(weight.device());
  {
    torch::NoGradGuard no_grad;
    gates.set_masks({});
    unet.forward(torch::zeros({1, config.in_channels, side, side}, options),
                 torch::tensor(500, torch::kLong),
                 torch::zeros({1, 1, config.cross_attention_dim_of(0)}, options));
  }
  const int64_t native = config.sample_size ? std::max(config.sample_size->first, side) : 64;
  const int64_t area_scale = (native / side) * (native / side);
  const double min_keep = PlannerOptions{}.min_keep_fraction;
  for (const auto& ref : gates.layers) {
    const auto& gate = *ref.layer->gate();
    gates.offsets.push_back(gates.total_units);
    gates.units.push_back(gate.num_units());
    gates.total_units += gate.num_units();
    gates.unit_cost.push_back(
        static_cast<double>(ref.layer->unit_macs(gate.last_positions() * area_scale)));
    gates.floor.push_back(std::max<int64_t>(
        1, static_cast<int64_t>(std::ceil(min_keep * static_cast<double>(gate.num_units())))));
  }
  return gates;
}

// Per-layer-normalised magnitude scores, standardised over all units: an increasing map of
// what UNetPruner ranks for the magnitude source, so the first step starts from its ordering.
at::Tensor initial_logits(models::UNet2DConditionModelImpl& unet, const Gates& gates) {
  const auto magnitude = magnitude_scores(unet);
  std::vector<at::Tensor> parts;
  for (const auto& ref : gates.layers) {
    auto s = magnitude.layers.at(ref.name).to(torch::kDouble);
    const double mean = s.abs().mean().item<double>();
    parts.push_back(mean > 0 ? s / mean : s);
  }
  auto flat = torch::cat(parts);
  const double mean = flat.mean().item<double>();
  const double std = flat.numel() > 1 ? flat.std().item<double>() : 0.0;
  return ((flat - mean) / (std > 0 ? std : 1.0)).to(torch::kFloat);
}

at::Tensor alphas_cumprod(const nlohmann::json& scheduler_config) {
  schedulers::BetaScheduleConfig config;
  config.read(schedulers::effective_config(scheduler_config), /*with_zero_snr=*/true);
  auto betas = schedulers::make_betas(config, "DDPMScheduler");
  return torch::cumprod(1.0 - betas.to(torch::kFloat), 0);
}

// The options a checkpoint must share with the run that resumes it.
std::map<std::string, std::string> run_identity(const TrainerOptions& o,
                                                const std::string& fingerprint,
                                                const std::string& cache_key, int64_t total_units) {
  return {{"model_fingerprint", fingerprint},
          {"cache_key", cache_key},
          {"units", std::to_string(total_units)},
          {"resolution", std::to_string(o.resolution)},
          {"batch", std::to_string(o.batch)},
          {"lr", format_double(o.lr)},
          {"final_lr_fraction", format_double(o.final_lr_fraction)},
          {"temperature", format_double(o.temperature)},
          {"resource_weight", format_double(o.resource_weight)},
          {"cost_normalized", o.cost_normalized ? "true" : "false"},
          {"global_adam", o.global_adam ? "true" : "false"},
          {"levels", join_levels(o.levels)},
          {"seed", std::to_string(o.seed)},
          {"prompt", o.prompt},
          {"captions", o.captions.empty() ? "" : fs::absolute(o.captions).string()},
          {"dtype", c10::toString(o.dtype)}};
}

struct TrainState {
  at::Tensor logits;  // [total units] float32 on the device
  Adam adam;
  int64_t step = 0;
  double loss_ema = 0;
  double loss_scale = 1.0;         // fp16 only
  int64_t good_steps = 0;          // fp16: steps since the scale last changed
  std::string initial_validation;  // "level:error,..." of the first validation of the run
};

void save_checkpoint(const fs::path& path, const TrainState& state, at::Generator& gen,
                     const std::map<std::string, std::string>& identity) {
  at::Tensor rng;
  {
    std::lock_guard<std::mutex> lock(gen.mutex());
    rng = gen.get_state();
  }
  io::Metadata metadata = identity;
  metadata["format"] = "ldcp-train-gates-checkpoint-1";
  metadata["step"] = std::to_string(state.step);
  metadata["adam_t"] = std::to_string(state.adam.t);
  metadata["loss_ema"] = exact_double(state.loss_ema);
  metadata["loss_scale"] = exact_double(state.loss_scale);
  metadata["good_steps"] = std::to_string(state.good_steps);
  metadata["initial_validation"] = state.initial_validation;
  if (!path.parent_path().empty()) fs::create_directories(path.parent_path());
  io::save_safetensors(path,
                       {{"logits", state.logits.detach().cpu()},
                        {"adam_m", state.adam.m.cpu()},
                        {"adam_v", state.adam.v.cpu()},
                        {"rng_state", rng}},
                       metadata);
}

void load_checkpoint(const fs::path& path, TrainState& state, at::Generator& gen,
                     const std::map<std::string, std::string>& identity, c10::Device device) {
  io::Metadata metadata;
  io::TensorMap tensors;
  try {
    tensors = io::load_safetensors(path, &metadata);
  } catch (const std::exception& e) {
    throw std::invalid_argument("cannot read checkpoint " + path.string() + ": " + e.what());
  }
  if (metadata["format"] != "ldcp-train-gates-checkpoint-1") {
    throw std::invalid_argument(path.string() + " is not a train-gates checkpoint");
  }
  for (const auto& [key, value] : identity) {
    if (metadata[key] != value) {
      throw std::invalid_argument("checkpoint " + path.string() + " was written with " + key +
                                  " = \"" + metadata[key] + "\", this run has \"" + value + "\"");
    }
  }
  for (const char* name : {"logits", "adam_m", "adam_v", "rng_state"}) {
    if (!tensors.count(name)) {
      throw std::invalid_argument("checkpoint " + path.string() + " has no tensor " + name);
    }
  }
  state.logits = tensors["logits"].to(device, torch::kFloat);
  state.adam.m = tensors["adam_m"].to(device, torch::kFloat);
  state.adam.v = tensors["adam_v"].to(device, torch::kFloat);
  state.adam.t = std::stoll(metadata["adam_t"]);
  state.step = std::stoll(metadata["step"]);
  state.loss_ema = std::stod(metadata["loss_ema"]);
  state.loss_scale = std::stod(metadata["loss_scale"]);
  state.good_steps = std::stoll(metadata["good_steps"]);
  state.initial_validation = metadata["initial_validation"];
  std::lock_guard<std::mutex> lock(gen.mutex());
  gen.set_state(tensors["rng_state"]);
}

// Per-sample ||a - b||^2 / ||b||^2, float32, [B].
at::Tensor relative_squared_error(const at::Tensor& prediction, const at::Tensor& target) {
  auto p = prediction.to(torch::kFloat).flatten(1), t = target.to(torch::kFloat).flatten(1);
  return (p - t).pow(2).sum(1) / t.pow(2).sum(1).clamp_min(1e-12);
}

void check_options(const TrainerOptions& o) {
  auto require = [](bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument(message);
  };
  require(!o.model_dir.empty(), "train-gates: no model folder given");
  require(!o.data_dir.empty(), "train-gates: no data folder given");
  require(!o.out.empty(), "train-gates: no output file given");
  require(o.resolution > 0, "--resolution must be positive");
  require(o.steps >= 1, "--steps must be at least 1");
  require(o.batch >= 1, "--batch must be at least 1");
  require(o.lr > 0 && std::isfinite(o.lr), "--lr must be a positive number");
  require(o.final_lr_fraction >= 0 && o.final_lr_fraction <= 1,
          "--final-lr-fraction must be in [0, 1]");
  require(o.temperature > 0 && std::isfinite(o.temperature), "--temperature must be positive");
  require(o.resource_weight >= 0 && std::isfinite(o.resource_weight),
          "--resource-weight must be >= 0");
  require(!o.levels.empty(), "--levels: no levels given");
  for (double l : o.levels) {
    require(l >= 0 && l < 1, "--levels: " + format_double(l) + " is not a level in [0, 1)");
  }
  require(*std::max_element(o.levels.begin(), o.levels.end()) > 0,
          "--levels: at least one level must be above 0");
  require(o.encode_batch >= 1, "encode batch must be at least 1");
  require(o.dtype == torch::kFloat || o.dtype == torch::kBFloat16 || o.dtype == torch::kHalf,
          "--dtype must be fp32, bf16 or fp16");
  require(o.dtype == torch::kFloat || o.device.is_cuda(),
          "--dtype bf16/fp16 (autocast) needs --device cuda; use fp32 on the CPU");
}

}  // namespace

LevelAllocator level_allocator(models::UNet2DConditionModelImpl& unet) {
  const auto gates = attach(unet);
  return LevelAllocator(gates.units, gates.unit_cost, gates.floor);
}

TrainResult train_gates(const TrainerOptions& options, const TrainerCallbacks& callbacks) {
  check_options(options);
  auto log = [&](const std::string& line) {
    if (callbacks.log) callbacks.log(line);
  };
  const c10::Device device = options.device;
  const auto folder = io::ModelFolder::open(options.model_dir);
  io::LoadOptions load;
  load.prefer_fp16 = options.prefer_fp16_weights;

  // The data first: an unusable folder fails before anything slow.
  list_images(options.data_dir);
  TrainResult result;
  LatentSet data;
  double scaling_factor = 0, shift_factor = 0;
  {
    auto vae = models::load_vae(folder.vae, load);
    vae->eval();
    vae->to(device, torch::kFloat);
    scaling_factor = vae->config().scaling_factor;
    shift_factor = vae->config().shift_factor.value_or(0.0);
    LatentCacheOptions cache;
    cache.cache_dir =
        (options.cache_dir.empty() ? default_cache_dir() : options.cache_dir) / "latents";
    cache.resolution = options.resolution;
    cache.batch = options.encode_batch;
    data = build_latent_cache(options.data_dir, *vae, cache, callbacks.encode);
  }  // the VAE is not needed any more
  result.cache_entry = data.entry_dir;
  result.encoded = data.encoded;
  result.images = data.size();
  log("latent cache " + data.entry_dir.string() + ": " + std::to_string(data.encoded) +
      " images encoded, " + std::to_string(data.reused) + " read back");
  if (!data.skipped.empty()) {
    log(std::to_string(data.skipped.size()) + " images skipped, e.g. " + data.skipped.front());
  }

  // Held-out images: a fixed permutation's head, the same for every seed.
  const int64_t n = data.size();
  int64_t val_count = options.val_images >= 0 ? options.val_images
                                              : (n >= 2 ? std::clamp<int64_t>(n / 10, 1, 64) : 0);
  if (n - val_count < 1) {
    throw DataError("data folder " + options.data_dir.string() + " has " + std::to_string(n) +
                    " usable images, too few to hold " + std::to_string(val_count) +
                    " out for validation and train on the rest");
  }
  auto split_gen = at::make_generator<at::CPUGeneratorImpl>(kSplitSeed);
  const auto permutation = torch::randperm(n, split_gen, torch::kLong);
  const auto val_index = permutation.narrow(0, 0, val_count);
  const auto train_index = permutation.narrow(0, val_count, n - val_count);
  result.train_images = n - val_count;
  result.val_images = val_count;
  log("data " + options.data_dir.string() + ": " + std::to_string(n) + " images, " +
      std::to_string(val_count) + " held out for validation");

  // Text conditions per image.
  std::vector<std::string> prompts(n, options.prompt);
  if (!options.captions.empty()) {
    const auto captions = read_captions(options.captions);
    int64_t found = 0;
    for (int64_t i = 0; i < n; ++i) {
      const auto& name = data.images[i];
      auto it = captions.find(name);
      if (it == captions.end()) it = captions.find(fs::path(name).stem().string());
      if (it != captions.end()) {
        prompts[i] = it->second;
        ++found;
      }
    }
    log("captions: " + std::to_string(found) + " of " + std::to_string(n) +
        " images have one; the others use the prompt \"" + options.prompt + "\"");
  }
  TextConditioner text(folder, load, device);

  // The frozen U-Net with gates.
  auto unet = models::load_unet(folder.unet, load);
  unet->eval();
  unet->to(device, torch::kFloat);
  for (auto& p : unet->parameters()) p.set_requires_grad(false);
  const auto gates = attach(*unet);
  const auto fingerprint = gate_fingerprint(*unet);
  LevelAllocator allocator(gates.units, gates.unit_cost, gates.floor);
  const auto cost_fraction = allocator.cost_fraction().to(device);
  // Each unit's cost over the mean unit's (mean 1).
  const auto relative_cost = cost_fraction * static_cast<double>(gates.total_units);
  log(std::to_string(gates.layers.size()) + " gated layers, " + std::to_string(gates.total_units) +
      " units");

  const auto abar = alphas_cumprod(folder.scheduler_config());
  const int64_t train_timesteps = abar.size(0);
  const auto identity = run_identity(options, fingerprint, data.key, gates.total_units);
  const double level_min = *std::min_element(options.levels.begin(), options.levels.end());
  const double level_max = *std::max_element(options.levels.begin(), options.levels.end());

  // Latents of image rows -> x_0 = (posterior sample - shift) * scaling_factor.
  auto clean_latents = [&](const at::Tensor& rows, at::Generator& gen) {
    auto mean = data.mean.index_select(0, rows).to(torch::kFloat);
    auto std = data.std.index_select(0, rows).to(torch::kFloat);
    auto eps = torch::randn(mean.sizes(), gen, torch::kFloat);
    return ((mean + std * eps - shift_factor) * scaling_factor);
  };
  auto noisy = [&](const at::Tensor& x0, const at::Tensor& noise, const at::Tensor& t) {
    auto a = abar.index_select(0, t).view({-1, 1, 1, 1});
    return a.sqrt() * x0 + (1 - a).sqrt() * noise;
  };
  auto prompts_of = [&](const at::Tensor& rows) {
    std::vector<std::string> out;
    for (int64_t i = 0; i < rows.numel(); ++i) out.push_back(prompts[rows[i].item<int64_t>()]);
    return out;
  };

  // Fixed validation inputs and the unpruned model's predictions, computed once.
  struct ValBatch {
    at::Tensor sample, timestep, context, target;
  };
  std::vector<ValBatch> val_batches;
  {
    torch::NoGradGuard no_grad;
    auto val_gen = at::make_generator<at::CPUGeneratorImpl>(kValidationSeed);
    gates.set_masks({});
    for (int64_t begin = 0; begin < val_count; begin += options.batch) {
      const auto rows = val_index.narrow(0, begin, std::min(options.batch, val_count - begin));
      auto x0 = clean_latents(rows, val_gen);
      auto noise = torch::randn(x0.sizes(), val_gen, torch::kFloat);
      auto t = torch::randint(0, train_timesteps, {rows.numel()}, val_gen, torch::kLong);
      ValBatch b{noisy(x0, noise, t).to(device), t.to(device), text.embed(prompts_of(rows)), {}};
      AutocastScope autocast(device, options.dtype);
      b.target = unet->forward(b.sample, b.timestep, b.context).to(torch::kFloat);
      val_batches.push_back(std::move(b));
    }
  }

  TrainState state;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(options.seed);
  if (!options.resume.empty()) {
    load_checkpoint(options.resume, state, gen, identity, device);
    if (state.step > options.steps) {
      throw std::invalid_argument("checkpoint " + options.resume.string() + " is at step " +
                                  std::to_string(state.step) + ", beyond --steps " +
                                  std::to_string(options.steps));
    }
    log("resumed from " + options.resume.string() + " at step " + std::to_string(state.step));
  } else {
    state.logits = initial_logits(*unet, gates).to(device);
    state.adam.init(state.logits);
    state.loss_scale = options.dtype == torch::kHalf ? 16384.0 : 1.0;
  }
  result.first_step = state.step;

  // Held-out error of the plans the scores give, per level.
  auto measure = [&](const at::Tensor& flat_scores, int64_t step) {
    torch::NoGradGuard no_grad;
    ValidationReport report;
    report.step = step;
    allocator.set_scores(flat_scores);
    for (double level : options.levels) {
      gates.set_masks(allocator.keep_mask(level).to(device));
      double sum = 0;
      for (const auto& b : val_batches) {
        AutocastScope autocast(device, options.dtype);
        auto prediction = unet->forward(b.sample, b.timestep, b.context);
        sum += relative_squared_error(prediction, b.target).sqrt().sum().item<double>();
      }
      report.levels.push_back(level);
      report.relative_error.push_back(val_count > 0 ? sum / static_cast<double>(val_count) : 0.0);
    }
    gates.set_masks({});
    return report;
  };
  auto validate = [&](int64_t step) {
    auto report = measure(state.logits, step);
    if (callbacks.validation) callbacks.validation(report);
    result.validations.push_back(report);
    return report;
  };
  auto describe = [&](const ValidationReport& report) {
    std::string out;
    for (size_t i = 0; i < report.levels.size(); ++i) {
      out += (out.empty() ? "" : ",") + format_double(report.levels[i]) + ":" +
             format_double(report.relative_error[i]);
    }
    return out;
  };

  const fs::path checkpoint_path =
      options.checkpoint.empty() ? fs::path(options.out.string() + ".ckpt") : options.checkpoint;
  const int64_t checkpoint_every = options.checkpoint_every > 0
                                       ? options.checkpoint_every
                                       : std::max<int64_t>(1, options.steps / 10);
  const int64_t last_step =
      options.stop_after > 0 ? std::min(options.steps, options.stop_after) : options.steps;

  if (val_count > 0) {
    const auto first = validate(state.step);
    if (state.initial_validation.empty()) state.initial_validation = describe(first);
    if (!callbacks.validation) {
      log("validation at step " + std::to_string(state.step) +
          " (relative error per level): " + describe(first));
    }
    // A control: what uniform random scores (seed 0, as `--scores random`) give.
    std::vector<at::Tensor> random_parts;
    const auto random = random_scores(*unet, 0);
    for (const auto& ref : gates.layers) random_parts.push_back(random.layers.at(ref.name));
    result.random_validation = measure(torch::cat(random_parts), state.step);
    log("random scores (a control), relative error per level: " +
        describe(result.random_validation));
  }

  while (state.step < last_step) {
    const int64_t step = state.step + 1;
    const int64_t b = options.batch;
    // Every random draw of the step, in a fixed order, from the one CPU generator.
    auto rows =
        train_index.index_select(0, torch::randint(0, train_index.numel(), {b}, gen, torch::kLong));
    auto x0 = clean_latents(rows, gen);
    auto noise = torch::randn(x0.sizes(), gen, torch::kFloat);
    auto t = torch::randint(0, train_timesteps, {b}, gen, torch::kLong);
    auto u = torch::rand({b}, gen, torch::kDouble);
    std::vector<double> levels(b);
    for (int64_t i = 0; i < b; ++i) {
      const int64_t slot = ((step - 1) * b + i) % 4;  // sandwich: max, min, random, random
      levels[i] = slot == 0   ? level_max
                  : slot == 1 ? level_min
                              : level_min + u[i].item<double>() * (level_max - level_min);
    }

    auto sample = noisy(x0, noise, t).to(device);
    auto timestep = t.to(device);
    auto context = text.embed(prompts_of(rows));
    at::Tensor target;
    {
      torch::NoGradGuard no_grad;
      gates.set_masks({});
      AutocastScope autocast(device, options.dtype);
      target = unet->forward(sample, timestep, context).to(torch::kFloat);
    }

    // Hard masks per sample (UNetPruner's plan for the current logits) and their thresholds.
    allocator.set_scores(state.logits);
    std::vector<at::Tensor> hard_rows;
    std::vector<double> taus(b);
    for (int64_t i = 0; i < b; ++i) hard_rows.push_back(allocator.keep_mask(levels[i], &taus[i]));
    auto hard = torch::stack(hard_rows).to(device);
    auto tau = torch::tensor(taus, torch::kDouble).to(device, torch::kFloat).unsqueeze(1);
    auto logits = state.logits.detach().requires_grad_(true);
    auto soft = torch::sigmoid((logits.unsqueeze(0) - tau) / options.temperature);  // [B, U]
    auto mask = hard + (soft - soft.detach());  // forward: hard; backward: d soft

    gates.set_masks(mask);
    at::Tensor prediction;
    {
      AutocastScope autocast(device, options.dtype);
      prediction = unet->forward(sample, timestep, context);
    }
    gates.set_masks({});
    auto distill = relative_squared_error(prediction, target).mean();
    auto protect = allocator.protected_mask().to(device);
    auto kept_soft = ((protect + (1 - protect) * soft) * cost_fraction).sum(1);  // [B]
    auto target_kept = 1.0 - torch::tensor(levels, torch::kDouble).to(device, torch::kFloat);
    auto resource = (kept_soft - target_kept).pow(2).mean();
    auto loss = distill + options.resource_weight * resource;

    auto grad = torch::autograd::grad({loss * state.loss_scale}, {logits})[0];
    if (state.loss_scale != 1.0) grad = grad / state.loss_scale;
    if (options.cost_normalized) grad = grad / relative_cost;
    const bool finite = torch::isfinite(grad).all().item<bool>();
    if (finite) {
      // Cosine decay from lr to lr * final_lr_fraction over the run's steps.
      const double progress = static_cast<double>(step - 1) / static_cast<double>(options.steps);
      const double decay = options.final_lr_fraction +
                           (1 - options.final_lr_fraction) * 0.5 * (1 + std::cos(M_PI * progress));
      state.adam.step(state.logits, grad, options.lr * decay, options.global_adam);
      if (options.dtype == torch::kHalf && ++state.good_steps >= 500) {
        state.loss_scale *= 2;
        state.good_steps = 0;
      }
    } else if (options.dtype == torch::kHalf) {
      state.loss_scale /= 2;  // overflow in the fp16 backward: skip the step, as GradScaler
      state.good_steps = 0;
    } else {
      throw std::runtime_error("train-gates: non-finite gradient at step " + std::to_string(step));
    }
    state.step = step;

    StepReport report;
    report.step = step;
    report.steps = options.steps;
    report.distill = distill.item<double>();
    report.resource = resource.item<double>();
    report.loss = loss.item<double>();
    state.loss_ema =
        step == 1 ? report.loss : kEmaDecay * state.loss_ema + (1 - kEmaDecay) * report.loss;
    report.loss_ema = state.loss_ema;
    result.steps.push_back(report);
    if (callbacks.step) callbacks.step(report);

    const bool at_end = step == last_step;
    const bool checkpoint_now = step % checkpoint_every == 0 || at_end;
    const bool validate_now =
        val_count > 0 &&
        (options.val_every > 0 ? step % options.val_every == 0 || at_end : checkpoint_now);
    if (validate_now) {
      const auto report_v = validate(step);
      if (!callbacks.validation) {
        log("validation at step " + std::to_string(step) + ": " + describe(report_v));
      }
    }
    if (checkpoint_now) {
      save_checkpoint(checkpoint_path, state, gen, identity);
      result.checkpoint = checkpoint_path;
    }
  }
  result.last_step = state.step;
  result.finished = state.step == options.steps;

  // The scores: the logits per layer.
  GateScores scores;
  scores.source = "learned";
  scores.normalize_per_layer = false;
  const auto flat = state.logits.detach().to(torch::kCPU, torch::kFloat);
  for (size_t l = 0; l < gates.layers.size(); ++l) {
    scores.layers[gates.layers[l].name] = flat.narrow(0, gates.offsets[l], gates.units[l]).clone();
  }
  auto& meta = scores.metadata;
  meta["fingerprint"] = fingerprint;
  meta["model"] = fs::absolute(options.model_dir).string();
  meta["data"] = fs::absolute(options.data_dir).string();
  meta["images"] = std::to_string(n);
  meta["train_images"] = std::to_string(result.train_images);
  meta["val_images"] = std::to_string(val_count);
  meta["steps"] = std::to_string(state.step);
  meta["levels"] = join_levels(options.levels);
  meta["resolution"] = std::to_string(options.resolution);
  meta["batch"] = std::to_string(options.batch);
  meta["lr"] = format_double(options.lr);
  meta["temperature"] = format_double(options.temperature);
  meta["resource_weight"] = format_double(options.resource_weight);
  meta["cost_normalized"] = options.cost_normalized ? "true" : "false";
  meta["global_adam"] = options.global_adam ? "true" : "false";
  meta["seed"] = std::to_string(options.seed);
  meta["prompt"] = options.prompt;
  if (!options.captions.empty()) meta["captions"] = fs::absolute(options.captions).string();
  meta["final_train_loss"] = format_double(state.loss_ema);
  if (!result.steps.empty()) {
    meta["final_distill_loss"] = format_double(result.steps.back().distill);
    meta["final_resource_loss"] = format_double(result.steps.back().resource);
  }
  meta["initial_val_error"] = state.initial_validation;  // magnitude init, per level
  if (!result.validations.empty()) meta["final_val_error"] = describe(result.validations.back());
  if (!result.random_validation.levels.empty()) {
    meta["random_val_error"] = describe(result.random_validation);
  }
  result.scores = std::move(scores);
  if (result.finished) {
    if (!options.out.parent_path().empty()) fs::create_directories(options.out.parent_path());
    save_gate_scores(options.out, result.scores);
    result.out = options.out;
  }
  return result;
}

}  // namespace ldcp::pruning
