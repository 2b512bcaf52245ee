// GenerateRequest -> the scheduler's Job: the fields validated (request_validation.h), then
// what needs the engine of the request's model.

#include <sstream>

#include "model/pipelines/image_io.h"
#include "server/service.h"

namespace ldcp::server {

std::string request_to_job(const v1::GenerateRequest& r, const RequestLimits& lim,
                           const std::vector<const Engine*>& engines, uint64_t random_seed,
                           Job& job) {
  ValidatedRequest v;
  if (std::string error = validate_request(r, lim, random_seed, v); !error.empty()) return error;
  if (v.model >= engines.size() || !engines[v.model]) return "model: no engine for this model";
  const Engine& engine = *engines[v.model];
  job.model = v.model;
  auto& p = job.params;
  p.prompt = std::move(v.prompt);
  p.negative_prompt = std::move(v.negative_prompt);
  p.width = v.width;
  p.height = v.height;
  p.steps = v.steps;
  p.guidance_scale = v.guidance_scale;
  p.guidance_rescale = v.guidance_rescale;
  p.sampler = v.sampler;
  p.eta = v.eta;
  p.seed = v.seed;
  p.num_images = v.images;
  // img2img / inpainting: the decoded bytes become the tensors (no copy).
  if (!v.init_image.pixels.empty()) p.init_image = pipelines::to_tensor(std::move(v.init_image));
  if (!v.mask_image.pixels.empty()) p.mask_image = pipelines::to_tensor(std::move(v.mask_image));
  p.strength = v.strength;
  p.prompt_syntax =
      v.a1111_syntax ? pipelines::PromptSyntax::kA1111 : pipelines::PromptSyntax::kPlain;
  p.clip_skip = v.clip_skip;
  p.loras = std::move(v.loras);
  job.priority = v.priority;
  auto& pj = job.pruning;
  using P = ValidatedRequest::Pruning;
  switch (v.pruning) {
    case P::kAuto:
      pj.mode = PruningRequest::Mode::kAuto;
      pj.max_level = v.max_level;
      break;
    case P::kOff:
      pj.mode = PruningRequest::Mode::kOff;
      pj.schedule = pruning::PruningSchedule::off();
      break;
    case P::kFixedLevel:
      pj.mode = PruningRequest::Mode::kFixed;
      pj.schedule =
          v.level > 0 ? pruning::PruningSchedule::fixed(v.level) : pruning::PruningSchedule::off();
      break;
    case P::kFixedSteps:
      pj.mode = PruningRequest::Mode::kFixed;
      pj.schedule = pruning::PruningSchedule::steps(std::move(v.step_levels));
      break;
    case P::kFixedBudget:
      pj.mode = PruningRequest::Mode::kFixed;
      try {
        pj.schedule = pruning::PruningSchedule::steps(
            engine.budget_levels(v.flops_budget, p.sampler, p.steps));
      } catch (const std::invalid_argument& e) {
        return std::string("pruning.flops_budget: ") + e.what();
      }
      if (v.has_max_level && pj.schedule.max_level() > v.max_level) {
        std::ostringstream m;
        m << "pruning.max_level: the FIXED schedule's highest level " << pj.schedule.max_level()
          << " exceeds max_level " << v.max_level;
        return m.str();
      }
      break;
  }
  // The pipeline's own checks (the schedule included) as a backstop.
  try {
    auto check = p;
    if (pj.mode != PruningRequest::Mode::kAuto) check.pruning = pj.schedule;
    engine.validate(check);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  if (pj.mode != PruningRequest::Mode::kAuto) p.pruning = pj.schedule;
  return {};
}

}  // namespace ldcp::server
