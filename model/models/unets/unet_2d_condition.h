#pragma once
// diffusers' models/unets/unet_2d_condition.py, UNet2DConditionModel, for Stable-Diffusion-style
// configurations: positional timestep embedding, CrossAttnDownBlock2D / DownBlock2D,
// UNetMidBlock2DCrossAttn (or none), CrossAttnUpBlock2D / UpBlock2D, SiLU. Configurations
// using anything else (class or addition embeddings, other block types, ...) are rejected with
// an io::ConfigError naming the key.

#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/normalization.h>
#include <nlohmann/json.hpp>

#include "model/io/weights.h"
#include "model/models/embeddings.h"
#include "model/models/unets/unet_2d_blocks.h"

namespace ldcp::models {

// unet/config.json. Defaults are diffusers' (UNet2DConditionModel.__init__). Per-block settings
// hold either one value for every block (config.json's scalar form) or one per down block, in
// down-block order; per_block() resolves them.
struct UNet2DConditionConfig {
  // Parses config.json; throws io::ConfigError naming the key for a malformed value or a
  // feature this implementation does not support.
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

class UNet2DConditionModelImpl : public torch::nn::Module {
 public:
  explicit UNet2DConditionModelImpl(const UNet2DConditionConfig& config);

  // sample [B, in_channels, H, W]; timestep: 0-d, [1] or [B] tensor, integer or floating
  // (broadcast to the batch as diffusers does); encoder_hidden_states [B, L,
  // cross_attention_dim]. Returns the prediction [B, out_channels, H, W] in sample's dtype.
  torch::Tensor forward(const torch::Tensor& sample, const torch::Tensor& timestep,
                        const torch::Tensor& encoder_hidden_states);

  // Step 1 of forward: the sinusoidal projection [B, block_out_channels[0]] of the timestep,
  // broadcast to sample's batch, in sample's dtype (diffusers' get_time_embed).
  torch::Tensor get_time_embed(const torch::Tensor& sample, const torch::Tensor& timestep);

  const UNet2DConditionConfig& config() const { return config_; }
  // Up blocks with an upsampler; latent sizes not divisible by 2^num_upsamplers make forward
  // pass explicit upsample sizes.
  int64_t num_upsamplers() const { return num_upsamplers_; }

  torch::nn::Conv2d conv_in{nullptr};
  Timesteps time_proj{nullptr};
  TimestepEmbedding time_embedding{nullptr};
  torch::nn::ModuleList down_blocks{nullptr};  // CrossAttnDownBlock2D / DownBlock2D
  UNetMidBlock2DCrossAttn mid_block{nullptr};  // null when mid_block_type is null
  torch::nn::ModuleList up_blocks{nullptr};    // CrossAttnUpBlock2D / UpBlock2D
  torch::nn::GroupNorm conv_norm_out{nullptr};
  torch::nn::SiLU conv_act{nullptr};
  torch::nn::Conv2d conv_out{nullptr};

 private:
  UNet2DConditionConfig config_;
  int64_t num_upsamplers_ = 0;
};
TORCH_MODULE(UNet2DConditionModel);

// Reads unet_dir/config.json, builds the model and loads its weights (io::load_component), in
// eval mode with requires_grad off. Throws io::ConfigError / io::WeightLoadError naming the file.
UNet2DConditionModel load_unet(const std::filesystem::path& unet_dir,
                               const io::LoadOptions& options = {});

}  // namespace ldcp::models
