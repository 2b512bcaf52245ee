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
#include "model/models/unets/unet_2d_condition_config.h"

namespace ldcp::models {

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
