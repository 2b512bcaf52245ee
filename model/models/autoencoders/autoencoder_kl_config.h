#pragma once
// AutoencoderKL's config.json (diffusers' models/autoencoders/autoencoder_kl.py), read and
// checked without libtorch: autoencoder_kl.h builds the model from it, and the fuzz build
// (tests/fuzz) links this part alone.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace ldcp::models {

// Caps on config.json's sizes, checked before the model is built: far above every VAE (SD1.5's and
// SDXL's: 4 blocks up to 512 channels, 2 layers per block, 4 latent channels; SD3's 16), and low
// enough that a hostile config cannot make the loader allocate without bound.
inline constexpr size_t kMaxVaeBlocks = 16;                     // block_out_channels entries
inline constexpr int64_t kMaxVaeWidth = 4096;                   // each channel count
inline constexpr int64_t kMaxVaeLayers = 32;                    // layers_per_block
inline constexpr int64_t kMaxVaeParameters = int64_t{1} << 32;  // all weights together (SD's: 8e7)

// AutoencoderKL's config.json; defaults are diffusers' constructor defaults.
struct AutoencoderKLConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;
  std::vector<std::string> down_block_types = {"DownEncoderBlock2D"};  // the only type supported
  std::vector<std::string> up_block_types = {"UpDecoderBlock2D"};      // the only type supported
  std::vector<int64_t> block_out_channels = {64};
  int64_t layers_per_block = 1;
  std::string act_fn = "silu";  // the only activation supported
  int64_t latent_channels = 4;
  int64_t norm_num_groups = 32;
  int64_t sample_size = 32;  // first entry when config.json gives a list
  double scaling_factor = 0.18215;
  std::optional<double> shift_factor;                            // null in SD1.5
  std::optional<std::vector<double>> latents_mean, latents_std;  // null in SD1.5
  // Read by pipelines that run the VAE in float32 when the rest runs in float16 (SDXL's); the
  // module itself ignores it, as diffusers' does.
  bool force_upcast = true;
  bool use_quant_conv = true;
  bool use_post_quant_conv = true;
  bool mid_block_add_attention = true;

  // Reads config.json's fields (absent or null: the default). Throws ldcp::io::ConfigError
  // naming the key for a wrong type or an unsupported value (block type, activation, widths
  // not divisible by norm_num_groups, list lengths that disagree, sizes beyond the caps:
  // in_channels, out_channels, latent_channels and block_out_channels' entries at most
  // kMaxVaeWidth, layers_per_block at most kMaxVaeLayers, at most kMaxVaeParameters weights).
  static AutoencoderKLConfig from_json(const nlohmann::json& config);

  // 2^(number of blocks - 1): image pixels per latent pixel (8 for SD1.5).
  int64_t spatial_scale() const;
};

}  // namespace ldcp::models
