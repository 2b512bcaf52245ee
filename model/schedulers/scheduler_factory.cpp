#include <stdexcept>

#include <nlohmann/json.hpp>

#include "model/schedulers/scheduler.h"
#include "model/schedulers/scheduling_ddim.h"
#include "model/schedulers/scheduling_dpmsolver_multistep.h"
#include "model/schedulers/scheduling_euler_ancestral_discrete.h"
#include "model/schedulers/scheduling_euler_discrete.h"
#include "model/schedulers/scheduling_pndm.h"

namespace ldcp::schedulers {

const std::vector<std::string>& sampler_names() {
  static const std::vector<std::string> names{"pndm",    "ddim",     "euler",
                                              "euler_a", "dpmpp_2m", "dpmpp_2m_karras"};
  return names;
}

std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const nlohmann::json& config,
                                          const SamplerOptions& options) {
  if (name == "pndm") {
    return std::make_unique<PNDMScheduler>(PNDMSchedulerConfig::from_json(config));
  }
  if (name == "ddim") {
    return std::make_unique<DDIMScheduler>(DDIMSchedulerConfig::from_json(config), options.eta);
  }
  if (name == "euler") {
    return std::make_unique<EulerDiscreteScheduler>(
        EulerDiscreteSchedulerConfig::from_json(config));
  }
  if (name == "euler_a") {
    return std::make_unique<EulerAncestralDiscreteScheduler>(
        EulerAncestralDiscreteSchedulerConfig::from_json(config));
  }
  if (name == "dpmpp_2m" || name == "dpmpp_2m_karras") {
    // As DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++",
    // solver_order=2, use_karras_sigmas=...): the name fixes the solver whatever the file says.
    auto overridden = effective_config(config);
    overridden["algorithm_type"] = "dpmsolver++";
    overridden["solver_order"] = 2;
    overridden["use_karras_sigmas"] = name == "dpmpp_2m_karras";
    return std::make_unique<DPMSolverMultistepScheduler>(
        DPMSolverMultistepSchedulerConfig::from_json(overridden));
  }
  std::string known;
  for (const auto& n : sampler_names()) known += (known.empty() ? "" : ", ") + n;
  throw std::invalid_argument("unknown sampler \"" + name + "\" (known: " + known + ")");
}

}  // namespace ldcp::schedulers
