#pragma once
// `ldcp train-gates`: learns the importance scores of the U-Net's gated units from images.
//
// The U-Net is frozen. Each gated unit u has a learnable logit s_u (the score written to the
// gates file). For a pruning level L the hard mask keeps what UNetPruner would keep with the
// logits as scores: units are dropped globally in ascending logit, from the end of each layer,
// until the dropped MACs reach L, every layer keeping its floor (LevelAllocator below mirrors
// UNetPruner::plan). Training sees that hard mask in the forward pass and the soft mask
// sigmoid((s_u - tau_L) / T) in the backward pass (straight-through estimator), tau_L being the
// threshold between the last kept and the first dropped unit.
//
// Loss per sample: the distillation error of the gated U-Net against the same U-Net with the
// gates off, ||eps_gated - eps_full||^2 / ||eps_full||^2, at a random timestep and noise on
// the image's latents (q(x_t | x_0) from the model's scheduler betas) with the text condition;
// plus resource_weight * (soft kept MAC fraction - (1 - L))^2, which makes the relaxation keep
// the cost the hard mask keeps and so pushes expensive units hardest when it keeps too much.
// Levels are sampled per sample ("sandwich": the smallest and largest training level and
// random ones between them), so every prefix is trained, not one.
//
// Logits start from the per-layer-normalised magnitude scores, standardised (an increasing
// affine map, so step 0 reproduces the magnitude ordering exactly). Only the logits train (a
// hand-written Adam, whose state is checkpointed); every U-Net parameter has requires_grad off.
// Random draws come from one CPU generator seeded by `seed`, so a run is deterministic for a
// seed on a device, and a resumed run equals an uninterrupted one.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "model/pruning/gate_scores.h"

namespace ldcp::models {
class UNet2DConditionModelImpl;
}

namespace ldcp::pruning {

struct TrainerOptions {
  std::filesystem::path
      model_dir;  // diffusers folder (unet, vae, text_encoder, tokenizer, scheduler)
  std::filesystem::path data_dir;  // folder tree of PNG / JPEG images
  std::filesystem::path out;       // the gates file to write
  // Latent cache root; empty: $LDCP_CACHE_DIR, else $XDG_CACHE_HOME/ldcp, else ~/.cache/ldcp
  // (entries under <root>/latents/).
  std::filesystem::path cache_dir;
  std::filesystem::path checkpoint;  // empty: OUT.ckpt
  std::filesystem::path resume;      // a checkpoint to continue from (empty: start afresh)
  std::filesystem::path captions;    // optional: lines "relative/path<TAB>caption"
  std::string prompt;                // the text condition of images without a caption

  int64_t resolution = 512;  // pixels (centre crop, then resize)
  int64_t steps = 1000;      // total optimisation steps (a resumed run continues to this)
  int64_t batch = 4;
  double lr = 0.05;                // Adam, on standardised logits
  double final_lr_fraction = 0.1;  // cosine decay to lr * this at the last step (1: constant)
  // T of the sigmoid relaxation (logit units). 1.0: on the trained face model (README, "Pruning
  // on a trained model") T = 1 and 2 gave held-out errors at 0.5 of 0.141-0.148, against
  // 0.153-0.161 at 0.5 and 0.172 at 0.2: a softer mask lets the units near the threshold learn.
  double temperature = 1.0;
  double resource_weight = 1.0;
  // The logits' update. Each unit's straight-through gradient is a first-order estimate of how
  // much the distillation loss grows when the unit is dropped; the allocator drops in ascending
  // logit, so the logits should order units by that growth per MAC saved.
  //  - cost_normalized: divide each unit's gradient by its MAC cost (relative to the mean unit),
  //    so logits accumulate importance per cost rather than importance;
  //  - global_adam: Adam's second moment is one scalar (the mean square over units) instead of
  //    one per unit, so a unit moves in proportion to its gradient; per-unit Adam moves every
  //    unit at about the same speed whatever its gradient's size, which keeps only the sign.
  bool cost_normalized = true;
  bool global_adam = true;
  // Training levels: samples take the smallest, the largest, and uniform ones between them;
  // validation reports each listed level.
  std::vector<double> levels = {0.1, 0.25, 0.5, 0.75};
  uint64_t seed = 0;

  int64_t val_images = -1;       // held-out images; -1: min(64, N / 10), at least 1 when N >= 2
  int64_t val_every = 0;         // steps between validations; 0: at checkpoints and the end
  int64_t checkpoint_every = 0;  // steps between checkpoints; 0: steps / 10 (at least 1)
  int64_t stop_after = 0;        // > 0: stop (with a checkpoint) after this step; for tests and
                                 // time-boxed runs (a later --resume continues)
  int64_t encode_batch = 8;      // images per VAE call when filling the cache

  c10::Device device = c10::kCPU;
  // Autocast dtype of the U-Net's forward and backward passes: float32 (none), or bfloat16 /
  // float16 on CUDA (float16 with dynamic loss scaling). Weights and logits stay float32.
  c10::ScalarType dtype = c10::kFloat;
  bool prefer_fp16_weights = false;  // load *.fp16.safetensors variants when present
};

struct StepReport {
  int64_t step = 0;  // 1-based, of `steps`
  int64_t steps = 0;
  double loss = 0, distill = 0, resource = 0;  // this step's (batch means)
  double loss_ema = 0;                         // exponential moving average (0.98) of loss
};

struct ValidationReport {
  int64_t step = 0;
  std::vector<double> levels;
  // Mean over held-out images of ||eps_pruned - eps_full|| / ||eps_full||, per level, with
  // hard masks equal to UNetPruner's plan for the current logits.
  std::vector<double> relative_error;
  double mean() const;
};

struct TrainerCallbacks {
  std::function<void(const std::string&)> log;              // one line of information
  std::function<void(int64_t done, int64_t total)> encode;  // latent cache progress
  std::function<void(const StepReport&)> step;
  std::function<void(const ValidationReport&)> validation;
};

struct TrainResult {
  GateScores scores;                  // source "learned", logits per layer, metadata
  std::filesystem::path out;          // where the scores were written (empty if stopped early)
  std::filesystem::path checkpoint;   // the last checkpoint written (empty if none)
  std::filesystem::path cache_entry;  // the latent cache entry used
  int64_t images = 0, train_images = 0, val_images = 0;
  int64_t encoded = 0;     // images encoded by the VAE in this run (0: cache reused)
  int64_t first_step = 0;  // 0, or the resumed checkpoint's step
  int64_t last_step = 0;   // the step the run ended at
  bool finished = false;   // last_step == steps (the gates file was written)
  std::vector<ValidationReport> validations;  // in order, the first at first_step
  ValidationReport random_validation;         // random scores (seed 0) on the same images
  std::vector<StepReport> steps;              // every step run in this call
};

// Runs the whole thing: loads the model, fills or reuses the latent cache, trains, writes
// checkpoints and (when finished) the gates file: source "learned", normalize_per_layer false,
// metadata fingerprint, model, data, images, train_images, val_images, steps, levels,
// resolution, batch, lr, temperature, resource_weight, seed, prompt, [captions],
// final_train_loss, final_distill_loss, final_resource_loss, and the held-out errors
// ("level:error,...") initial_val_error (magnitude order), final_val_error, random_val_error.
// Throws DataError for unusable data, std::invalid_argument for bad options or a checkpoint that
// does not match the run.
TrainResult train_gates(const TrainerOptions& options, const TrainerCallbacks& callbacks = {});

// The default latent cache root (see TrainerOptions::cache_dir).
std::filesystem::path default_cache_dir();

// UNetPruner's level -> kept units mapping, for scores that change every step: `unit_cost` MACs
// per unit of each layer (as UNetPruner measures them), `floor` the fewest units each layer
// keeps. Given the current per-layer scores, which units of each layer a level keeps. Layers
// are in attach_gates() order; flat scores concatenate them in that order.
class LevelAllocator {
 public:
  LevelAllocator(std::vector<int64_t> units, std::vector<double> unit_cost,
                 std::vector<int64_t> floor);

  // Sorts the scores once (flat [total units], layers concatenated); call before keep_mask.
  void set_scores(const at::Tensor& flat_scores);
  // Flat float [total units] 0/1: what the level keeps. Also returns tau, a threshold between
  // the kept and the dropped candidates' scores (units of a layer's floor are always kept).
  at::Tensor keep_mask(double level, double* tau = nullptr) const;
  // Units kept per layer at `level` (equal to UNetPruner::plan(level).kept_units).
  std::vector<int64_t> kept_units(double level) const;
  // Flat float [total units]: 1 for the units a layer's floor protects.
  const at::Tensor& protected_mask() const { return protected_; }
  // Flat float [total units]: each unit's MACs over the total (sums to 1).
  const at::Tensor& cost_fraction() const { return cost_fraction_; }

  int64_t total_units() const { return total_units_; }
  const std::vector<int64_t>& offsets() const { return offsets_; }
  const std::vector<int64_t>& units() const { return units_; }

 private:
  // Droppable units, least important first: (flat index), with their costs accumulated.
  std::vector<int64_t> candidates_;
  std::vector<double> cumulative_cost_;  // cumulative_cost_[k]: cost of the first k + 1
  std::vector<double> candidate_score_;
  std::vector<int64_t> units_, offsets_, floor_;
  std::vector<double> unit_cost_;
  double total_cost_ = 0;
  int64_t total_units_ = 0;
  at::Tensor protected_, cost_fraction_;
};

// The allocator of `unet` (gates attached, costs and floors as UNetPruner measures them).
LevelAllocator level_allocator(models::UNet2DConditionModelImpl& unet);

}  // namespace ldcp::pruning
