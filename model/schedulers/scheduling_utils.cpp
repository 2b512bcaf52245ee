#include "model/schedulers/scheduling_utils.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include <nlohmann/json.hpp>

#include "model/io/json_file.h"

namespace ldcp::schedulers {

using io::ConfigError;
using io::get_or;

nlohmann::json effective_config(const nlohmann::json& config) {
  if (!config.is_object()) throw ConfigError("scheduler config: expected a JSON object");
  nlohmann::json out = config;
  auto it = config.find("_use_default_values");
  if (it != config.end() && it->is_array()) {
    for (const auto& key : *it) {
      if (key.is_string()) out.erase(key.get<std::string>());
    }
  }
  out.erase("_use_default_values");
  return out;
}

void BetaScheduleConfig::read(const nlohmann::json& config, bool with_zero_snr) {
  num_train_timesteps = get_or(config, "num_train_timesteps", num_train_timesteps);
  beta_start = get_or(config, "beta_start", beta_start);
  beta_end = get_or(config, "beta_end", beta_end);
  beta_schedule = get_or(config, "beta_schedule", beta_schedule);
  auto it = config.find("trained_betas");
  if (it != config.end() && !it->is_null()) {
    trained_betas = get_or(config, "trained_betas", std::vector<double>{});
  }
  if (with_zero_snr) {
    rescale_betas_zero_snr = get_or(config, "rescale_betas_zero_snr", rescale_betas_zero_snr);
  }
  if (num_train_timesteps < 2) {
    throw ConfigError("scheduler config key \"num_train_timesteps\" must be at least 2, got " +
                      std::to_string(num_train_timesteps));
  }
}

at::Tensor make_betas(const BetaScheduleConfig& config, const std::string& class_name) {
  at::Tensor betas;
  const auto n = config.num_train_timesteps;
  if (config.trained_betas) {
    betas = torch::tensor(*config.trained_betas, torch::kFloat64).to(torch::kFloat32);
    if (betas.size(0) != n) {
      throw ConfigError("scheduler config key \"trained_betas\" has " +
                        std::to_string(betas.size(0)) + " values, num_train_timesteps is " +
                        std::to_string(n));
    }
  } else if (config.beta_schedule == "linear") {
    betas = torch::linspace(config.beta_start, config.beta_end, n, torch::kFloat32);
  } else if (config.beta_schedule == "scaled_linear") {
    // Latent diffusion's schedule: linear in sqrt(beta).
    betas = torch::linspace(std::pow(config.beta_start, 0.5), std::pow(config.beta_end, 0.5), n,
                            torch::kFloat32)
                .pow(2);
  } else if (config.beta_schedule == "squaredcos_cap_v2") {
    betas = betas_for_alpha_bar(n);
  } else {
    throw ConfigError("scheduler config key \"beta_schedule\": " + config.beta_schedule +
                      " is not implemented for " + class_name +
                      " (known: linear, scaled_linear, squaredcos_cap_v2)");
  }
  if (config.rescale_betas_zero_snr) betas = rescale_zero_terminal_snr(betas);
  return betas;
}

at::Tensor betas_for_alpha_bar(int64_t num_diffusion_timesteps, double max_beta) {
  auto alpha_bar_fn = [](double t) {
    return std::pow(std::cos((t + 0.008) / 1.008 * std::numbers::pi / 2), 2);
  };
  std::vector<double> betas;
  for (int64_t i = 0; i < num_diffusion_timesteps; ++i) {
    const double t1 = static_cast<double>(i) / static_cast<double>(num_diffusion_timesteps);
    const double t2 = static_cast<double>(i + 1) / static_cast<double>(num_diffusion_timesteps);
    betas.push_back(std::min(1 - alpha_bar_fn(t2) / alpha_bar_fn(t1), max_beta));
  }
  return torch::tensor(betas, torch::kFloat64).to(torch::kFloat32);
}

at::Tensor rescale_zero_terminal_snr(const at::Tensor& betas) {
  auto alphas = 1.0 - betas;
  auto alphas_cumprod = torch::cumprod(alphas, 0);
  auto alphas_bar_sqrt = alphas_cumprod.sqrt();
  auto alphas_bar_sqrt_0 = alphas_bar_sqrt[0].clone();
  auto alphas_bar_sqrt_T = alphas_bar_sqrt[-1].clone();
  // Shift so the last timestep is zero, then scale so the first is back to its old value.
  alphas_bar_sqrt -= alphas_bar_sqrt_T;
  alphas_bar_sqrt *= alphas_bar_sqrt_0 / (alphas_bar_sqrt_0 - alphas_bar_sqrt_T);
  auto alphas_bar = alphas_bar_sqrt.pow(2);
  alphas = alphas_bar.slice(0, 1) / alphas_bar.slice(0, 0, -1);
  alphas = torch::cat({alphas_bar.slice(0, 0, 1), alphas});
  return 1 - alphas;
}

at::Tensor threshold_sample(const at::Tensor& input, double dynamic_thresholding_ratio,
                            double sample_max_value) {
  const auto dtype = input.scalar_type();
  const auto shape = input.sizes().vec();
  auto sample = input;
  // Upcast for the quantile; clamp has no CPU half kernel.
  if (dtype != torch::kFloat32 && dtype != torch::kFloat64) sample = sample.to(torch::kFloat32);
  sample = sample.reshape({shape[0], sample.numel() / shape[0]});
  auto abs_sample = sample.abs();
  auto s = torch::quantile(abs_sample, dynamic_thresholding_ratio, 1);
  s = torch::clamp(s, 1, sample_max_value);
  s = s.unsqueeze(1);
  sample = torch::clamp(sample, -s, s) / s;
  return sample.reshape(shape).to(dtype);
}

at::Tensor randn_tensor(at::IntArrayRef shape, std::optional<at::Generator> generator,
                        c10::Device device, c10::ScalarType dtype) {
  c10::Device rand_device = device;
  if (generator && generator->device().type() != device.type()) {
    if (generator->device().type() != c10::DeviceType::CPU) {
      throw std::invalid_argument("Cannot generate a " + device.str() +
                                  " tensor from a generator of type " + generator->device().str());
    }
    rand_device = c10::Device(c10::DeviceType::CPU);
  }
  return torch::randn(shape, generator, torch::TensorOptions().dtype(dtype).device(rand_device))
      .to(device);
}

int64_t index_for_timestep(const at::Tensor& schedule, const at::Tensor& timestep,
                           const std::string& class_name) {
  auto indices = (schedule == timestep.to(schedule.device())).nonzero();
  // The first step takes the second match, so that a schedule entered midway (img2img) does not
  // skip a sigma.
  const int64_t count = indices.size(0);
  if (count == 0) {
    throw std::invalid_argument(class_name + ": timestep " +
                                std::to_string(timestep.item<double>()) +
                                " is not one of the scheduler's timesteps");
  }
  return indices[count > 1 ? 1 : 0].item<int64_t>();
}

at::Tensor ddpm_add_noise(const at::Tensor& alphas_cumprod, const at::Tensor& original,
                          const at::Tensor& noise, const at::Tensor& timestep) {
  const auto alpha_prod = alphas_cumprod.to(original.device(), original.scalar_type())
                              .index_select(0, timestep.reshape({1}).to(original.device()));
  const auto sqrt_alpha_prod = alpha_prod.pow(0.5).reshape({1, 1, 1, 1});
  const auto sqrt_one_minus_alpha_prod = (1 - alpha_prod).pow(0.5).reshape({1, 1, 1, 1});
  return sqrt_alpha_prod * original + sqrt_one_minus_alpha_prod * noise;
}

int64_t add_noise_index(const std::optional<int64_t>& begin_index,
                        const std::optional<int64_t>& step_index, const at::Tensor& schedule,
                        const at::Tensor& timestep, const std::string& class_name) {
  if (!begin_index) return index_for_timestep(schedule, timestep, class_name);
  return step_index ? *step_index : *begin_index;
}

std::vector<float> to_float_vector(const at::Tensor& tensor) {
  auto t = tensor.to(torch::kCPU, torch::kFloat32).contiguous();
  return {t.data_ptr<float>(), t.data_ptr<float>() + t.numel()};
}

void check_choice(const std::string& class_name, const std::string& key, const std::string& value,
                  const std::vector<std::string>& allowed) {
  if (std::find(allowed.begin(), allowed.end(), value) != allowed.end()) return;
  std::string known;
  for (const auto& a : allowed) known += (known.empty() ? "" : ", ") + a;
  throw ConfigError(class_name + ": scheduler config key \"" + key + "\" = \"" + value +
                    "\" is not supported (supported: " + known + ")");
}

namespace np {

std::vector<double> linspace(double start, double stop, int64_t num) {
  std::vector<double> y(static_cast<size_t>(std::max<int64_t>(num, 0)));
  const int64_t div = num - 1;
  const double delta = stop - start;
  for (int64_t i = 0; i < num; ++i) {
    double v = static_cast<double>(i);
    if (div > 0) {
      const double step = delta / static_cast<double>(div);
      v = step == 0 ? v / static_cast<double>(div) * delta : v * step;
    } else {
      v = v * delta;
    }
    y[static_cast<size_t>(i)] = v + start;
  }
  if (num > 1) y.back() = stop;
  return y;
}

std::vector<double> arange(double start, double stop, double step) {
  const double length = std::ceil((stop - start) / step);
  std::vector<double> y;
  if (!(length > 0)) return y;
  const auto n = static_cast<size_t>(length);
  y.resize(n);
  y[0] = start;
  if (n > 1) y[1] = start + step;
  const double delta = (start + step) - start;
  for (size_t i = 2; i < n; ++i) y[i] = start + static_cast<double>(i) * delta;
  return y;
}

double round(double value) { return std::nearbyint(value); }

std::vector<double> interp(const std::vector<double>& x, const std::vector<float>& fp) {
  // xp = 0, 1, ..., n-1: numpy's binary search lands on j = floor(x).
  const auto n = static_cast<int64_t>(fp.size());
  std::vector<double> out;
  out.reserve(x.size());
  for (double xv : x) {
    if (std::isnan(xv)) {
      out.push_back(xv);
      continue;
    }
    if (xv < 0) {
      out.push_back(fp.front());
      continue;
    }
    if (xv >= static_cast<double>(n - 1)) {
      out.push_back(fp.back());
      continue;
    }
    const auto j = static_cast<int64_t>(std::floor(xv));
    const double xj = static_cast<double>(j);
    const double yj = fp[static_cast<size_t>(j)];
    const double yj1 = fp[static_cast<size_t>(j + 1)];
    if (xv == xj) {
      out.push_back(yj);
      continue;
    }
    const double slope = (yj1 - yj) / ((xj + 1) - xj);
    double v = slope * (xv - xj) + yj;
    if (std::isnan(v)) {
      v = slope * (xv - (xj + 1)) + yj1;
      if (std::isnan(v) && yj == yj1) v = yj;
    }
    out.push_back(v);
  }
  return out;
}

}  // namespace np

double sigma_to_t(double sigma, const std::vector<float>& log_sigmas) {
  const double log_sigma = std::log(std::max(sigma, 1e-10));
  const auto n = static_cast<int64_t>(log_sigmas.size());
  // cumsum(dists >= 0).argmax(): the last index whose log-sigma is <= log_sigma (0 if none).
  int64_t low_idx = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (log_sigma - static_cast<double>(log_sigmas[static_cast<size_t>(i)]) >= 0) low_idx = i;
  }
  low_idx = std::min(low_idx, n - 2);
  const int64_t high_idx = low_idx + 1;
  const float low = log_sigmas[static_cast<size_t>(low_idx)];
  const float high = log_sigmas[static_cast<size_t>(high_idx)];
  // low - high stays float32 in numpy (float32 - float32); the rest is float64.
  const float low_minus_high = low - high;
  double w = (static_cast<double>(low) - log_sigma) / static_cast<double>(low_minus_high);
  w = std::clamp(w, 0.0, 1.0);
  return (1 - w) * static_cast<double>(low_idx) + w * static_cast<double>(high_idx);
}

std::vector<float> log_float(const std::vector<float>& values) {
  std::vector<float> out;
  out.reserve(values.size());
  for (float v : values) out.push_back(static_cast<float>(std::log(static_cast<double>(v))));
  return out;
}

std::vector<double> convert_to_karras(double sigma_min, double sigma_max,
                                      int64_t num_inference_steps) {
  const double rho = 7.0;  // the paper's value
  const auto ramp = np::linspace(0, 1, num_inference_steps);
  const double min_inv_rho = std::pow(sigma_min, 1 / rho);
  const double max_inv_rho = std::pow(sigma_max, 1 / rho);
  std::vector<double> sigmas;
  for (double r : ramp)
    sigmas.push_back(std::pow(max_inv_rho + r * (min_inv_rho - max_inv_rho), rho));
  return sigmas;
}

}  // namespace ldcp::schedulers
