#include "server/sd_engine.h"

#include <new>
#include <sstream>

#include <c10/util/Exception.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "model/lora/lora_cache.h"
#include "model/models/unets/unet_2d_condition.h"
#include "model/pruning/gate_scores.h"
#include "model/pruning/unet_pruner.h"
#include "model/schedulers/scheduler.h"
#include "server/logging.h"

namespace ldcp::server {

namespace {

// "sd15" for SD1.5's U-Net (and "sd15-inpainting" for its 9-channel variant), otherwise the
// config's outline.
std::string architecture_of(const models::UNet2DConditionConfig& c) {
  const bool sd15_widths = c.block_out_channels == std::vector<int64_t>{320, 640, 1280, 1280} &&
                           c.cross_attention_dim_of(0) == 768 && c.layers(0) == 2;
  if (sd15_widths && c.in_channels == 4) return "sd15";
  if (sd15_widths && c.in_channels == 9) return "sd15-inpainting";
  std::ostringstream s;
  s << "unet in=" << c.in_channels << " blocks=";
  for (size_t i = 0; i < c.block_out_channels.size(); ++i) {
    s << (i ? "," : "") << c.block_out_channels[i];
  }
  s << " cross=" << c.cross_attention_dim_of(0);
  return s.str();
}

}  // namespace

SdEngine::SdEngine(const std::filesystem::path& model_dir,
                   const pipelines::PipelineOptions& options, std::string name)
    : pipeline_(pipelines::StableDiffusionPipeline::load(model_dir, options)),
      meter_(options.device),
      name_(std::move(name)) {
  auto dir = std::filesystem::absolute(model_dir).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();
  if (name_.empty()) name_ = dir.filename().string();
  const auto& scores = pipeline_->pruner().scores();
  log_info("pruning scores: " + scores.source +
           (options.gates_file.empty() ? std::string() : " from " + options.gates_file.string()));
  gates_file_ = options.gates_file.string();
  schedules_ = pruning::step_schedules_from_metadata(scores.metadata, gates_file_);
  scheduler_config_ = std::make_shared<const nlohmann::json>(pipeline_->scheduler_config());
  if (!schedules_.empty()) {
    std::ostringstream budgets;
    for (const auto& s : schedules_) {
      budgets << (budgets.tellp() > 0 ? ", " : "") << s.budget << " (" << s.sampler << ", "
              << s.steps << " steps, floor " << s.floor << ")";
    }
    log_info("learned step schedules for FLOPs budgets " + budgets.str());
  }
}

std::string SdEngine::score_source() const { return pipeline_->pruner().scores().source; }

ModelDescription SdEngine::describe() const {
  ModelDescription d;
  d.architecture = architecture_of(pipeline_->unet().config());
  d.gate_scores = score_source();
  if (!gates_file_.empty()) d.gates_file = std::filesystem::path(gates_file_).filename().string();
  for (const auto& s : schedules_) d.flops_budgets.push_back(s.budget);
  d.loaded_loras = pipeline_->lora_cache().names();
  return d;
}

std::vector<double> SdEngine::budget_levels(double budget, const std::string& sampler,
                                            int64_t steps) const {
  if (gates_file_.empty()) {
    throw std::invalid_argument(
        "only allowed on a server started with --gates FILE holding learned step schedules "
        "(ldcp tune-schedule); this one has none");
  }
  const auto& schedule = pruning::find_step_schedule(schedules_, budget, "the server's gates file");
  auto scheduler = schedulers::make_scheduler(sampler, *scheduler_config_);
  scheduler->set_timesteps(steps);
  const auto t = scheduler->timesteps().to(torch::kDouble).contiguous();
  const std::vector<double> timesteps(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
  return pruning::levels_for_timesteps(schedule, timesteps);
}

void SdEngine::complete_calibration_params(pipelines::GenerationParams& p) const {
  if (pipeline_->unet().config().in_channels != 9) return;
  // An inpainting model: a grey image, all of it repainted (strength 1: every step runs); the
  // measured peaks include the VAE encoder's.
  p.init_image = torch::full({p.height, p.width, 3}, 128, torch::kUInt8);
  p.mask_image = torch::full({p.height, p.width, 3}, 255, torch::kUInt8);
}

std::vector<pipelines::GenerationResult> SdEngine::run(
    const std::vector<pipelines::GenerationParams>& requests,
    const pipelines::StableDiffusionPipeline::BatchStepCallback& callback) {
  try {
    torch::NoGradGuard no_grad;
    if (requests.size() == 1) {
      pipelines::StepCallback one;
      if (callback) one = [&](const pipelines::StepInfo& s) { return callback(0, s); };
      std::vector<pipelines::GenerationResult> out;
      out.push_back(pipeline_->generate(requests[0], one));
      return out;
    }
    return pipeline_->generate_batch(requests, callback);
  } catch (const c10::OutOfMemoryError& e) {
    throw OutOfMemory(e.what_without_backtrace());
  } catch (const std::bad_alloc& e) {
    throw OutOfMemory(e.what());
  }
}

}  // namespace ldcp::server
