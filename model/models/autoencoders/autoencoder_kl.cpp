#include "model/models/autoencoders/autoencoder_kl.h"

#include <algorithm>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "model/io/json_file.h"
#include "model/io/weights.h"
#include "model/models/layers.h"

namespace ldcp::models {

using ldcp::io::ConfigError;
using ldcp::io::get_or;

// ---- AutoencoderKL ----

AutoencoderKLImpl::AutoencoderKLImpl(const AutoencoderKLConfig& config) : config_(config) {
  EncoderConfig enc;
  enc.in_channels = config_.in_channels;
  enc.out_channels = config_.latent_channels;
  enc.block_out_channels = config_.block_out_channels;
  enc.layers_per_block = config_.layers_per_block;
  enc.norm_num_groups = config_.norm_num_groups;
  enc.double_z = true;
  enc.mid_block_add_attention = config_.mid_block_add_attention;
  encoder = register_module("encoder", Encoder(enc));

  DecoderConfig dec;
  dec.in_channels = config_.latent_channels;
  dec.out_channels = config_.out_channels;
  dec.block_out_channels = config_.block_out_channels;
  dec.layers_per_block = config_.layers_per_block;
  dec.norm_num_groups = config_.norm_num_groups;
  dec.mid_block_add_attention = config_.mid_block_add_attention;
  decoder = register_module("decoder", Decoder(dec));

  const auto latent = config_.latent_channels;
  if (config_.use_quant_conv) {
    quant_conv =
        register_module("quant_conv", conv2d(torch::nn::Conv2dOptions(2 * latent, 2 * latent, 1)));
  }
  if (config_.use_post_quant_conv) {
    post_quant_conv =
        register_module("post_quant_conv", conv2d(torch::nn::Conv2dOptions(latent, latent, 1)));
  }
}

DiagonalGaussianDistribution AutoencoderKLImpl::encode(const torch::Tensor& images) {
  if (images.dim() != 4 || images.size(1) != config_.in_channels) {
    throw std::invalid_argument("AutoencoderKL::encode: expected images [B, " +
                                std::to_string(config_.in_channels) + ", H, W]");
  }
  auto h = encoder(images);
  if (quant_conv) h = quant_conv(h);
  return DiagonalGaussianDistribution(h);
}

torch::Tensor AutoencoderKLImpl::decode(const torch::Tensor& latents) {
  if (latents.dim() != 4 || latents.size(1) != config_.latent_channels) {
    throw std::invalid_argument("AutoencoderKL::decode: expected latents [B, " +
                                std::to_string(config_.latent_channels) + ", h, w]");
  }
  auto z = post_quant_conv ? post_quant_conv(latents) : latents;
  return decoder(z);
}

namespace {

// AutoencoderKL.blend_v / blend_h: fades the last `extent` rows (columns) of `a` into the first
// ones of `b`, in place on `b`, exactly as diffusers' loops compute it.
void blend(const torch::Tensor& a, torch::Tensor& b, int64_t dim, int64_t extent) {
  extent = std::min({a.size(dim), b.size(dim), extent});
  for (int64_t k = 0; k < extent; ++k) {
    const double w = static_cast<double>(k) / static_cast<double>(extent);
    auto target = b.select(dim, k);
    target.copy_(a.select(dim, a.size(dim) - extent + k) * (1 - w) + target * w);
  }
}

}  // namespace

torch::Tensor AutoencoderKLImpl::decode_tiled(const torch::Tensor& latents,
                                              int64_t tile_latent_size, double overlap) {
  if (latents.dim() != 4 || latents.size(1) != config_.latent_channels) {
    throw std::invalid_argument("AutoencoderKL::decode_tiled: expected latents [B, " +
                                std::to_string(config_.latent_channels) + ", h, w]");
  }
  const int64_t tile_sample_size = tile_latent_size * config_.spatial_scale();
  const auto overlap_size =
      static_cast<int64_t>(static_cast<double>(tile_latent_size) * (1 - overlap));
  const auto blend_extent = static_cast<int64_t>(static_cast<double>(tile_sample_size) * overlap);
  const int64_t row_limit = tile_sample_size - blend_extent;
  if (tile_latent_size <= 0 || !(overlap >= 0 && overlap < 1) || overlap_size <= 0) {
    throw std::invalid_argument("AutoencoderKL::decode_tiled: tile_latent_size " +
                                std::to_string(tile_latent_size) + " and overlap " +
                                std::to_string(overlap) + " leave no stride between tiles");
  }

  // Decode overlapping tiles, row by row.
  std::vector<std::vector<torch::Tensor>> rows;
  for (int64_t i = 0; i < latents.size(2); i += overlap_size) {
    auto& row = rows.emplace_back();
    for (int64_t j = 0; j < latents.size(3); j += overlap_size) {
      auto tile = latents.slice(2, i, i + tile_latent_size).slice(3, j, j + tile_latent_size);
      if (post_quant_conv) tile = post_quant_conv(tile);
      row.push_back(decoder(tile));
    }
  }
  // Blend each tile with the (already blended) one above and the one to its left, keep its
  // top-left row_limit x row_limit part.
  std::vector<torch::Tensor> result_rows;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<torch::Tensor> result_row;
    for (size_t j = 0; j < rows[i].size(); ++j) {
      auto& tile = rows[i][j];
      if (i > 0) blend(rows[i - 1][j], tile, 2, blend_extent);
      if (j > 0) blend(rows[i][j - 1], tile, 3, blend_extent);
      result_row.push_back(tile.slice(2, 0, row_limit).slice(3, 0, row_limit));
    }
    result_rows.push_back(torch::cat(result_row, 3));
  }
  return torch::cat(result_rows, 2);
}

AutoencoderKL load_vae(const std::filesystem::path& vae_dir, const io::LoadOptions& options) {
  const auto config_path = vae_dir / "config.json";
  const auto json = ldcp::io::read_json_file(config_path);
  AutoencoderKLConfig config;
  try {
    config = AutoencoderKLConfig::from_json(json);
  } catch (const ConfigError& e) {
    throw ConfigError(config_path.string() + ": " + e.what());
  }
  auto vae = make_uninitialized<AutoencoderKL>(options.dtype, config);
  ldcp::io::load_component(*vae, vae_dir, options);
  vae->eval();
  return vae;
}

}  // namespace ldcp::models
