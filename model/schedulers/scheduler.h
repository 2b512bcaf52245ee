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
  // 1-D CPU tensor of the timesteps in the order the pipeline runs them, in the reference's
  // dtype: int64 (PNDM, DDIM, DPM-Solver) or float32 (Euler types: fractional timesteps).
  // Each element is what step() and scale_model_input() expect as `timestep`.
  virtual at::Tensor timesteps() const = 0;
  // The float32 sigma schedule (one more entry than timesteps(), ending at the final sigma) of
  // the samplers that have one (Euler types, DPM-Solver); undefined for the others.
  virtual at::Tensor sigmas() const { return {}; }
  // The noise scale of the initial latents (1 for DDPM-type samplers, sigma_max-based for
  // Euler-type ones): the float32 value diffusers multiplies the latents with.
  virtual double init_noise_sigma() const = 0;
  // Scales the denoising model input at `timestep` (identity for most samplers).
  virtual at::Tensor scale_model_input(const at::Tensor& sample, const at::Tensor& timestep) = 0;
  // One sampler step: from the model output at `timestep` and the current sample, the previous
  // sample. `generator` is used by stochastic samplers (Euler ancestral, DDIM with eta > 0) to
  // draw noise exactly as diffusers' randn_tensor does on the CPU.
  virtual at::Tensor step(const at::Tensor& model_output, const at::Tensor& timestep,
                          const at::Tensor& sample, std::optional<at::Generator> generator) = 0;
  // diffusers' set_begin_index(begin_index), called after set_timesteps: the position in
  // timesteps() of the first step the pipeline runs (img2img and inpainting start where their
  // strength leaves off). The step index then starts there instead of at the position of the
  // first timestep passed to step(). PNDM and DDIM, which have no step index (nor the method in
  // diffusers), ignore it.
  virtual void set_begin_index(int64_t begin_index) {}
  // diffusers' add_noise(original_samples, noise, timesteps) with one timestep for the whole
  // batch (one of timesteps()): `original` diffused forward to that noise level. PNDM, DDIM:
  // sqrt(alphas_cumprod[t]) * x + sqrt(1 - alphas_cumprod[t]) * noise; the sigma samplers take
  // the sigma at the current step index, else the begin index, else the timestep's position,
  // as diffusers' do.
  virtual at::Tensor add_noise(const at::Tensor& original, const at::Tensor& noise,
                               const at::Tensor& timestep) const = 0;
  // The diffusers class this sampler reproduces, e.g. "DPMSolverMultistepScheduler".
  virtual std::string name() const = 0;
};

struct SamplerOptions {
  double eta = 0.0;  // DDIM only
};

// The sampler names the tools and the API accept, in a stable order.
const std::vector<std::string>&
sampler_names();  // pndm, ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras

// Builds the named sampler from a scheduler_config.json (whatever class it was written for,
// as diffusers' `Class.from_config(config)`: keys the class does not know are ignored, absent
// ones take the class's defaults). pndm: PNDMScheduler, ddim: DDIMScheduler (options.eta),
// euler: EulerDiscreteScheduler, euler_a: EulerAncestralDiscreteScheduler, dpmpp_2m[_karras]:
// DPMSolverMultistepScheduler with algorithm_type="dpmsolver++", solver_order=2 and
// use_karras_sigmas=false/true. Throws std::invalid_argument for an unknown name (listing the
// known ones) and io::ConfigError for config values the class rejects.
std::unique_ptr<Scheduler> make_scheduler(const std::string& name, const nlohmann::json& config,
                                          const SamplerOptions& options = {});

}  // namespace ldcp::schedulers
