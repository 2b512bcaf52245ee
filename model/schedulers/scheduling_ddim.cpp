#include "model/schedulers/scheduling_ddim.h"

#include <nlohmann/json.hpp>

#include "model/io/json_file.h"

namespace ldcp::schedulers {

using io::get_or;

DDIMSchedulerConfig DDIMSchedulerConfig::from_json(const nlohmann::json& json) {
  const auto config = effective_config(json);
  DDIMSchedulerConfig c;
  c.read(config, /*with_zero_snr=*/true);
  c.clip_sample = get_or(config, "clip_sample", c.clip_sample);
  c.set_alpha_to_one = get_or(config, "set_alpha_to_one", c.set_alpha_to_one);
  c.steps_offset = get_or(config, "steps_offset", c.steps_offset);
  c.prediction_type = get_or(config, "prediction_type", c.prediction_type);
  c.thresholding = get_or(config, "thresholding", c.thresholding);
  c.dynamic_thresholding_ratio =
      get_or(config, "dynamic_thresholding_ratio", c.dynamic_thresholding_ratio);
  c.clip_sample_range = get_or(config, "clip_sample_range", c.clip_sample_range);
  c.sample_max_value = get_or(config, "sample_max_value", c.sample_max_value);
  c.timestep_spacing = get_or(config, "timestep_spacing", c.timestep_spacing);
  return c;
}

DDIMScheduler::DDIMScheduler(DDIMSchedulerConfig config, double eta)
    : config_(std::move(config)), eta_(eta) {
  check_choice(name(), "prediction_type", config_.prediction_type,
               {"epsilon", "sample", "v_prediction"});
  check_choice(name(), "timestep_spacing", config_.timestep_spacing,
               {"linspace", "leading", "trailing"});
  if (!(eta_ >= 0)) throw std::invalid_argument("DDIMScheduler: eta must be >= 0");
  betas_ = make_betas(config_, name());
  alphas_ = 1.0 - betas_;
  alphas_cumprod_ = torch::cumprod(alphas_, 0);
  // The "previous" alpha product of the last step: 1, or the one of timestep 0.
  final_alpha_cumprod_ = config_.set_alpha_to_one ? torch::tensor(1.0f) : alphas_cumprod_[0];
}

void DDIMScheduler::set_timesteps(int64_t num_inference_steps) {
  const int64_t train = config_.num_train_timesteps;
  if (num_inference_steps > train) {
    throw std::invalid_argument(
        "DDIMScheduler: num_inference_steps " + std::to_string(num_inference_steps) +
        " cannot be larger than num_train_timesteps " + std::to_string(train));
  }
  if (num_inference_steps < 1) {
    throw std::invalid_argument("DDIMScheduler: num_inference_steps must be at least 1, got " +
                                std::to_string(num_inference_steps));
  }
  const int64_t n = num_inference_steps;
  num_inference_steps_ = n;
  std::vector<int64_t> ts;  // descending
  if (config_.timestep_spacing == "linspace") {
    for (double v : np::linspace(0, static_cast<double>(train - 1), n)) {
      ts.push_back(static_cast<int64_t>(np::round(v)));
    }
    std::reverse(ts.begin(), ts.end());
  } else if (config_.timestep_spacing == "leading") {
    const int64_t step_ratio = train / n;
    for (int64_t i = n - 1; i >= 0; --i) ts.push_back(i * step_ratio + config_.steps_offset);
  } else {  // trailing
    const double step_ratio = static_cast<double>(train) / static_cast<double>(n);
    for (double v : np::arange(static_cast<double>(train), 0, -step_ratio)) {
      ts.push_back(static_cast<int64_t>(np::round(v)) - 1);
    }
  }
  timesteps_ = torch::tensor(ts, torch::kInt64);
}

at::Tensor DDIMScheduler::alpha_prod_prev(int64_t prev_timestep) const {
  return prev_timestep >= 0 ? alphas_cumprod_[prev_timestep] : final_alpha_cumprod_;
}

at::Tensor DDIMScheduler::get_variance(int64_t timestep, int64_t prev_timestep) const {
  auto alpha_prod_t = alphas_cumprod_[timestep];
  auto alpha_prod_t_prev = alpha_prod_prev(prev_timestep);
  auto beta_prod_t = 1 - alpha_prod_t;
  auto beta_prod_t_prev = 1 - alpha_prod_t_prev;
  return (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev);
}

at::Tensor DDIMScheduler::step(const at::Tensor& model_output, const at::Tensor& timestep,
                               const at::Tensor& sample, std::optional<at::Generator> generator) {
  if (num_inference_steps_ == 0) {
    throw std::logic_error("DDIMScheduler: call set_timesteps before step");
  }
  // Formulas (12) and (16) of the DDIM paper.
  // 1. the previous step's timestep
  const int64_t t = timestep.item<int64_t>();
  const int64_t prev_timestep = t - config_.num_train_timesteps / num_inference_steps_;

  // 2. alphas, betas
  auto alpha_prod_t = alphas_cumprod_[t];
  auto alpha_prod_t_prev = alpha_prod_prev(prev_timestep);
  auto beta_prod_t = 1 - alpha_prod_t;

  // 3. the predicted original sample ("predicted x_0") and noise
  at::Tensor pred_original_sample, pred_epsilon;
  if (config_.prediction_type == "epsilon") {
    pred_original_sample = (sample - beta_prod_t.pow(0.5) * model_output) / alpha_prod_t.pow(0.5);
    pred_epsilon = model_output;
  } else if (config_.prediction_type == "sample") {
    pred_original_sample = model_output;
    pred_epsilon = (sample - alpha_prod_t.pow(0.5) * pred_original_sample) / beta_prod_t.pow(0.5);
  } else {  // v_prediction
    pred_original_sample = alpha_prod_t.pow(0.5) * sample - beta_prod_t.pow(0.5) * model_output;
    pred_epsilon = alpha_prod_t.pow(0.5) * model_output + beta_prod_t.pow(0.5) * sample;
  }

  // 4. clip or threshold the predicted x_0
  if (config_.thresholding) {
    pred_original_sample = threshold_sample(
        pred_original_sample, config_.dynamic_thresholding_ratio, config_.sample_max_value);
  } else if (config_.clip_sample) {
    pred_original_sample =
        pred_original_sample.clamp(-config_.clip_sample_range, config_.clip_sample_range);
  }

  // 5. sigma_t(eta), formula (16)
  auto variance = get_variance(t, prev_timestep);
  auto std_dev_t = variance.pow(0.5) * eta_;

  // 6. the "direction pointing to x_t" of formula (12)
  auto pred_sample_direction = (1 - alpha_prod_t_prev - std_dev_t.pow(2)).pow(0.5) * pred_epsilon;

  // 7. x_{t-1} without the random noise
  auto prev_sample = alpha_prod_t_prev.pow(0.5) * pred_original_sample + pred_sample_direction;

  if (eta_ > 0) {
    auto variance_noise = randn_tensor(model_output.sizes(), generator, model_output.device(),
                                       model_output.scalar_type());
    prev_sample = prev_sample + std_dev_t * variance_noise;
  }
  return prev_sample;
}

}  // namespace ldcp::schedulers
