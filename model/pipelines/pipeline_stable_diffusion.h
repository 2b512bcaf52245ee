#pragma once
// Text-to-image with Stable Diffusion 1.5, step for step as diffusers' StableDiffusionPipeline:
// CLIP text encoding with classifier-free guidance (unconditional and conditional in one U-Net
// batch), initial latents drawn like torch.Generator("cpu").manual_seed(seed), the chosen
// sampler, VAE decoding one image at a time.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <nlohmann/json.hpp>

#include "model/lora/lora_spec.h"
#include "model/pruning/pruning_schedule.h"
#include "model/runtime/linear_backend.h"

namespace ldcp::models {
class UNet2DConditionModelImpl;
}
namespace ldcp::pruning {
class UNetPruner;
}
namespace ldcp::lora {
class LoraCache;
class LoraTargets;
}

namespace ldcp::pipelines {

// How a prompt is read: as diffusers does (the text, truncated to 77 tokens), or with
// AUTOMATIC1111's attention syntax and 75-token chunks (model/clip/prompt_weighting.h).
enum class PromptSyntax { kPlain, kA1111 };

// A1111 prompts: the most 75-token chunks a prompt (or negative prompt) may have.
inline constexpr int64_t kMaxPromptChunks = 8;

struct GenerationParams {
  std::string prompt;
  std::string negative_prompt;  // empty: the unconditional embedding of "" as diffusers
  int64_t width = 512;          // pixels, multiple of 8
  int64_t height = 512;
  int64_t steps = 50;
  double guidance_scale = 7.5;    // > 1 enables classifier-free guidance
  double guidance_rescale = 0.0;  // diffusers' rescale_noise_cfg factor, in [0, 1]
  std::string sampler = "pndm";   // one of schedulers::sampler_names()
  double eta = 0.0;               // DDIM only
  uint64_t seed = 0;
  int64_t num_images = 1;
  pruning::PruningSchedule pruning;  // the U-Net's pruning level per step (default: off)
  // img2img and inpainting (image_conditioning.h): an RGB init image, uint8 [height, width, 3]
  // (undefined: text-to-image); how much of it is re-noised, in (0, 1] (diffusers' strength:
  // the run takes the last int(steps * strength) of the sampler's steps; unset: diffusers'
  // defaults, 0.8 for img2img, 1.0 for inpainting); and a mask of the same size (white:
  // repaint, black: keep; undefined: img2img). A per-step pruning schedule is indexed by the
  // position in the sampler's full schedule, so step k keeps its level whatever the strength.
  at::Tensor init_image;
  std::optional<double> strength;
  at::Tensor mask_image;
  PromptSyntax prompt_syntax = PromptSyntax::kPlain;
  // 0 or 1: the text encoder's last layer; N: the hidden state N - 1 layers before the last,
  // through the final layer norm (A1111's "clip skip"; diffusers' clip_skip = N - 1).
  int64_t clip_skip = 0;
  // LoRAs (model/lora) on the U-Net and the text encoder, each at its weight: a low-rank side
  // branch of the layers they adapt, for this request only (the base weights are never
  // written). Names are looked up in PipelineOptions::lora_dir (NAME.safetensors) or, holding a
  // "/" or ending in ".safetensors", are paths.
  std::vector<lora::LoraSpec> loras;
};

// The strength a request runs at: its own, else diffusers' default for its kind.
inline double effective_strength(const GenerationParams& p) {
  return p.strength.value_or(p.mask_image.defined() ? 1.0 : 0.8);
}

// diffusers' get_timesteps (every sampler here has order 1): the position in the sampler's
// timesteps of the first step an init image's run takes, max(steps - int(steps * strength), 0).
inline int64_t first_denoising_step(int64_t steps, double strength) {
  const auto init_steps = static_cast<int64_t>(static_cast<double>(steps) * strength);
  return std::max<int64_t>(steps - std::min(init_steps, steps), 0);
}

// The steps of `steps` a request runs: all, less those an init image's strength skips.
inline int64_t steps_run(const GenerationParams& p) {
  return p.init_image.defined() ? p.steps - first_denoising_step(p.steps, effective_strength(p))
                                : p.steps;
}

// Requests that can share one U-Net batch: same size, steps, sampler (and eta), guidance on or
// off, and pruning schedule; and the same kind (text-to-image, img2img, inpainting) starting at
// the same step (strength); and the same prompt syntax; and the same LoRAs at the same weights. A1111 prompts set the embeddings' length
// (77 per chunk), so A1111 requests share a batch only with the same prompt and negative prompt.
// Prompts, seeds, guidance scales, image counts, clip skips and images may differ.
bool batchable(const GenerationParams& a, const GenerationParams& b);

// What a step callback sees; returning false stops the run after that step.
struct StepInfo {
  int64_t step = 0;       // 0-based index of the step just finished
  int64_t num_steps = 0;  // steps in this run (the sampler's timestep count)
  double timestep = 0;
  const at::Tensor* latents = nullptr;  // the latents after this step
};
using StepCallback = std::function<bool(const StepInfo&)>;

struct GenerationTimings {
  double text_encoding_s = 0, denoising_s = 0, decoding_s = 0, total_s = 0;
  double image_encoding_s = 0;  // img2img / inpainting: the VAE encoder's
};

struct GenerationResult {
  at::Tensor
      images;  // [num_images, height, width, 3] float32 in [0, 1] on the CPU (empty if stopped)
  std::vector<double> timesteps;       // the timesteps that ran
  std::vector<double> step_levels;     // the pruning level of each step that ran
  double pruned_channel_fraction = 0;  // of the gated channels, averaged over the steps
  double pruned_flops_fraction = 0;    // of the U-Net's FLOPs, averaged over the steps
  int64_t peak_memory_bytes = 0;       // measured peak of the run (whole batch)
  int64_t peak_memory_above_weights_bytes = 0;
  bool stopped = false;  // a callback stopped the run
  GenerationTimings timings;
};

struct PipelineOptions {
  c10::Device device = c10::kCPU;
  c10::ScalarType dtype = c10::kFloat;  // kFloat, kHalf or kBFloat16
  bool prefer_fp16_weights = false;     // load *.fp16.safetensors variants when present
  // Importance scores of the U-Net's gated units: a gates file (ldcp train-gates), else the
  // weight-magnitude scores, or "random" ones (a control for comparisons).
  std::filesystem::path gates_file;
  std::string score_source = "magnitude";  // when no gates file: "magnitude" or "random"
  uint64_t random_scores_seed = 0;
  // Decode images larger than this (pixels, either side) in overlapping tiles of this size, as
  // diffusers' enable_vae_tiling: the decoder's peak then stays that of one tile, so that the
  // U-Net (and its pruning level) sets a request's peak. 0: whole images.
  int64_t vae_tile_size = 0;
  double vae_tile_overlap = 0.25;  // diffusers' tile_overlap_factor
  // Store the U-Net's and VAE's convolution weights channels-last (NHWC), so that oneDNN (CPU)
  // and cuDNN run their convolutions without converting layouts, and the transformer blocks'
  // [B, C, H, W] <-> [B, H*W, C] reshapes are free. Same results up to float rounding.
  bool channels_last = true;
  // When the model is a single-file checkpoint (model_components.h): a diffusers model folder
  // whose component configs, tokenizer and scheduler config replace the built-in SD1.5 ones, as
  // diffusers' from_single_file(config=DIR); its weights are not read. Empty: SD1.5's.
  std::filesystem::path single_file_config;
  // The CPU backend of the U-Net's linear layers (runtime/linear_backend.h): "aten", "onednn",
  // or "auto", which times both on the U-Net's shapes at load and keeps the faster. The default
  // is ATen's, the reference path; the tools and the server default to "auto".
  std::string linear_backend = "aten";
  // Where requests' LoRA names are looked up (NAME.safetensors), and how many bytes of loaded
  // LoRA factors are kept for later requests (least recently used first out).
  std::filesystem::path lora_dir;
  int64_t lora_cache_bytes = int64_t{512} << 20;
};

class StableDiffusionPipeline {
 public:
  // Loads a diffusers-format model folder (model_index.json, text_encoder, tokenizer, unet, vae,
  // scheduler), or a single-file SD1.5 checkpoint in the original layout (a .safetensors file:
  // model_components.h). Throws with a message naming the offending file.
  static std::unique_ptr<StableDiffusionPipeline> load(const std::filesystem::path& model_dir,
                                                       const PipelineOptions& options = {});
  ~StableDiffusionPipeline();

  // Throws std::invalid_argument naming the parameter for an invalid request.
  GenerationResult generate(const GenerationParams& params, const StepCallback& callback = {});

  // Several batchable() requests as one U-Net batch; results in request order, each equal (to
  // rounding) to what generate() gives for that request alone. `callback(i, step)` is called for
  // request i after each step; returning false drops request i from the batch (its result is
  // stopped) while the others go on.
  using BatchStepCallback = std::function<bool(size_t request, const StepInfo&)>;
  std::vector<GenerationResult> generate_batch(const std::vector<GenerationParams>& requests,
                                               const BatchStepCallback& callback = {});

  // Throws std::invalid_argument naming the first invalid field; generate() calls it first.
  void validate(const GenerationParams& params) const;

  // [2 * n or n, 77, hidden]: negative then positive embeddings when guidance is on. A1111
  // syntax: [.., 77 * chunks, hidden], the shorter of the two padded with empty-prompt chunks.
  at::Tensor encode_prompt(const std::string& prompt, const std::string& negative_prompt,
                           int64_t num_images, bool classifier_free_guidance,
                           PromptSyntax syntax = PromptSyntax::kPlain, int64_t clip_skip = 0);

  // Pixels per latent cell (2^(VAE levels - 1)); 8 for SD1.5.
  int64_t vae_scale_factor() const;
  // The size the model was trained at (unet sample_size x vae_scale_factor), diffusers' default.
  int64_t native_resolution() const;
  const PipelineOptions& options() const;
  // The U-Net and its pruning machinery (levels, plans, gates), for tools that measure them.
  models::UNet2DConditionModelImpl& unet();
  pruning::UNetPruner& pruner();
  // U-Net MACs of one batch element at a latent size, measured by counting the operators of
  // one forward pass (cached per size); 0 until a step at that size has run.
  int64_t unet_macs_per_sample(int64_t latent_height, int64_t latent_width) const;
  const std::filesystem::path& model_dir() const;
  // The scheduler config the samplers are made from (the folder's scheduler_config.json, or a
  // single file's built-in one).
  const nlohmann::json& scheduler_config() const;
  // The linear backend load() chose for the run's dtype, and why (CUDA: always ATen, cuBLAS).
  const runtime::LinearChoice& linear_backend_choice() const;
  // The layers LoRAs may adapt (with the pruning permutations) and the loaded LoRA files.
  const lora::LoraTargets& lora_targets() const;
  lora::LoraCache& lora_cache() const;

 private:
  struct Parts;
  explicit StableDiffusionPipeline(std::unique_ptr<Parts> parts);
  std::unique_ptr<Parts> parts_;
};

// Float images [N, H, W, 3] in [0, 1] to uint8 as diffusers' numpy_to_pil: round(x * 255).
at::Tensor to_uint8(const at::Tensor& images);

}  // namespace ldcp::pipelines
