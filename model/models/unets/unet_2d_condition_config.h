#pragma once
// UNet2DConditionModel's config.json (diffusers' models/unets/unet_2d_condition.py), read and
// checked without libtorch: unet_2d_condition.h builds the model from it, and the fuzz build
// (tests/fuzz) links this part alone.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace ldcp::models {

// Caps on config.json's sizes, checked before the model is built: far above SD1.5's and SDXL's
// U-Nets (widest 1280, cross_attention_dim 2048, 10 transformer layers, 3x3 kernels, 4 blocks,
// 2.6e9 weights), and low enough that a hostile config cannot make the loader allocate without
// bound or overflow the sizes derived from them.
inline constexpr int64_t kMaxUNetWidth = int64_t{1} << 16;  // channel and head counts
inline constexpr int64_t kMaxUNetLayers = 64;  // layers_per_block, transformer_layers_per_block
inline constexpr int64_t kMaxUNetKernel = 31;  // conv_in_kernel, conv_out_kernel
inline constexpr size_t kMaxUNetBlocks = 16;   // down_block_types entries
inline constexpr int64_t kMaxUNetParameters = int64_t{1} << 33;  // all weights, estimated

// unet/config.json. Defaults are diffusers' (UNet2DConditionModel.__init__). Per-block settings
// hold either one value for every block (config.json's scalar form) or one per down block, in
// down-block order; per_block() resolves them.
struct UNet2DConditionConfig {
  // Parses config.json; throws io::ConfigError naming the key for a malformed value, a size
  // beyond the caps above (kMaxUNet*) or a feature this implementation does not support.
  static UNet2DConditionConfig from_json(const nlohmann::json& config);

  std::optional<std::pair<int64_t, int64_t>> sample_size;  // (height, width) in latent cells
  int64_t in_channels = 4;
  int64_t out_channels = 4;
  bool center_input_sample = false;  // sample -> 2 * sample - 1 first
  bool flip_sin_to_cos = true;
  double freq_shift = 0;
  std::vector<std::string> down_block_types = {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                               "CrossAttnDownBlock2D", "DownBlock2D"};
  std::string mid_block_type = "UNetMidBlock2DCrossAttn";  // "": no mid block (null)
  std::vector<std::string> up_block_types = {"UpBlock2D", "CrossAttnUpBlock2D",
                                             "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"};
  std::vector<bool> only_cross_attention = {false};  // per block
  std::vector<int64_t> block_out_channels = {320, 640, 1280, 1280};
  std::vector<int64_t> layers_per_block = {2};  // per block
  int64_t downsample_padding = 1;
  double mid_block_scale_factor = 1.0;
  std::string act_fn = "silu";  // only "silu" (or its alias "swish")
  int64_t norm_num_groups = 32;
  double norm_eps = 1e-5;
  std::vector<int64_t> cross_attention_dim = {1280};        // per block
  std::vector<int64_t> transformer_layers_per_block = {1};  // per block
  // Per block. Despite the name, diffusers uses it as the number of attention heads
  // (num_attention_heads = attention_head_dim when num_attention_heads is null, the known
  // naming quirk; a non-null num_attention_heads is rejected, as diffusers does).
  std::vector<int64_t> attention_head_dim = {8};
  bool use_linear_projection = false;
  bool upcast_attention = false;   // no effect with scaled-dot-product attention, as in diffusers
  int64_t time_embedding_dim = 0;  // 0: 4 * block_out_channels[0]
  int64_t conv_in_kernel = 3;
  int64_t conv_out_kernel = 3;

  size_t num_blocks() const { return down_block_types.size(); }
  // Per-block lookups (block in down-block order).
  int64_t num_attention_heads(size_t block) const;
  int64_t layers(size_t block) const;
  int64_t cross_attention_dim_of(size_t block) const;
  int64_t transformer_layers(size_t block) const;
  bool only_cross_attention_of(size_t block) const;
  int64_t time_embed_dim() const;

  // Throws io::ConfigError naming the first inconsistent or unsupported key.
  void validate() const;
};

}  // namespace ldcp::models
