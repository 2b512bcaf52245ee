#include "model/pipelines/image_conditioning.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include <torch/torch.h>

#include "model/models/autoencoders/autoencoder_kl.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "model/schedulers/scheduler.h"

namespace ldcp::pipelines {
namespace {

void require(bool condition, const std::string& message) {
  if (!condition) throw std::invalid_argument(message);
}

std::string size_text(int64_t width, int64_t height) {
  return std::to_string(width) + "x" + std::to_string(height);
}

void check_image(const at::Tensor& image, const char* field, const GenerationParams& p) {
  require(image.scalar_type() == at::kByte && image.dim() == 3 && image.size(2) == 3,
          std::string(field) + ": must be an RGB image (uint8 [height, width, 3])");
  require(image.size(0) == p.height && image.size(1) == p.width,
          std::string(field) + ": the image is " + size_text(image.size(1), image.size(0)) +
              ", the request's size " + size_text(p.width, p.height) +
              " (images are not resized: give an image of the output size)");
}

// VaeImageProcessor's pil_to_numpy (x / 255 in float32) of RGB bytes: float32 [1, C, H, W].
at::Tensor to_unit_float(const at::Tensor& hwc) {
  return (hwc.to(torch::kCPU, torch::kFloat) / 255.0).permute({2, 0, 1}).unsqueeze(0).contiguous();
}

// The VAE posterior's sample of `image` ([1, 3, H, W] in [-1, 1]) times the scaling factor,
// as diffusers' retrieve_latents(vae.encode(image), generator) * scaling_factor.
at::Tensor encode_sample(models::AutoencoderKLImpl& vae, const at::Tensor& image,
                         at::Generator& generator) {
  return vae.encode(image).sample(generator) * vae.config().scaling_factor;
}

}  // namespace

at::Tensor preprocess_image(const at::Tensor& rgb) { return 2.0 * to_unit_float(rgb) - 1.0; }

at::Tensor preprocess_mask(const at::Tensor& rgb) {
  auto c = rgb.to(torch::kCPU, torch::kInt32);
  // PIL's RGB -> L (Convert.c, rgb2l): fixed-point ITU-R 601-2 luma, rounded.
  auto luma = (c.select(2, 0) * 19595 + c.select(2, 1) * 38470 + c.select(2, 2) * 7471 + 0x8000)
                  .floor_divide(65536);
  auto gray = to_unit_float(luma.to(torch::kUInt8).unsqueeze(2));
  return (gray >= 0.5).to(torch::kFloat);
}

void validate_image_params(const GenerationParams& p, int64_t unet_in_channels) {
  const bool init = p.init_image.defined(), mask = p.mask_image.defined();
  require(unet_in_channels != 9 || (init && mask),
          "mask_image: this model is an inpainting model (a 9-channel U-Net): it needs "
          "init_image and mask_image");
  require(!init || unet_in_channels == 4 || unet_in_channels == 9,
          "init_image: this model's U-Net has " + std::to_string(unet_in_channels) +
              " input channels; img2img and inpainting take 4 (or 9: inpainting models)");
  if (p.strength && !init) throw std::invalid_argument("strength: only allowed with init_image");
  require(!mask || init, "mask_image: only allowed with init_image");
  if (!init) return;
  check_image(p.init_image, "init_image", p);
  if (mask) check_image(p.mask_image, "mask_image", p);
  const double strength = effective_strength(p);
  require(std::isfinite(strength) && strength > 0 && strength <= 1,
          "strength: must be in (0, 1], got " + std::to_string(strength));
  require(first_denoising_step(p.steps, strength) < p.steps,
          "strength: " + std::to_string(strength) + " x " + std::to_string(p.steps) +
              " steps leaves no step to run (int(steps * strength) must be at least 1)");
}

at::Tensor ImageConditioning::unet_input(const at::Tensor& scaled) const {
  if (!concat) return scaled;
  return torch::cat({scaled, extra_input}, 1);
}

at::Tensor ImageConditioning::after_step(const at::Tensor& latents,
                                         const schedulers::Scheduler& scheduler,
                                         const at::Tensor& timesteps, int64_t step) const {
  if (!blend) return latents;
  auto proper = image_latents;
  if (step + 1 < timesteps.size(0)) {
    proper = scheduler.add_noise(image_latents, noise, timesteps[step + 1]);
  }
  return (1 - mask) * proper + mask * latents;
}

at::Tensor prepare_image_latents(const GenerationParams& p, models::AutoencoderKLImpl& vae,
                                 const schedulers::Scheduler& scheduler,
                                 const at::Tensor& first_timestep, int64_t unet_in_channels,
                                 bool guided, at::Generator& generator, c10::ScalarType dtype,
                                 c10::Device device, ImageConditioning& out) {
  const int64_t n = p.num_images;
  const int64_t scale = vae.config().spatial_scale();
  const int64_t channels = vae.config().latent_channels;
  const std::vector<int64_t> latent_shape{n, channels, p.height / scale, p.width / scale};
  const auto image = preprocess_image(p.init_image);  // float32, as diffusers keeps it
  const auto run_options = at::TensorOptions().dtype(dtype);
  auto draw_noise = [&] {
    // randn_tensor with a CPU generator: drawn on the CPU in the run's dtype.
    return at::randn(latent_shape, generator, run_options).to(device);
  };
  if (!p.mask_image.defined()) {
    // StableDiffusionImg2ImgPipeline.prepare_latents
    const auto init_latents =
        encode_sample(vae, image.to(device, dtype), generator).repeat({n, 1, 1, 1});
    const auto noise = draw_noise();
    return scheduler.add_noise(init_latents, noise, first_timestep);
  }
  // StableDiffusionInpaintPipeline.prepare_latents, then prepare_mask_latents.
  const bool strength_max = effective_strength(p) == 1.0;
  out.blend = unet_in_channels == 4;
  out.concat = unet_in_channels == 9;
  at::Tensor image_latents;
  if (out.blend || !strength_max) {
    image_latents = encode_sample(vae, image.to(device, dtype), generator).repeat({n, 1, 1, 1});
  }
  const auto noise = draw_noise();
  const auto latents = strength_max ? noise * scheduler.init_noise_sigma()
                                    : scheduler.add_noise(image_latents, noise, first_timestep);
  const auto mask_condition = preprocess_mask(p.mask_image);
  const auto masked_image = image * (mask_condition < 0.5);
  out.mask = torch::nn::functional::interpolate(
                 mask_condition, torch::nn::functional::InterpolateFuncOptions().size(
                                     std::vector<int64_t>{p.height / scale, p.width / scale}))
                 .to(device, dtype)
                 .repeat({n, 1, 1, 1});
  if (out.concat) {
    const auto masked_latents =
        encode_sample(vae, masked_image.to(device, dtype), generator).repeat({n, 1, 1, 1});
    out.extra_input = torch::cat({out.mask, masked_latents}, 1);
    if (guided) out.extra_input = torch::cat({out.extra_input, out.extra_input});
  } else {
    // diffusers encodes the masked image here too, unused by a 4-channel U-Net: only its draw
    // from the generator matters (the sampler's later draws follow it), so it is drawn alone.
    at::randn({1, channels, p.height / scale, p.width / scale}, generator, run_options);
    out.image_latents = image_latents;
    out.noise = noise;
  }
  return latents;
}

}  // namespace ldcp::pipelines
