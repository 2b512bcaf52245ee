#include "model/schedulers/scheduling_dpmsolver_multistep.h"

#include <nlohmann/json.hpp>

#include "model/io/json_file.h"

namespace ldcp::schedulers {

using io::ConfigError;
using io::get_or;

namespace {

// The VP schedule's alpha_t and sigma_t of a k-diffusion sigma (in float32 0-d tensors).
std::pair<at::Tensor, at::Tensor> sigma_to_alpha_sigma_t(const at::Tensor& sigma) {
  auto alpha_t = (sigma.pow(2) + 1).pow(0.5).reciprocal();
  auto sigma_t = sigma * alpha_t;
  return {alpha_t, sigma_t};
}

}  // namespace

DPMSolverMultistepSchedulerConfig DPMSolverMultistepSchedulerConfig::from_json(
    const nlohmann::json& json) {
  const auto config = effective_config(json);
  DPMSolverMultistepSchedulerConfig c;
  c.read(config, /*with_zero_snr=*/true);
  c.solver_order = get_or(config, "solver_order", c.solver_order);
  c.prediction_type = get_or(config, "prediction_type", c.prediction_type);
  c.thresholding = get_or(config, "thresholding", c.thresholding);
  c.dynamic_thresholding_ratio =
      get_or(config, "dynamic_thresholding_ratio", c.dynamic_thresholding_ratio);
  c.sample_max_value = get_or(config, "sample_max_value", c.sample_max_value);
  c.algorithm_type = get_or(config, "algorithm_type", c.algorithm_type);
  c.solver_type = get_or(config, "solver_type", c.solver_type);
  c.lower_order_final = get_or(config, "lower_order_final", c.lower_order_final);
  c.euler_at_final = get_or(config, "euler_at_final", c.euler_at_final);
  c.use_karras_sigmas = get_or(config, "use_karras_sigmas", c.use_karras_sigmas);
  c.final_sigmas_type = get_or(config, "final_sigmas_type", c.final_sigmas_type);
  c.lambda_min_clipped = get_or(config, "lambda_min_clipped", c.lambda_min_clipped);
  c.timestep_spacing = get_or(config, "timestep_spacing", c.timestep_spacing);
  c.steps_offset = get_or(config, "steps_offset", c.steps_offset);
  if (config.contains("sigma_min") && !config["sigma_min"].is_null()) {
    c.sigma_min = get_or(config, "sigma_min", 0.0);
  }
  if (config.contains("sigma_max") && !config["sigma_max"].is_null()) {
    c.sigma_max = get_or(config, "sigma_max", 0.0);
  }
  for (const char* key : {"use_exponential_sigmas", "use_beta_sigmas", "use_lu_lambdas",
                          "use_flow_sigmas", "use_dynamic_shifting"}) {
    if (get_or(config, key, false)) {
      throw ConfigError(std::string("DPMSolverMultistepScheduler: scheduler config key \"") + key +
                        "\" = true is not supported");
    }
  }
  if (!get_or(config, "variance_type", std::string()).empty()) {
    throw ConfigError(
        "DPMSolverMultistepScheduler: scheduler config key \"variance_type\" (learned variance) "
        "is not supported");
  }
  return c;
}

DPMSolverMultistepScheduler::DPMSolverMultistepScheduler(DPMSolverMultistepSchedulerConfig config)
    : config_(std::move(config)) {
  // diffusers' aliases of other solvers' names.
  if (config_.algorithm_type == "deis") config_.algorithm_type = "dpmsolver++";
  if (config_.solver_type == "logrho" || config_.solver_type == "bh1" ||
      config_.solver_type == "bh2") {
    config_.solver_type = "midpoint";
  }
  check_choice(name(), "algorithm_type", config_.algorithm_type,
               {"dpmsolver", "dpmsolver++", "sde-dpmsolver", "sde-dpmsolver++"});
  check_choice(name(), "solver_type", config_.solver_type, {"midpoint", "heun"});
  check_choice(name(), "prediction_type", config_.prediction_type,
               {"epsilon", "sample", "v_prediction"});
  check_choice(name(), "timestep_spacing", config_.timestep_spacing,
               {"linspace", "leading", "trailing"});
  check_choice(name(), "final_sigmas_type", config_.final_sigmas_type, {"zero", "sigma_min"});
  if (config_.solver_order < 1 || config_.solver_order > 3) {
    throw ConfigError(name() + ": scheduler config key \"solver_order\" must be 1, 2 or 3, got " +
                      std::to_string(config_.solver_order));
  }
  if (config_.solver_order == 3 && config_.algorithm_type == "sde-dpmsolver") {
    throw ConfigError(name() + ": solver_order 3 is not available for sde-dpmsolver");
  }
  const bool plus_plus =
      config_.algorithm_type == "dpmsolver++" || config_.algorithm_type == "sde-dpmsolver++";
  if (!plus_plus && config_.final_sigmas_type == "zero") {
    throw ConfigError(name() + ": final_sigmas_type zero is not supported for algorithm_type " +
                      config_.algorithm_type + "; choose sigma_min");
  }

  betas_ = make_betas(config_, name());
  alphas_ = 1.0 - betas_;
  alphas_cumprod_ = torch::cumprod(alphas_, 0);
  if (config_.rescale_betas_zero_snr) {
    // Close to 0 without being 0, so that the first sigma is not infinite.
    alphas_cumprod_[-1] = std::pow(2.0, -24);
  }
  // Only VP-type noise schedules.
  alpha_t_ = torch::sqrt(alphas_cumprod_);
  sigma_t_ = torch::sqrt(1 - alphas_cumprod_);
  lambda_t_ = torch::log(alpha_t_) - torch::log(sigma_t_);
  sigmas_ = ((1 - alphas_cumprod_) / alphas_cumprod_).pow(0.5);
  model_outputs_.assign(static_cast<size_t>(config_.solver_order), at::Tensor());
}

void DPMSolverMultistepScheduler::set_timesteps(int64_t num_inference_steps) {
  if (num_inference_steps < 1) {
    throw std::invalid_argument(name() + ": num_inference_steps must be at least 1, got " +
                                std::to_string(num_inference_steps));
  }
  const int64_t n = num_inference_steps;
  const int64_t train = config_.num_train_timesteps;

  // Clipping the minimum of all lambda(t), for the stability of cosine schedules.
  const auto clipped_idx =
      torch::searchsorted(torch::flip(lambda_t_, {0}), config_.lambda_min_clipped);
  const int64_t last_timestep = train - clipped_idx.item<int64_t>();

  std::vector<double> timesteps;  // descending; int64 values, or fractional from Karras
  if (config_.timestep_spacing == "linspace") {
    auto v = np::linspace(0, static_cast<double>(last_timestep - 1), n + 1);
    for (int64_t i = n; i >= 1; --i) {
      timesteps.push_back(
          static_cast<double>(static_cast<int64_t>(np::round(v[static_cast<size_t>(i)]))));
    }
  } else if (config_.timestep_spacing == "leading") {
    const int64_t step_ratio = last_timestep / (n + 1);
    for (int64_t i = n; i >= 1; --i) {
      timesteps.push_back(static_cast<double>(i * step_ratio + config_.steps_offset));
    }
  } else {  // trailing
    const double step_ratio = static_cast<double>(train) / static_cast<double>(n);
    for (double v : np::arange(static_cast<double>(last_timestep), 0, -step_ratio)) {
      timesteps.push_back(static_cast<double>(static_cast<int64_t>(np::round(v)) - 1));
    }
  }

  const auto train_sigmas = to_float_vector(((1 - alphas_cumprod_) / alphas_cumprod_).pow(0.5));
  std::vector<double> sigmas;
  if (config_.use_karras_sigmas) {
    const auto log_sigmas = log_float(train_sigmas);
    // in_sigmas = flip(sigmas): its last is sigma(0), its first sigma(T).
    sigmas = convert_to_karras(config_.sigma_min.value_or(train_sigmas.front()),
                               config_.sigma_max.value_or(train_sigmas.back()), n);
    timesteps.clear();
    for (double s : sigmas) {
      double t = sigma_to_t(s, log_sigmas);
      if (config_.beta_schedule != "squaredcos_cap_v2") t = np::round(t);
      timesteps.push_back(t);
    }
  } else {
    sigmas = np::interp(timesteps, train_sigmas);
  }

  double sigma_last = 0;
  if (config_.final_sigmas_type == "sigma_min") {
    sigma_last = ((1 - alphas_cumprod_[0]) / alphas_cumprod_[0]).pow(0.5).item<double>();
  }
  std::vector<float> sigmas32(sigmas.begin(), sigmas.end());
  sigmas32.push_back(static_cast<float>(sigma_last));
  sigmas_ = torch::tensor(sigmas32, torch::kFloat32);
  // float64 -> int64 truncates, as torch's .to(int64).
  std::vector<int64_t> ts;
  for (double t : timesteps) ts.push_back(static_cast<int64_t>(t));
  timesteps_ = torch::tensor(ts, torch::kInt64);
  num_inference_steps_ = static_cast<int64_t>(ts.size());

  model_outputs_.assign(static_cast<size_t>(config_.solver_order), at::Tensor());
  lower_order_nums_ = 0;
  step_index_.reset();
  begin_index_.reset();
}

at::Tensor DPMSolverMultistepScheduler::add_noise(const at::Tensor& original,
                                                  const at::Tensor& noise,
                                                  const at::Tensor& timestep) const {
  const auto sigmas = sigmas_.to(original.device(), original.scalar_type());
  const int64_t i = !begin_index_ ? index_for_timestep(timestep)
                    : step_index_ ? *step_index_
                                  : *begin_index_;
  const auto [alpha_t, sigma_t] = sigma_to_alpha_sigma_t(sigmas[i]);
  return alpha_t * original + sigma_t * noise;
}

int64_t DPMSolverMultistepScheduler::index_for_timestep(const at::Tensor& timestep) const {
  auto candidates = (timesteps_ == timestep.to(timesteps_.device())).nonzero();
  const int64_t count = candidates.size(0);
  // Not in the schedule: the last step. More than once: the second (see EulerDiscrete).
  if (count == 0) return timesteps_.size(0) - 1;
  return candidates[count > 1 ? 1 : 0].item<int64_t>();
}

at::Tensor DPMSolverMultistepScheduler::convert_model_output(const at::Tensor& model_output,
                                                             const at::Tensor& sample) const {
  const auto& type = config_.prediction_type;
  const auto sigma = sigmas_[*step_index_];
  const auto [alpha_t, sigma_t] = sigma_to_alpha_sigma_t(sigma);
  if (config_.algorithm_type == "dpmsolver++" || config_.algorithm_type == "sde-dpmsolver++") {
    // DPM-Solver++ integrates the data prediction x_0.
    at::Tensor x0_pred;
    if (type == "epsilon") {
      x0_pred = (sample - sigma_t * model_output) / alpha_t;
    } else if (type == "sample") {
      x0_pred = model_output;
    } else {  // v_prediction
      x0_pred = alpha_t * sample - sigma_t * model_output;
    }
    if (config_.thresholding) {
      x0_pred =
          threshold_sample(x0_pred, config_.dynamic_thresholding_ratio, config_.sample_max_value);
    }
    return x0_pred;
  }
  // DPM-Solver integrates the noise prediction.
  at::Tensor epsilon;
  if (type == "epsilon") {
    epsilon = model_output;
  } else if (type == "sample") {
    epsilon = (sample - alpha_t * model_output) / sigma_t;
  } else {  // v_prediction
    epsilon = alpha_t * model_output + sigma_t * sample;
  }
  if (config_.thresholding) {
    auto x0_pred = (sample - sigma_t * epsilon) / alpha_t;
    x0_pred =
        threshold_sample(x0_pred, config_.dynamic_thresholding_ratio, config_.sample_max_value);
    epsilon = (sample - alpha_t * x0_pred) / sigma_t;
  }
  return epsilon;
}

at::Tensor DPMSolverMultistepScheduler::first_order_update(const at::Tensor& model_output,
                                                           const at::Tensor& sample,
                                                           const at::Tensor& noise) const {
  const int64_t i = *step_index_;
  const auto [alpha_t, sigma_t] = sigma_to_alpha_sigma_t(sigmas_[i + 1]);
  const auto [alpha_s, sigma_s] = sigma_to_alpha_sigma_t(sigmas_[i]);
  auto lambda_t = torch::log(alpha_t) - torch::log(sigma_t);
  auto lambda_s = torch::log(alpha_s) - torch::log(sigma_s);
  auto h = lambda_t - lambda_s;

  const auto& algorithm = config_.algorithm_type;
  if (algorithm == "dpmsolver++") {
    return (sigma_t / sigma_s) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * model_output;
  }
  if (algorithm == "dpmsolver") {
    return (alpha_t / alpha_s) * sample - (sigma_t * (torch::exp(h) - 1.0)) * model_output;
  }
  if (algorithm == "sde-dpmsolver++") {
    return (sigma_t / sigma_s * torch::exp(-h)) * sample +
           (alpha_t * (1 - torch::exp(h * -2.0))) * model_output +
           sigma_t * torch::sqrt(1.0 - torch::exp(h * -2)) * noise;
  }
  // sde-dpmsolver
  return (alpha_t / alpha_s) * sample - 2.0 * (sigma_t * (torch::exp(h) - 1.0)) * model_output +
         sigma_t * torch::sqrt(torch::exp(h * 2) - 1.0) * noise;
}

at::Tensor DPMSolverMultistepScheduler::second_order_update(const at::Tensor& sample,
                                                            const at::Tensor& noise) const {
  const int64_t i = *step_index_;
  const auto [alpha_t, sigma_t] = sigma_to_alpha_sigma_t(sigmas_[i + 1]);
  const auto [alpha_s0, sigma_s0] = sigma_to_alpha_sigma_t(sigmas_[i]);
  const auto [alpha_s1, sigma_s1] = sigma_to_alpha_sigma_t(sigmas_[i - 1]);
  auto lambda_t = torch::log(alpha_t) - torch::log(sigma_t);
  auto lambda_s0 = torch::log(alpha_s0) - torch::log(sigma_s0);
  auto lambda_s1 = torch::log(alpha_s1) - torch::log(sigma_s1);

  const auto& m0 = model_outputs_.end()[-1];
  const auto& m1 = model_outputs_.end()[-2];
  auto h = lambda_t - lambda_s0;
  auto h_0 = lambda_s0 - lambda_s1;
  auto r0 = h_0 / h;
  const auto& D0 = m0;
  auto D1 = (1.0 / r0) * (m0 - m1);

  const auto& algorithm = config_.algorithm_type;
  const bool midpoint = config_.solver_type == "midpoint";
  if (algorithm == "dpmsolver++") {
    if (midpoint) {
      return (sigma_t / sigma_s0) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * D0 -
             0.5 * (alpha_t * (torch::exp(-h) - 1.0)) * D1;
    }
    return (sigma_t / sigma_s0) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * D0 +
           (alpha_t * ((torch::exp(-h) - 1.0) / h + 1.0)) * D1;
  }
  if (algorithm == "dpmsolver") {
    if (midpoint) {
      return (alpha_t / alpha_s0) * sample - (sigma_t * (torch::exp(h) - 1.0)) * D0 -
             0.5 * (sigma_t * (torch::exp(h) - 1.0)) * D1;
    }
    return (alpha_t / alpha_s0) * sample - (sigma_t * (torch::exp(h) - 1.0)) * D0 -
           (sigma_t * ((torch::exp(h) - 1.0) / h - 1.0)) * D1;
  }
  if (algorithm == "sde-dpmsolver++") {
    if (midpoint) {
      return (sigma_t / sigma_s0 * torch::exp(-h)) * sample +
             (alpha_t * (1 - torch::exp(h * -2.0))) * D0 +
             0.5 * (alpha_t * (1 - torch::exp(h * -2.0))) * D1 +
             sigma_t * torch::sqrt(1.0 - torch::exp(h * -2)) * noise;
    }
    return (sigma_t / sigma_s0 * torch::exp(-h)) * sample +
           (alpha_t * (1 - torch::exp(h * -2.0))) * D0 +
           (alpha_t * ((1.0 - torch::exp(h * -2.0)) / (h * -2.0) + 1.0)) * D1 +
           sigma_t * torch::sqrt(1.0 - torch::exp(h * -2)) * noise;
  }
  // sde-dpmsolver
  if (midpoint) {
    return (alpha_t / alpha_s0) * sample - 2.0 * (sigma_t * (torch::exp(h) - 1.0)) * D0 -
           (sigma_t * (torch::exp(h) - 1.0)) * D1 +
           sigma_t * torch::sqrt(torch::exp(h * 2) - 1.0) * noise;
  }
  return (alpha_t / alpha_s0) * sample - 2.0 * (sigma_t * (torch::exp(h) - 1.0)) * D0 -
         2.0 * (sigma_t * ((torch::exp(h) - 1.0) / h - 1.0)) * D1 +
         sigma_t * torch::sqrt(torch::exp(h * 2) - 1.0) * noise;
}

at::Tensor DPMSolverMultistepScheduler::third_order_update(const at::Tensor& sample,
                                                           const at::Tensor& noise) const {
  const int64_t i = *step_index_;
  const auto [alpha_t, sigma_t] = sigma_to_alpha_sigma_t(sigmas_[i + 1]);
  const auto [alpha_s0, sigma_s0] = sigma_to_alpha_sigma_t(sigmas_[i]);
  const auto [alpha_s1, sigma_s1] = sigma_to_alpha_sigma_t(sigmas_[i - 1]);
  const auto [alpha_s2, sigma_s2] = sigma_to_alpha_sigma_t(sigmas_[i - 2]);
  auto lambda_t = torch::log(alpha_t) - torch::log(sigma_t);
  auto lambda_s0 = torch::log(alpha_s0) - torch::log(sigma_s0);
  auto lambda_s1 = torch::log(alpha_s1) - torch::log(sigma_s1);
  auto lambda_s2 = torch::log(alpha_s2) - torch::log(sigma_s2);

  const auto& m0 = model_outputs_.end()[-1];
  const auto& m1 = model_outputs_.end()[-2];
  const auto& m2 = model_outputs_.end()[-3];
  auto h = lambda_t - lambda_s0;
  auto h_0 = lambda_s0 - lambda_s1;
  auto h_1 = lambda_s1 - lambda_s2;
  auto r0 = h_0 / h;
  auto r1 = h_1 / h;
  const auto& D0 = m0;
  auto D1_0 = (1.0 / r0) * (m0 - m1);
  auto D1_1 = (1.0 / r1) * (m1 - m2);
  auto D1 = D1_0 + (r0 / (r0 + r1)) * (D1_0 - D1_1);
  auto D2 = (1.0 / (r0 + r1)) * (D1_0 - D1_1);

  const auto& algorithm = config_.algorithm_type;
  if (algorithm == "dpmsolver++") {
    return (sigma_t / sigma_s0) * sample - (alpha_t * (torch::exp(-h) - 1.0)) * D0 +
           (alpha_t * ((torch::exp(-h) - 1.0) / h + 1.0)) * D1 -
           (alpha_t * ((torch::exp(-h) - 1.0 + h) / h.pow(2) - 0.5)) * D2;
  }
  if (algorithm == "dpmsolver") {
    return (alpha_t / alpha_s0) * sample - (sigma_t * (torch::exp(h) - 1.0)) * D0 -
           (sigma_t * ((torch::exp(h) - 1.0) / h - 1.0)) * D1 -
           (sigma_t * ((torch::exp(h) - 1.0 - h) / h.pow(2) - 0.5)) * D2;
  }
  // sde-dpmsolver++ (the constructor rejects order 3 for sde-dpmsolver)
  return (sigma_t / sigma_s0 * torch::exp(-h)) * sample +
         (alpha_t * (1.0 - torch::exp(h * -2.0))) * D0 +
         (alpha_t * ((1.0 - torch::exp(h * -2.0)) / (h * -2.0) + 1.0)) * D1 +
         (alpha_t * ((1.0 - torch::exp(h * -2.0) - h * 2.0) / (h * 2.0).pow(2) - 0.5)) * D2 +
         sigma_t * torch::sqrt(1.0 - torch::exp(h * -2)) * noise;
}

at::Tensor DPMSolverMultistepScheduler::step(const at::Tensor& model_output_in,
                                             const at::Tensor& timestep,
                                             const at::Tensor& sample_in,
                                             std::optional<at::Generator> generator) {
  if (num_inference_steps_ == 0) {
    throw std::logic_error(name() + ": call set_timesteps before step");
  }
  if (!step_index_) step_index_ = begin_index_ ? *begin_index_ : index_for_timestep(timestep);
  const int64_t i = *step_index_;
  const auto count = timesteps_.size(0);

  // Lower orders at the end improve the stability of short schedules.
  const bool lower_order_final =
      i == count - 1 && (config_.euler_at_final || (config_.lower_order_final && count < 15) ||
                         config_.final_sigmas_type == "zero");
  const bool lower_order_second = i == count - 2 && config_.lower_order_final && count < 15;

  auto model_output = convert_model_output(model_output_in, sample_in);
  for (size_t k = 0; k + 1 < model_outputs_.size(); ++k) model_outputs_[k] = model_outputs_[k + 1];
  model_outputs_.back() = model_output;

  // Upcast to avoid precision issues when computing prev_sample.
  auto sample = sample_in.to(torch::kFloat32);
  at::Tensor noise;
  if (config_.algorithm_type == "sde-dpmsolver" || config_.algorithm_type == "sde-dpmsolver++") {
    noise = randn_tensor(model_output.sizes(), generator, model_output.device(), torch::kFloat32);
  }

  at::Tensor prev_sample;
  if (config_.solver_order == 1 || lower_order_nums_ < 1 || lower_order_final) {
    prev_sample = first_order_update(model_output, sample, noise);
  } else if (config_.solver_order == 2 || lower_order_nums_ < 2 || lower_order_second) {
    prev_sample = second_order_update(sample, noise);
  } else {
    prev_sample = third_order_update(sample, noise);
  }
  if (lower_order_nums_ < config_.solver_order) lower_order_nums_ += 1;

  prev_sample = prev_sample.to(model_output.scalar_type());
  step_index_ = i + 1;
  return prev_sample;
}

}  // namespace ldcp::schedulers
