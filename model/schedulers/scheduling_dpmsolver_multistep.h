#pragma once
// diffusers' DPMSolverMultistepScheduler (scheduling_dpmsolver_multistep.py): DPM-Solver and
// DPM-Solver++ multistep solvers (orders 1-3, midpoint or heun), deterministic or SDE.

#include <limits>
#include <optional>
#include <vector>

#include "model/schedulers/scheduler.h"
#include "model/schedulers/scheduling_utils.h"

namespace ldcp::schedulers {

struct DPMSolverMultistepSchedulerConfig : BetaScheduleConfig {
  int64_t solver_order = 2;                 // 1, 2 or 3
  std::string prediction_type = "epsilon";  // epsilon, sample, v_prediction
  bool thresholding = false;
  double dynamic_thresholding_ratio = 0.995;
  double sample_max_value = 1.0;
  // dpmsolver++, sde-dpmsolver++, dpmsolver, sde-dpmsolver ("deis" reads as dpmsolver++)
  std::string algorithm_type = "dpmsolver++";
  std::string solver_type = "midpoint";  // midpoint, heun ("logrho", "bh1", "bh2": midpoint)
  bool lower_order_final = true;
  bool euler_at_final = false;
  bool use_karras_sigmas = false;
  std::string final_sigmas_type = "zero";  // zero, sigma_min
  double lambda_min_clipped = -std::numeric_limits<double>::infinity();
  std::string timestep_spacing = "linspace";  // linspace, leading, trailing
  int64_t steps_offset = 0;
  // Not DPMSolverMultistepScheduler arguments, but its Karras conversion reads them from the
  // config when the file has them (diffusers keeps unknown keys as hidden config entries).
  std::optional<double> sigma_min, sigma_max;

  // From a scheduler_config.json of any class, as DPMSolverMultistepScheduler.from_config.
  // Rejects the options not implemented here (exponential, beta, lu-lambda and flow sigmas,
  // dynamic shifting, learned variance) with io::ConfigError.
  static DPMSolverMultistepSchedulerConfig from_json(const nlohmann::json& config);
};

class DPMSolverMultistepScheduler final : public Scheduler {
 public:
  explicit DPMSolverMultistepScheduler(DPMSolverMultistepSchedulerConfig config);

  void set_timesteps(int64_t num_inference_steps) override;
  at::Tensor timesteps() const override { return timesteps_; }  // int64
  at::Tensor sigmas() const override { return sigmas_; }        // float32, one more than steps
  double init_noise_sigma() const override { return 1.0; }
  at::Tensor scale_model_input(const at::Tensor& sample, const at::Tensor& timestep) override {
    return sample;
  }
  at::Tensor step(const at::Tensor& model_output, const at::Tensor& timestep,
                  const at::Tensor& sample, std::optional<at::Generator> generator) override;
  void set_begin_index(int64_t begin_index) override { begin_index_ = begin_index; }
  at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise,
                       const at::Tensor& timestep) const override;
  std::string name() const override { return "DPMSolverMultistepScheduler"; }

  const DPMSolverMultistepSchedulerConfig& config() const { return config_; }
  const at::Tensor& alphas_cumprod() const { return alphas_cumprod_; }

 private:
  int64_t index_for_timestep(const at::Tensor& timestep) const;
  at::Tensor convert_model_output(const at::Tensor& model_output, const at::Tensor& sample) const;
  at::Tensor first_order_update(const at::Tensor& model_output, const at::Tensor& sample,
                                const at::Tensor& noise) const;
  at::Tensor second_order_update(const at::Tensor& sample, const at::Tensor& noise) const;
  at::Tensor third_order_update(const at::Tensor& sample, const at::Tensor& noise) const;

  DPMSolverMultistepSchedulerConfig config_;
  at::Tensor betas_, alphas_, alphas_cumprod_;  // float32
  at::Tensor alpha_t_, sigma_t_, lambda_t_;     // float32, per training timestep
  int64_t num_inference_steps_ = 0;
  at::Tensor timesteps_, sigmas_;
  std::vector<at::Tensor> model_outputs_;  // the last solver_order converted outputs
  int64_t lower_order_nums_ = 0;
  std::optional<int64_t> step_index_;
  std::optional<int64_t> begin_index_;  // set_begin_index; reset by set_timesteps
};

}  // namespace ldcp::schedulers
