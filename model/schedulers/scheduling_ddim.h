#pragma once
// diffusers' DDIMScheduler (scheduling_ddim.py): denoising diffusion implicit models, with the
// eta-scaled stochastic term drawn through the caller's generator.

#include "model/schedulers/scheduler.h"
#include "model/schedulers/scheduling_utils.h"

namespace ldcp::schedulers {

struct DDIMSchedulerConfig : BetaScheduleConfig {
  bool clip_sample = true;
  bool set_alpha_to_one = true;
  int64_t steps_offset = 0;
  std::string prediction_type = "epsilon";  // epsilon, sample, v_prediction
  bool thresholding = false;
  double dynamic_thresholding_ratio = 0.995;
  double clip_sample_range = 1.0;
  double sample_max_value = 1.0;
  std::string timestep_spacing = "leading";  // leading, trailing, linspace

  // From a scheduler_config.json of any class, as DDIMScheduler.from_config.
  static DDIMSchedulerConfig from_json(const nlohmann::json& config);
};

class DDIMScheduler final : public Scheduler {
 public:
  // eta: the weight of the stochastic term (0: deterministic DDIM), step()'s `eta` argument.
  explicit DDIMScheduler(DDIMSchedulerConfig config, double eta = 0.0);

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
  std::string name() const override { return "DDIMScheduler"; }

  const DDIMSchedulerConfig& config() const { return config_; }
  double eta() const { return eta_; }
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }

 private:
  at::Tensor get_variance(int64_t timestep, int64_t prev_timestep) const;
  at::Tensor alpha_prod_prev(int64_t prev_timestep) const;

  DDIMSchedulerConfig config_;
  double eta_;
  at::Tensor betas_, alphas_, alphas_cumprod_, final_alpha_cumprod_;  // float32
  int64_t num_inference_steps_ = 0;  // 0: set_timesteps not called yet
  at::Tensor timesteps_;
};

}  // namespace ldcp::schedulers
