#pragma once
// The VAE's encoder and decoder, as diffusers' models/autoencoders/vae.py (Encoder, Decoder,
// DiagonalGaussianDistribution). diffusers keeps the blocks they are made of (UNetMidBlock2D,
// DownEncoderBlock2D, UpDecoderBlock2D) in unets/unet_2d_blocks.py and the mid-block's spatial
// self-attention in attention_processor.py (Attention + AttnProcessor2_0); since only the VAE
// uses them here, they live in this file. Submodules carry diffusers' names, so
// named_parameters() equals the checkpoint keys.

#include <optional>
#include <vector>

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "model/models/resnet.h"

namespace ldcp::models {

// ---- blocks (diffusers: attention_processor.py, unets/unet_2d_blocks.py) ----

struct SpatialSelfAttentionConfig {
  int64_t channels = 0;
  int64_t heads = 1;             // the VAE: channels / attention_head_dim = 1
  int64_t norm_num_groups = 32;  // 0: no group_norm
  double eps = 1e-6;
  double rescale_output_factor = 1.0;
  bool residual_connection = true;
};

// diffusers' Attention as UNetMidBlock2D builds it (self-attention over the H*W positions of a
// [B, C, H, W] map, with biases, group_norm before the projections, a residual connection and
// rescale_output_factor), run as AttnProcessor2_0 runs it.
class SpatialSelfAttentionImpl : public torch::nn::Module {
 public:
  explicit SpatialSelfAttentionImpl(const SpatialSelfAttentionConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  const SpatialSelfAttentionConfig& config() const { return config_; }

  torch::nn::GroupNorm group_norm{nullptr};
  torch::nn::Linear to_q{nullptr}, to_k{nullptr}, to_v{nullptr};
  torch::nn::ModuleList to_out{nullptr};  // Linear, then a parameterless Dropout(0) placeholder

 private:
  SpatialSelfAttentionConfig config_;
};
TORCH_MODULE(SpatialSelfAttention);

struct UNetMidBlock2DConfig {
  int64_t in_channels = 0;
  int64_t temb_channels = 0;  // 0: none (the VAE)
  int64_t num_layers = 1;     // attention + resnet pairs after the first resnet
  double resnet_eps = 1e-6;
  int64_t resnet_groups = 32;
  int64_t attn_groups = 0;  // 0: resnet_groups (diffusers' None with time_scale_shift "default")
  bool add_attention = true;
  int64_t attention_head_dim = 1;  // the VAE passes in_channels (one head)
  double output_scale_factor = 1.0;
};

// resnets[0], then (attentions[i], resnets[i + 1]) for each layer. Without attention the
// `attentions` list is empty (diffusers keeps Nones there, which hold no weights).
class UNetMidBlock2DImpl : public torch::nn::Module {
 public:
  explicit UNetMidBlock2DImpl(const UNetMidBlock2DConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states, const torch::Tensor& temb = {});

  torch::nn::ModuleList attentions{nullptr};
  torch::nn::ModuleList resnets{nullptr};

 private:
  UNetMidBlock2DConfig config_;
};
TORCH_MODULE(UNetMidBlock2D);

struct DownEncoderBlock2DConfig {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t num_layers = 1;
  double resnet_eps = 1e-6;
  int64_t resnet_groups = 32;
  double output_scale_factor = 1.0;
  bool add_downsample = true;
  int64_t downsample_padding = 1;  // the VAE encoder uses 0 (pad right/bottom, then stride)
};

// Resnets without time embedding, then an optional strided-conv downsampler.
class DownEncoderBlock2DImpl : public torch::nn::Module {
 public:
  explicit DownEncoderBlock2DImpl(const DownEncoderBlock2DConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  torch::nn::ModuleList resnets{nullptr};
  torch::nn::ModuleList downsamplers{nullptr};  // null without downsampling
};
TORCH_MODULE(DownEncoderBlock2D);

struct UpDecoderBlock2DConfig {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t num_layers = 1;
  double resnet_eps = 1e-6;
  int64_t resnet_groups = 32;
  double output_scale_factor = 1.0;
  bool add_upsample = true;
  int64_t temb_channels = 0;
};

// Resnets, then an optional nearest-x2 upsampler with a 3x3 convolution.
class UpDecoderBlock2DImpl : public torch::nn::Module {
 public:
  explicit UpDecoderBlock2DImpl(const UpDecoderBlock2DConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states, const torch::Tensor& temb = {});

  torch::nn::ModuleList resnets{nullptr};
  torch::nn::ModuleList upsamplers{nullptr};  // null without upsampling
};
TORCH_MODULE(UpDecoderBlock2D);

// ---- vae.py ----

struct EncoderConfig {
  int64_t in_channels = 3;
  int64_t out_channels = 3;                        // latent channels (doubled when double_z)
  std::vector<int64_t> block_out_channels = {64};  // one DownEncoderBlock2D each
  int64_t layers_per_block = 2;
  int64_t norm_num_groups = 32;
  bool double_z = true;
  bool mid_block_add_attention = true;
};

// conv_in, down_blocks (the last without downsampling), mid_block, conv_norm_out, SiLU,
// conv_out. Output: [B, 2 * out_channels, H / 2^(n-1), W / 2^(n-1)] (mean and log-variance).
class EncoderImpl : public torch::nn::Module {
 public:
  explicit EncoderImpl(const EncoderConfig& config);
  torch::Tensor forward(const torch::Tensor& sample);

  torch::nn::Conv2d conv_in{nullptr};
  torch::nn::ModuleList down_blocks{nullptr};
  UNetMidBlock2D mid_block{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  torch::nn::Conv2d conv_out{nullptr};
};
TORCH_MODULE(Encoder);

struct DecoderConfig {
  int64_t in_channels = 3;  // latent channels
  int64_t out_channels = 3;
  std::vector<int64_t> block_out_channels = {64};  // one UpDecoderBlock2D each, reversed
  int64_t layers_per_block = 2;                    // each up block has layers_per_block + 1
  int64_t norm_num_groups = 32;
  bool mid_block_add_attention = true;
};

// conv_in, mid_block, up_blocks (the last without upsampling), conv_norm_out, SiLU, conv_out.
// norm_type "group" only (the "spatial" variant belongs to MoVQ models).
class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const DecoderConfig& config);
  torch::Tensor forward(const torch::Tensor& sample);

  torch::nn::Conv2d conv_in{nullptr};
  UNetMidBlock2D mid_block{nullptr};
  torch::nn::ModuleList up_blocks{nullptr};
  torch::nn::GroupNorm conv_norm_out{nullptr};
  torch::nn::Conv2d conv_out{nullptr};
};
TORCH_MODULE(Decoder);

// The posterior of AutoencoderKL.encode: `parameters` [B, 2C, h, w] split into mean and
// log-variance along the channels; logvar clamped to [-30, 20] as diffusers.
struct DiagonalGaussianDistribution {
  DiagonalGaussianDistribution() = default;
  explicit DiagonalGaussianDistribution(const torch::Tensor& parameters);

  // `std` is diffusers' name; the members below therefore spell the namespace `::std`.
  torch::Tensor parameters, mean, logvar, std, var;

  // mean + std * noise, the noise drawn as diffusers' randn_tensor draws it: with a CPU
  // generator on the CPU in the parameters' dtype (then moved to their device); without one,
  // from the default generator of the parameters' device.
  torch::Tensor sample(::std::optional<at::Generator> generator = ::std::nullopt) const;
  torch::Tensor mode() const { return mean; }
};

}  // namespace ldcp::models
