#pragma once
// diffusers' EulerAncestralDiscreteScheduler (scheduling_euler_ancestral_discrete.py): Euler
// steps with ancestral sampling, fresh noise drawn through the caller's generator every step.

#include <optional>

#include "model/schedulers/scheduler.h"
#include "model/schedulers/scheduling_utils.h"

namespace ldcp::schedulers {

struct EulerAncestralDiscreteSchedulerConfig : BetaScheduleConfig {
  std::string prediction_type = "epsilon";    // epsilon, v_prediction
  std::string timestep_spacing = "linspace";  // linspace, leading, trailing
  int64_t steps_offset = 0;

  // From a scheduler_config.json of any class, as EulerAncestralDiscreteScheduler.from_config.
  static EulerAncestralDiscreteSchedulerConfig from_json(const nlohmann::json& config);
};

class EulerAncestralDiscreteScheduler final : public Scheduler {
 public:
  explicit EulerAncestralDiscreteScheduler(EulerAncestralDiscreteSchedulerConfig config);

  void set_timesteps(int64_t num_inference_steps) override;
  at::Tensor timesteps() const override { return timesteps_; }  // float32
  at::Tensor sigmas() const override { return sigmas_; }        // float32, one more than steps
  double init_noise_sigma() const override;
  at::Tensor scale_model_input(const at::Tensor& sample, const at::Tensor& timestep) override;
  at::Tensor step(const at::Tensor& model_output, const at::Tensor& timestep,
                  const at::Tensor& sample, std::optional<at::Generator> generator) override;
  void set_begin_index(int64_t begin_index) override { begin_index_ = begin_index; }
  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise,
                       const at::Tensor& timestep) const override;
  std::string name() const override { return "EulerAncestralDiscreteScheduler"; }

  const EulerAncestralDiscreteSchedulerConfig& config() const { return config_; }
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }

 private:
  void init_step_index(const at::Tensor& timestep);

  EulerAncestralDiscreteSchedulerConfig config_;
  at::Tensor betas_, alphas_, alphas_cumprod_;  // float32
  int64_t num_inference_steps_ = 0;
  at::Tensor timesteps_, sigmas_;
  std::optional<int64_t> step_index_;
  std::optional<int64_t> begin_index_;  // set_begin_index; reset by set_timesteps
};

}  // namespace ldcp::schedulers
