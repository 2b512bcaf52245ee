#include "model/schedulers/scheduling_euler_ancestral_discrete.h"

#include <nlohmann/json.hpp>

#include "model/io/json_file.h"

namespace ldcp::schedulers {

using io::get_or;

EulerAncestralDiscreteSchedulerConfig EulerAncestralDiscreteSchedulerConfig::from_json(
    const nlohmann::json& json) {
  const auto config = effective_config(json);
  EulerAncestralDiscreteSchedulerConfig c;
  c.read(config, /*with_zero_snr=*/true);
  c.prediction_type = get_or(config, "prediction_type", c.prediction_type);
  c.timestep_spacing = get_or(config, "timestep_spacing", c.timestep_spacing);
  c.steps_offset = get_or(config, "steps_offset", c.steps_offset);
  return c;
}

EulerAncestralDiscreteScheduler::EulerAncestralDiscreteScheduler(
    EulerAncestralDiscreteSchedulerConfig config)
    : config_(std::move(config)) {
  check_choice(name(), "prediction_type", config_.prediction_type, {"epsilon", "v_prediction"});
  check_choice(name(), "timestep_spacing", config_.timestep_spacing,
               {"linspace", "leading", "trailing"});
  betas_ = make_betas(config_, name());
  alphas_ = 1.0 - betas_;
  alphas_cumprod_ = torch::cumprod(alphas_, 0);
  if (config_.rescale_betas_zero_snr) {
    // Close to 0 without being 0, so that the first sigma is not infinite.
    alphas_cumprod_[-1] = std::pow(2.0, -24);
  }
  // The training schedule, until set_timesteps replaces it.
  auto sigmas = to_float_vector(((1 - alphas_cumprod_) / alphas_cumprod_).pow(0.5));
  std::reverse(sigmas.begin(), sigmas.end());
  sigmas.push_back(0.0f);
  sigmas_ = torch::tensor(sigmas, torch::kFloat32);
  timesteps_ =
      torch::from_blob(np::linspace(0, static_cast<double>(config_.num_train_timesteps - 1),
                                    config_.num_train_timesteps)
                           .data(),
                       {config_.num_train_timesteps}, torch::kFloat64)
          .flip(0);
}

double EulerAncestralDiscreteScheduler::init_noise_sigma() const {
  if (config_.timestep_spacing == "linspace" || config_.timestep_spacing == "trailing") {
    return sigmas_.max().item<double>();
  }
  return (sigmas_.max().pow(2) + 1).pow(0.5).item<double>();
}

void EulerAncestralDiscreteScheduler::set_timesteps(int64_t num_inference_steps) {
  if (num_inference_steps < 1) {
    throw std::invalid_argument(name() + ": num_inference_steps must be at least 1, got " +
                                std::to_string(num_inference_steps));
  }
  const int64_t n = num_inference_steps;
  const int64_t train = config_.num_train_timesteps;
  num_inference_steps_ = n;

  // Timesteps, descending, float32 as numpy's arrays.
  std::vector<float> timesteps;
  if (config_.timestep_spacing == "linspace") {
    for (double v : np::linspace(0, static_cast<double>(train - 1), n)) {
      timesteps.push_back(static_cast<float>(v));
    }
    std::reverse(timesteps.begin(), timesteps.end());
  } else if (config_.timestep_spacing == "leading") {
    const int64_t step_ratio = train / n;
    for (int64_t i = n - 1; i >= 0; --i) {
      timesteps.push_back(static_cast<float>(i * step_ratio) +
                          static_cast<float>(config_.steps_offset));
    }
  } else {  // trailing
    const double step_ratio = static_cast<double>(train) / static_cast<double>(n);
    for (double v : np::arange(static_cast<double>(train), 0, -step_ratio)) {
      timesteps.push_back(static_cast<float>(np::round(v)) - 1.0f);
    }
  }

  const auto train_sigmas = to_float_vector(((1 - alphas_cumprod_) / alphas_cumprod_).pow(0.5));
  const auto sigmas =
      np::interp(std::vector<double>(timesteps.begin(), timesteps.end()), train_sigmas);
  std::vector<float> sigmas32(sigmas.begin(), sigmas.end());
  sigmas32.push_back(0.0f);
  sigmas_ = torch::tensor(sigmas32, torch::kFloat32);
  timesteps_ = torch::tensor(timesteps, torch::kFloat32);
  step_index_.reset();
  begin_index_.reset();
}

void EulerAncestralDiscreteScheduler::init_step_index(const at::Tensor& timestep) {
  step_index_ = begin_index_ ? *begin_index_ : index_for_timestep(timesteps_, timestep, name());
}

at::Tensor EulerAncestralDiscreteScheduler::add_noise(const at::Tensor& original,
                                                      const at::Tensor& noise,
                                                      const at::Tensor& timestep) const {
  const auto sigmas = sigmas_.to(original.device(), original.scalar_type());
  const auto sigma =
      sigmas[add_noise_index(begin_index_, step_index_, timesteps_, timestep, name())];
  return original + noise * sigma;
}

at::Tensor EulerAncestralDiscreteScheduler::scale_model_input(const at::Tensor& sample,
                                                              const at::Tensor& timestep) {
  if (!step_index_) init_step_index(timestep);
  auto sigma = sigmas_[*step_index_];
  return sample / (sigma.pow(2) + 1).pow(0.5);
}

at::Tensor EulerAncestralDiscreteScheduler::step(const at::Tensor& model_output,
                                                 const at::Tensor& timestep,
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

  auto sigma = sigmas_[i];
  // Upcast to avoid precision issues when computing prev_sample.
  auto sample = sample_in.to(torch::kFloat32);

  // 1. the predicted original sample (x_0) from the sigma-scaled predicted noise
  at::Tensor pred_original_sample;
  if (config_.prediction_type == "epsilon") {
    pred_original_sample = sample - sigma * model_output;
  } else {  // v_prediction
    pred_original_sample =
        model_output * (-sigma / (sigma.pow(2) + 1).pow(0.5)) + (sample / (sigma.pow(2) + 1));
  }

  auto sigma_from = sigmas_[i];
  auto sigma_to = sigmas_[i + 1];
  auto sigma_up =
      (sigma_to.pow(2) * (sigma_from.pow(2) - sigma_to.pow(2)) / sigma_from.pow(2)).pow(0.5);
  auto sigma_down = (sigma_to.pow(2) - sigma_up.pow(2)).pow(0.5);

  // 2. the ODE derivative, an Euler step to sigma_down, then noise up to sigma_to
  auto derivative = (sample - pred_original_sample) / sigma;
  auto dt = sigma_down - sigma;
  auto prev_sample = sample + derivative * dt;

  auto noise = randn_tensor(model_output.sizes(), generator, model_output.device(),
                            model_output.scalar_type());
  prev_sample = prev_sample + noise * sigma_up;

  prev_sample = prev_sample.to(model_output.scalar_type());
  step_index_ = i + 1;
  return prev_sample;
}

}  // namespace ldcp::schedulers
