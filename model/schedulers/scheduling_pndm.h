#pragma once
// diffusers' PNDMScheduler (scheduling_pndm.py): pseudo numerical methods, Runge-Kutta warm-up
// steps (unless skip_prk_steps) followed by linear multistep (PLMS) steps. SD1.5's default.

#include <vector>

#include "model/schedulers/scheduler.h"
#include "model/schedulers/scheduling_utils.h"

namespace ldcp::schedulers {

struct PNDMSchedulerConfig : BetaScheduleConfig {
  bool skip_prk_steps = false;
  bool set_alpha_to_one = false;
  std::string prediction_type = "epsilon";   // epsilon, v_prediction
  std::string timestep_spacing = "leading";  // linspace, leading, trailing
  int64_t steps_offset = 0;

  // From a scheduler_config.json of any class, as PNDMScheduler.from_config.
  static PNDMSchedulerConfig from_json(const nlohmann::json& config);
};

class PNDMScheduler final : public Scheduler {
 public:
  explicit PNDMScheduler(PNDMSchedulerConfig config);

  void set_timesteps(int64_t num_inference_steps) override;
  at::Tensor timesteps() const override { return timesteps_; }  // int64
  double init_noise_sigma() const override { return 1.0; }
  at::Tensor scale_model_input(const at::Tensor& sample, const at::Tensor& timestep) override {
    return sample;
  }
  at::Tensor step(const at::Tensor& model_output, const at::Tensor& timestep,
                  const at::Tensor& sample, std::optional<at::Generator> generator) override;
  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise,
                       const at::Tensor& timestep) const override {
    return ddpm_add_noise(alphas_cumprod_, original, noise, timestep);
  }
  std::string name() const override { return "PNDMScheduler"; }

  const PNDMSchedulerConfig& config() const { return config_; }
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }

 private:
  at::Tensor step_prk(const at::Tensor& model_output, const at::Tensor& timestep,
                      const at::Tensor& sample);
  at::Tensor step_plms(const at::Tensor& model_output, const at::Tensor& timestep,
                       const at::Tensor& sample);
  at::Tensor get_prev_sample(const at::Tensor& sample, int64_t timestep, int64_t prev_timestep,
                             at::Tensor model_output) const;

  PNDMSchedulerConfig config_;
  at::Tensor betas_, alphas_, alphas_cumprod_, final_alpha_cumprod_;  // float32
  static constexpr int64_t pndm_order_ = 4;

  int64_t num_inference_steps_ = 0;  // 0: set_timesteps not called yet
  std::vector<int64_t> prk_timesteps_, plms_timesteps_;
  at::Tensor timesteps_;
  // Running state of the multistep method.
  at::Tensor cur_model_output_;  // undefined: diffusers' 0
  at::Tensor cur_sample_;        // undefined: None
  std::vector<at::Tensor> ets_;
  int64_t counter_ = 0;
};

}  // namespace ldcp::schedulers
