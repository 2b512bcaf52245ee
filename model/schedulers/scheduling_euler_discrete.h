#pragma once
// diffusers' EulerDiscreteScheduler (scheduling_euler_discrete.py): Euler's method on the
// sigma (k-diffusion) parametrisation, Algorithm 2 of Karras et al. 2022 without churn.

#include <optional>

#include "model/schedulers/scheduler.h"
#include "model/schedulers/scheduling_utils.h"

namespace ldcp::schedulers {

struct EulerDiscreteSchedulerConfig : BetaScheduleConfig {
  std::string prediction_type = "epsilon";    // epsilon, v_prediction, sample, original_sample
  std::string interpolation_type = "linear";  // only linear (log_linear is rejected)
  bool use_karras_sigmas = false;
  std::optional<double> sigma_min, sigma_max;  // Karras sigma range (default: the schedule's)
  std::string timestep_spacing = "linspace";   // linspace, leading, trailing
  std::string timestep_type = "discrete";      // discrete, continuous
  int64_t steps_offset = 0;
  std::string final_sigmas_type = "zero";  // zero, sigma_min

  // From a scheduler_config.json of any class, as EulerDiscreteScheduler.from_config.
  // Rejects use_exponential_sigmas / use_beta_sigmas (not implemented) with io::ConfigError.
  static EulerDiscreteSchedulerConfig from_json(const nlohmann::json& config);
};

class EulerDiscreteScheduler final : public Scheduler {
 public:
  explicit EulerDiscreteScheduler(EulerDiscreteSchedulerConfig config);

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
  std::string name() const override { return "EulerDiscreteScheduler"; }

  const EulerDiscreteSchedulerConfig& config() const { return config_; }
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }

 private:
  void init_step_index(const at::Tensor& timestep);

  EulerDiscreteSchedulerConfig config_;
  at::Tensor betas_, alphas_, alphas_cumprod_;  // float32
  int64_t num_inference_steps_ = 0;
  at::Tensor timesteps_, sigmas_;
  std::optional<int64_t> step_index_;
  std::optional<int64_t> begin_index_;  // set_begin_index; reset by set_timesteps
};

}  // namespace ldcp::schedulers
