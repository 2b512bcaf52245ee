#include "model/schedulers/scheduling_euler_discrete.h"

#include <nlohmann/json.hpp>

#include "model/io/json_file.h"

namespace ldcp::schedulers {

using io::ConfigError;
using io::get_or;

EulerDiscreteSchedulerConfig EulerDiscreteSchedulerConfig::from_json(const nlohmann::json& json) {
  const auto config = effective_config(json);
  EulerDiscreteSchedulerConfig c;
  c.read(config, /*with_zero_snr=*/true);
  c.prediction_type = get_or(config, "prediction_type", c.prediction_type);
  c.interpolation_type = get_or(config, "interpolation_type", c.interpolation_type);
  c.use_karras_sigmas = get_or(config, "use_karras_sigmas", c.use_karras_sigmas);
  if (get_or(config, "use_exponential_sigmas", false) || get_or(config, "use_beta_sigmas", false)) {
    throw ConfigError(
        "EulerDiscreteScheduler: use_exponential_sigmas and use_beta_sigmas are not supported");
  }
  if (config.contains("sigma_min") && !config["sigma_min"].is_null()) {
    c.sigma_min = get_or(config, "sigma_min", 0.0);
  }
  if (config.contains("sigma_max") && !config["sigma_max"].is_null()) {
    c.sigma_max = get_or(config, "sigma_max", 0.0);
  }
  c.timestep_spacing = get_or(config, "timestep_spacing", c.timestep_spacing);
  c.timestep_type = get_or(config, "timestep_type", c.timestep_type);
  c.steps_offset = get_or(config, "steps_offset", c.steps_offset);
  c.final_sigmas_type = get_or(config, "final_sigmas_type", c.final_sigmas_type);
  return c;
}

EulerDiscreteScheduler::EulerDiscreteScheduler(EulerDiscreteSchedulerConfig config)
    : config_(std::move(config)) {
  check_choice(name(), "prediction_type", config_.prediction_type,
               {"epsilon", "v_prediction", "sample", "original_sample"});
  check_choice(name(), "interpolation_type", config_.interpolation_type, {"linear"});
  check_choice(name(), "timestep_spacing", config_.timestep_spacing,
               {"linspace", "leading", "trailing"});
  check_choice(name(), "timestep_type", config_.timestep_type, {"discrete", "continuous"});
  check_choice(name(), "final_sigmas_type", config_.final_sigmas_type, {"zero", "sigma_min"});
  betas_ = make_betas(config_, name());
  alphas_ = 1.0 - betas_;
  alphas_cumprod_ = torch::cumprod(alphas_, 0);
  if (config_.rescale_betas_zero_snr) {
    // Close to 0 without being 0, so that the first sigma is not infinite.
    alphas_cumprod_[-1] = std::pow(2.0, -24);
  }
  // The training schedule, until set_timesteps replaces it.
  auto sigmas = ((1 - alphas_cumprod_) / alphas_cumprod_).pow(0.5).flip(0);
  sigmas_ = torch::cat({sigmas, torch::zeros({1})});
  timesteps_ =
      torch::from_blob(np::linspace(0, static_cast<double>(config_.num_train_timesteps - 1),
                                    config_.num_train_timesteps)
                           .data(),
                       {config_.num_train_timesteps}, torch::kFloat64)
          .flip(0)
          .to(torch::kFloat32);
}

double EulerDiscreteScheduler::init_noise_sigma() const {
  auto max_sigma = sigmas_.max();
  if (config_.timestep_spacing == "linspace" || config_.timestep_spacing == "trailing") {
    return max_sigma.item<double>();
  }
  return (max_sigma.pow(2) + 1).pow(0.5).item<double>();
}

void EulerDiscreteScheduler::set_timesteps(int64_t num_inference_steps) {
  if (num_inference_steps < 1) {
    throw std::invalid_argument(name() + ": num_inference_steps must be at least 1, got " +
                                std::to_string(num_inference_steps));
  }
  const int64_t n = num_inference_steps;
  const int64_t train = config_.num_train_timesteps;
  num_inference_steps_ = n;

  // Timesteps, descending, as float32 numpy arrays (held as the float64 values they convert to).
  std::vector<double> timesteps;
  if (config_.timestep_spacing == "linspace") {
    for (double v : np::linspace(0, static_cast<double>(train - 1), n)) {
      timesteps.push_back(static_cast<float>(v));
    }
    std::reverse(timesteps.begin(), timesteps.end());
  } else if (config_.timestep_spacing == "leading") {
    const int64_t step_ratio = train / n;
    for (int64_t i = n - 1; i >= 0; --i) {
      timesteps.push_back(static_cast<float>(static_cast<float>(i * step_ratio) +
                                             static_cast<float>(config_.steps_offset)));
    }
  } else {  // trailing
    const double step_ratio = static_cast<double>(train) / static_cast<double>(n);
    for (double v : np::arange(static_cast<double>(train), 0, -step_ratio)) {
      timesteps.push_back(static_cast<float>(static_cast<float>(np::round(v)) - 1.0f));
    }
  }

  const auto train_sigmas = to_float_vector(((1 - alphas_cumprod_) / alphas_cumprod_).pow(0.5));
  auto sigmas = np::interp(timesteps, train_sigmas);
  if (config_.use_karras_sigmas) {
    const auto log_sigmas = log_float(train_sigmas);
    sigmas = convert_to_karras(config_.sigma_min.value_or(sigmas.back()),
                               config_.sigma_max.value_or(sigmas.front()), n);
    timesteps.clear();
    for (double s : sigmas) timesteps.push_back(sigma_to_t(s, log_sigmas));
  }
  double sigma_last = 0;
  if (config_.final_sigmas_type == "sigma_min") {
    sigma_last = ((1 - alphas_cumprod_[0]) / alphas_cumprod_[0]).pow(0.5).item<double>();
  }
  std::vector<float> sigmas32(sigmas.begin(), sigmas.end());
  sigmas32.push_back(static_cast<float>(sigma_last));
  sigmas_ = torch::tensor(sigmas32, torch::kFloat32);

  if (config_.timestep_type == "continuous" && config_.prediction_type == "v_prediction") {
    // One 0-d log per sigma, as diffusers' list comprehension.
    std::vector<at::Tensor> ts;
    for (int64_t i = 0; i + 1 < sigmas_.size(0); ++i) ts.push_back(sigmas_[i].log() * 0.25);
    timesteps_ = torch::stack(ts);
  } else {
    std::vector<float> ts32(timesteps.begin(), timesteps.end());
    timesteps_ = torch::tensor(ts32, torch::kFloat32);
  }
  step_index_.reset();
  begin_index_.reset();
}

void EulerDiscreteScheduler::init_step_index(const at::Tensor& timestep) {
  step_index_ = begin_index_ ? *begin_index_ : index_for_timestep(timesteps_, timestep, name());
}

at::Tensor EulerDiscreteScheduler::add_noise(const at::Tensor& original, const at::Tensor& noise,
                                             const at::Tensor& timestep) const {
  const auto sigmas = sigmas_.to(original.device(), original.scalar_type());
  const auto sigma =
      sigmas[add_noise_index(begin_index_, step_index_, timesteps_, timestep, name())];
  return original + noise * sigma;
}

at::Tensor EulerDiscreteScheduler::scale_model_input(const at::Tensor& sample,
                                                     const at::Tensor& timestep) {
  if (!step_index_) init_step_index(timestep);
  auto sigma = sigmas_[*step_index_];
  return sample / (sigma.pow(2) + 1).pow(0.5);
}

at::Tensor EulerDiscreteScheduler::step(const at::Tensor& model_output, const at::Tensor& timestep,
                                        const at::Tensor& sample_in,
                                        std::optional<at::Generator> generator) {
  if (num_inference_steps_ == 0) {
    throw std::logic_error(name() + ": call set_timesteps before step");
  }
  if (!at::isFloatingType(timestep.scalar_type())) {
    throw std::invalid_argument(name() +
                                ": step() takes one of timesteps() as the timestep, not an index");
  }
  if (!step_index_) init_step_index(timestep);
  const int64_t i = *step_index_;

  // Upcast to avoid precision issues when computing prev_sample.
  auto sample = sample_in.to(torch::kFloat32);
  auto sigma = sigmas_[i];
  // The pipeline's s_churn = 0 keeps gamma at 0: no noise is added and sigma_hat = sigma.
  const double gamma = 0.0;
  auto sigma_hat = sigma * (gamma + 1);

  // 1. the predicted original sample (x_0) from the sigma-scaled predicted noise
  at::Tensor pred_original_sample;
  if (config_.prediction_type == "epsilon") {
    pred_original_sample = sample - sigma_hat * model_output;
  } else if (config_.prediction_type == "v_prediction") {
    pred_original_sample =
        model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (sample / (sigma.pow(2) + 1));
  } else {  // sample, original_sample
    pred_original_sample = model_output;
  }

  // 2. the ODE derivative, and an Euler step to the next sigma
  auto derivative = (sample - pred_original_sample) / sigma_hat;
  auto dt = sigmas_[i + 1] - sigma_hat;
  auto prev_sample = sample + derivative * dt;

  prev_sample = prev_sample.to(model_output.scalar_type());
  step_index_ = i + 1;
  return prev_sample;
}

}  // namespace ldcp::schedulers
