#pragma once
// img2img and inpainting: what an init image, its strength and a mask add to a text-to-image run,
// step for step as diffusers' StableDiffusionImg2ImgPipeline (init image, no mask) and
// StableDiffusionInpaintPipeline (init image and mask; a 9-channel inpainting U-Net takes the
// latent mask and the masked image's latents as extra input channels, a 4-channel U-Net gets
// the re-noised init latents blended back outside the mask after every step). The random draws
// come from the request's generator in diffusers' order: the VAE posterior's sample of the init
// image, the noise, then (inpainting) the masked image's sample, then the sampler's own draws.
//
// Images are not resized: the init image and the mask must be the request's width x height
// (diffusers' VaeImageProcessor then resizes nothing: PIL's resize to an image's own size is a
// copy), so that the preprocessing is exact.

#include <cstdint>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

namespace ldcp::models {
class AutoencoderKLImpl;
}
namespace ldcp::schedulers {
class Scheduler;
}

namespace ldcp::pipelines {

struct GenerationParams;

// VaeImageProcessor.preprocess of an RGB image (uint8 [H, W, 3]): float32 [1, 3, H, W] in
// [-1, 1], x / 255 * 2 - 1 as diffusers computes it.
at::Tensor preprocess_image(const at::Tensor& rgb);
// The mask processor's preprocess (do_convert_grayscale, do_binarize, no normalisation): PIL's
// convert("L") of the RGB mask (uint8 [H, W, 3]; (19595 R + 38470 G + 7471 B + 2^15) >> 16),
// / 255, then 0 below 0.5 and 1 from it: float32 [1, 1, H, W]. 1 (white) marks what to repaint.
at::Tensor preprocess_mask(const at::Tensor& rgb);

// Throws std::invalid_argument naming the field when the image fields of `p` do not fit the
// model (a U-Net with `unet_in_channels` inputs: 4, or 9 for inpainting models).
void validate_image_params(const GenerationParams& p, int64_t unet_in_channels);

// One request's image conditioning over its denoising loop.
struct ImageConditioning {
  bool concat = false;       // 9-channel U-Net: mask and masked-image latents are input channels
  bool blend = false;        // 4-channel inpainting: blend the init latents back outside the mask
  at::Tensor mask;           // [n, 1, h, w] at latent size, in the run's dtype
  at::Tensor extra_input;    // concat: [rows, 5, h, w], the mask and masked-image latents
  at::Tensor image_latents;  // blend: the scaled init latents [n, 4, h, w]
  at::Tensor noise;          // blend: the initial noise, which re-noises image_latents

  // The U-Net's input from the sampler-scaled latents ([rows, 4, h, w], rows = n or 2n guided).
  at::Tensor unet_input(const at::Tensor& scaled) const;
  // After the sampler's step at `step` (position in `timesteps`, the timesteps this run takes):
  // blend: outside the mask, the init latents noised to the next timestep (none after the last).
  at::Tensor after_step(const at::Tensor& latents, const schedulers::Scheduler& scheduler,
                        const at::Tensor& timesteps, int64_t step) const;
};

// The initial latents [n, 4, h, w] of a request with an init image, `first_timestep` being the
// first of the run's timesteps, drawing from `generator` in diffusers' order; fills
// `conditioning` for the loop. `guided`: classifier-free guidance (the 9-channel extra input is
// then doubled as diffusers' prepare_mask_latents does).
at::Tensor prepare_image_latents(const GenerationParams& p, models::AutoencoderKLImpl& vae,
                                 const schedulers::Scheduler& scheduler,
                                 const at::Tensor& first_timestep, int64_t unet_in_channels,
                                 bool guided, at::Generator& generator, c10::ScalarType dtype,
                                 c10::Device device, ImageConditioning& conditioning);

}  // namespace ldcp::pipelines
