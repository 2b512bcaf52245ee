#include "server/sd_engine.h"

#include <new>

#include <c10/util/Exception.h>
#include <torch/torch.h>

#include "model/pruning/gate_scores.h"
#include "model/pruning/unet_pruner.h"
#include "server/logging.h"

namespace ldcp::server {

SdEngine::SdEngine(const std::filesystem::path& model_dir,
                   const pipelines::PipelineOptions& options)
    : pipeline_(pipelines::StableDiffusionPipeline::load(model_dir, options)),
      meter_(options.device) {
  auto dir = std::filesystem::absolute(model_dir).lexically_normal();
  if (dir.filename().empty()) dir = dir.parent_path();
  name_ = dir.filename().string();
  const auto& scores = pipeline_->pruner().scores();
  log_info("pruning scores: " + scores.source +
           (options.gates_file.empty() ? std::string() : " from " + options.gates_file.string()));
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
