#pragma once
// What the diffusers scheduler classes share: their config handling (`from_config`), the beta
// schedules, randn_tensor, and the few numpy routines their set_timesteps use, reproduced with
// numpy's arithmetic so that timesteps and sigmas come out as numpy computes them.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>
#include <nlohmann/json_fwd.hpp>

namespace ldcp::schedulers {

// The config as diffusers' `extract_init_dict` sees it: keys listed in "_use_default_values"
// dropped (they hold defaults of the class that wrote the file, not choices). Each class then
// reads only the keys it knows and keeps its own defaults for the others.
nlohmann::json effective_config(const nlohmann::json& config);

// The beta-schedule arguments every scheduler class takes, with diffusers' defaults.
struct BetaScheduleConfig {
  int64_t num_train_timesteps = 1000;
  double beta_start = 0.0001;
  double beta_end = 0.02;
  std::string beta_schedule = "linear";              // linear, scaled_linear, squaredcos_cap_v2
  std::optional<std::vector<double>> trained_betas;  // overrides beta_schedule when set
  bool rescale_betas_zero_snr = false;               // not a PNDM argument; PNDM leaves it false

  // Reads the keys above from an effective_config(); `with_zero_snr`: whether the class takes
  // rescale_betas_zero_snr.
  void read(const nlohmann::json& config, bool with_zero_snr);
};

// `self.betas` (float32) as the classes' __init__ computes it; throws io::ConfigError for an
// unknown beta_schedule.
at::Tensor make_betas(const BetaScheduleConfig& config, const std::string& class_name);
// diffusers' betas_for_alpha_bar (cosine), float32.
at::Tensor betas_for_alpha_bar(int64_t num_diffusion_timesteps, double max_beta = 0.999);
// diffusers' rescale_zero_terminal_snr.
at::Tensor rescale_zero_terminal_snr(const at::Tensor& betas);

// DDPMScheduler._threshold_sample (dynamic thresholding).
at::Tensor threshold_sample(const at::Tensor& sample, double dynamic_thresholding_ratio,
                            double sample_max_value);

// diffusers.utils.torch_utils.randn_tensor with one generator (or none): a CPU generator
// draws on the CPU and the result moves to `device`.
at::Tensor randn_tensor(at::IntArrayRef shape, std::optional<at::Generator> generator,
                        c10::Device device, c10::ScalarType dtype);

// EulerDiscreteScheduler.index_for_timestep: the position of `timestep` in `schedule` (the
// second one when it occurs more than once). Throws std::invalid_argument when it is absent.
int64_t index_for_timestep(const at::Tensor& schedule, const at::Tensor& timestep,
                           const std::string& class_name);

// PNDMScheduler/DDIMScheduler.add_noise at one timestep: sqrt(alphas_cumprod[t]) * original +
// sqrt(1 - alphas_cumprod[t]) * noise, alphas_cumprod in the samples' dtype as diffusers casts it.
at::Tensor ddpm_add_noise(const at::Tensor& alphas_cumprod, const at::Tensor& original,
                          const at::Tensor& noise, const at::Tensor& timestep);

// The sigma index the sigma samplers' add_noise takes (EulerDiscreteScheduler.add_noise):
// without a begin index, `timestep`'s position in `schedule`; after a step, the step index;
// before the first step, the begin index.
int64_t add_noise_index(const std::optional<int64_t>& begin_index,
                        const std::optional<int64_t>& step_index, const at::Tensor& schedule,
                        const at::Tensor& timestep, const std::string& class_name);

// A 1-D float32 tensor's values (numpy's view of `np.array(tensor)`).
std::vector<float> to_float_vector(const at::Tensor& tensor);

// Throws io::ConfigError naming `key` unless `value` is one of `allowed`.
void check_choice(const std::string& class_name, const std::string& key, const std::string& value,
                  const std::vector<std::string>& allowed);

namespace np {

// numpy.linspace(start, stop, num) in float64: i * step + start, the last value exactly stop.
std::vector<double> linspace(double start, double stop, int64_t num);
// numpy.arange(start, stop, step) for a float step: ceil((stop - start) / step) values
// start + i * delta, delta = (start + step) - start, as numpy's fill.
std::vector<double> arange(double start, double stop, double step);
// numpy.round / rint: halves to even.
double round(double value);
// numpy.interp(x, arange(len(fp)), fp) in float64 (fp converted from float32 exactly).
std::vector<double> interp(const std::vector<double>& x, const std::vector<float>& fp);

}  // namespace np

// EulerDiscreteScheduler._sigma_to_t: the fractional timestep of `sigma` on the log-sigma table
// (float32, as numpy's float32 `np.log` of the sigmas).
double sigma_to_t(double sigma, const std::vector<float>& log_sigmas);
// np.log of a float32 array. numpy's SIMD float32 log is not always correctly rounded; this is,
// so a value may differ from numpy's by one float32 ulp (timesteps from sigma_to_t move by
// < 1e-4, which the integer schedules round away).
std::vector<float> log_float(const std::vector<float>& values);
// EulerDiscreteScheduler._convert_to_karras (rho = 7) in float64.
std::vector<double> convert_to_karras(double sigma_min, double sigma_max,
                                      int64_t num_inference_steps);

}  // namespace ldcp::schedulers
