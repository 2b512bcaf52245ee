#pragma once
// The real engine: a StableDiffusionPipeline on one device, and that device's MemoryMeter.

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "model/pipelines/pipeline_stable_diffusion.h"
#include "model/pruning/step_schedule.h"
#include "model/runtime/memory_meter.h"
#include "server/engine.h"

namespace ldcp::server {

class SdEngine final : public Engine {
 public:
  // `name`: what requests call it (empty: the folder's or file's name).
  SdEngine(const std::filesystem::path& model_dir, const pipelines::PipelineOptions& options,
           std::string name = {});

  std::string model_name() const override { return name_; }
  int64_t native_resolution() const override { return pipeline_->native_resolution(); }
  void validate(const pipelines::GenerationParams& params) const override {
    pipeline_->validate(params);
  }
  bool batchable(const pipelines::GenerationParams& a,
                 const pipelines::GenerationParams& b) const override {
    return pipelines::batchable(a, b);
  }
  std::vector<pipelines::GenerationResult> run(
      const std::vector<pipelines::GenerationParams>& requests,
      const pipelines::StableDiffusionPipeline::BatchStepCallback& callback) override;
  runtime::MemoryStats memory() const override { return meter_.stats(); }
  void complete_calibration_params(pipelines::GenerationParams& params) const override;
  const runtime::LinearChoice& linear_backend() const { return pipeline_->linear_backend_choice(); }
  // Where the pruning's gate scores came from: "magnitude", "learned" or "random".
  std::string score_source() const;
  std::vector<double> budget_levels(double budget, const std::string& sampler,
                                    int64_t steps) const override;
  ModelDescription describe() const override;

 private:
  std::unique_ptr<pipelines::StableDiffusionPipeline> pipeline_;
  runtime::MemoryMeter meter_;
  std::string name_;
  // The gates file's learned step schedules (validated when it loaded), and the model's
  // scheduler config to compute a request's timesteps from.
  std::vector<pruning::StepSchedule> schedules_;
  std::string gates_file_;
  std::shared_ptr<const nlohmann::json> scheduler_config_;
};

}  // namespace ldcp::server
