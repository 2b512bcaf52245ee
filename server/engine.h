#pragma once
// What the scheduler drives: one loaded model that runs U-Net batches. The real engine wraps
// StableDiffusionPipeline (sd_engine.h); the unit tests use a fake whose memory costs and timing
// they control, so the scheduling policy is tested apart from the model.

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/pipelines/pipeline_stable_diffusion.h"
#include "model/runtime/memory_meter.h"

namespace ldcp::server {

// An allocation failed while running a batch (CUDA or CPU out of memory). The engine has freed
// what the batch held; other requests are unaffected.
class OutOfMemory : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What ListModels reports of a model beyond its name and size.
struct ModelDescription {
  std::string architecture;  // "sd15", "sd15-inpainting" or a summary of the U-Net's config
  std::string gate_scores;   // "learned", "magnitude", "random"
  std::string gates_file;    // the file's name, no directory; empty without one
  std::vector<double> flops_budgets;      // the gates file's learned step schedules
  std::vector<std::string> loaded_loras;  // the LoRA cache's files now, most recent first
};

class Engine {
 public:
  virtual ~Engine() = default;

  virtual std::string model_name() const = 0;
  // The default image size (pixels) when a request gives none.
  virtual int64_t native_resolution() const = 0;

  // Throws std::invalid_argument naming the first invalid field.
  virtual void validate(const pipelines::GenerationParams& params) const = 0;
  // Whether two requests can share one U-Net batch.
  virtual bool batchable(const pipelines::GenerationParams& a,
                         const pipelines::GenerationParams& b) const = 0;

  // Runs the requests as one U-Net batch (one request: a plain generate). Results in request
  // order; `callback(i, step)` returning false drops request i. Throws OutOfMemory when an
  // allocation fails, std::invalid_argument for a bad request, other exceptions for failures.
  virtual std::vector<pipelines::GenerationResult> run(
      const std::vector<pipelines::GenerationParams>& requests,
      const pipelines::StableDiffusionPipeline::BatchStepCallback& callback) = 0;

  // What a calibration run needs beyond the text-to-image fields calibrate() sets: an
  // inpainting model (9-channel U-Net) an init image and a mask. Default: nothing.
  virtual void complete_calibration_params(pipelines::GenerationParams& params) const {}

  // For ListModels; default: nothing known.
  virtual ModelDescription describe() const { return {}; }

  // Measured memory of the engine's device now (allocator statistics).
  virtual runtime::MemoryStats memory() const = 0;

  // FIXED pruning with a FLOPs budget: the per-step levels of the learned schedule for that
  // mean U-Net FLOPs fraction (model/pruning/step_schedule.h), mapped onto the timesteps of
  // `sampler` at `steps`. Throws std::invalid_argument, with a message for the client, when
  // there is no such schedule; engines without learned schedules always do.
  virtual std::vector<double> budget_levels(double budget, const std::string& sampler,
                                            int64_t steps) const {
    throw std::invalid_argument("this server has no learned step schedules");
  }
};

}  // namespace ldcp::server
