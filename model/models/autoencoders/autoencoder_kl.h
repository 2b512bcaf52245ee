#pragma once
// diffusers' models/autoencoders/autoencoder_kl.py: AutoencoderKL, the SD1.5 VAE (encoder,
// quant_conv, post_quant_conv, decoder) configured from the vae/config.json of a model folder.

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <nlohmann/json_fwd.hpp>

#include "model/io/weights.h"
#include "model/models/autoencoders/autoencoder_kl_config.h"
#include "model/models/autoencoders/vae.h"

namespace ldcp::models {

class AutoencoderKLImpl : public torch::nn::Module {
 public:
  explicit AutoencoderKLImpl(const AutoencoderKLConfig& config);

  // images: [B, in_channels, H, W] in [-1, 1] -> the posterior over the (unscaled) latents.
  DiagonalGaussianDistribution encode(const torch::Tensor& images);
  // latents: [B, latent_channels, h, w], already divided by scaling_factor (and shifted back)
  // -> images [B, out_channels, h * spatial_scale, w * spatial_scale], about [-1, 1].
  torch::Tensor decode(const torch::Tensor& latents);

  // As diffusers' AutoencoderKL.tiled_decode with tile_latent_min_size = tile_latent_size,
  // tile_sample_min_size = tile_latent_size * spatial_scale() and tile_overlap_factor =
  // overlap: decodes overlapping tiles (stride int(tile_latent_size * (1 - overlap))) one at a
  // time and blends their seams linearly over int(tile_sample_size * overlap) pixels.
  // diffusers' SD1.5 defaults: tile_latent_size 64 (sample_size 512 / 8), overlap 0.25.
  torch::Tensor decode_tiled(const torch::Tensor& latents, int64_t tile_latent_size,
                             double overlap = 0.25);

  const AutoencoderKLConfig& config() const { return config_; }

  Encoder encoder{nullptr};
  Decoder decoder{nullptr};
  torch::nn::Conv2d quant_conv{nullptr};       // null unless use_quant_conv
  torch::nn::Conv2d post_quant_conv{nullptr};  // null unless use_post_quant_conv

 private:
  AutoencoderKLConfig config_;
};
TORCH_MODULE(AutoencoderKL);

// Builds the VAE from vae_dir/config.json and loads its weights with ldcp::io::load_component
// (which renames legacy attention keys); the module is returned in eval mode, float32, on the
// CPU. Throws ConfigError / WeightLoadError naming the file.
AutoencoderKL load_vae(const std::filesystem::path& vae_dir, const io::LoadOptions& options = {});

}  // namespace ldcp::models
