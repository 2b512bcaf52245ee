#pragma once
// The sampler interface the pipeline drives; one implementation per diffusers scheduler class,
// each in its own file named as diffusers' (scheduling_pndm, scheduling_ddim, ...), each equal
// step for step to the class of the same name configured from the model's
// scheduler/scheduler_config.json.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <nlohmann/json_fwd.hpp>

namespace ldcp::schedulers {

class Scheduler {
 public:
  virtual ~Scheduler() = default;

  // As diffusers' set_timesteps(num_inference_steps): fills timesteps() (and sigmas).
  virtual void set_timesteps(int64_t num_inference_steps) = 0;
  // 1-D CPU tensor of the timesteps in the order the pipeline runs them (float64 or int64, as
  // the reference: Euler-type samplers use fractional timesteps).
  virtual at::Tensor timesteps() const = 0;
  // The noise scale of the initial latents (1 for DDPM-type samplers, sigma_max-based for
  // Euler-type ones).
  virtual double init_noise_sigma() const = 0;
  // Scales the denoising model input at `timestep` (identity for most samplers).
  virtual at::Tensor scale_model_input(const at::Tensor& sample, const at::Tensor& timestep) = 0;
  // One sampler step: from the model output at `timestep` and the current sample, the previous
  // sample. `generator` is used by stochastic samplers (Euler ancestral, DDIM with eta > 0) to
  // draw noise exactly as diffusers' randn_tensor does on the CPU.
  virtual at::Tensor step(const at::Tensor& model_output, const at::Tensor& timestep,
                          const at::Tensor& sample, std::optional<at::Generator> generator) = 0;
  virtual std::string name() const = 0;
};

struct SamplerOptions {
  double eta = 0.0;  // DDIM only
};

// The sampler names the tools and the API accept, in a stable order.
const std::vector<std::string>& sampler_names();  // pndm, ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras

// Builds the named sampler from a scheduler_config.json (whatever class it was written for,
// as diffusers' `from_config` does). Throws std::invalid_argument for an unknown name.
std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const nlohmann::json& config,
                                          const SamplerOptions& options = {});

}  // namespace ldcp::schedulers
