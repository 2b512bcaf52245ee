#pragma once
// The SD U-Net's blocks of diffusers' models/unets/unet_2d_blocks.py: CrossAttnDownBlock2D,
// DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D, UpBlock2D (time_embedding_norm
// "default", SiLU, no dual cross-attention). Submodules carry diffusers' names (resnets.N,
// attentions.N, downsamplers.0, upsamplers.0), so named_parameters() equals the checkpoint keys.

#include <optional>
#include <utility>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>

#include "model/models/attention.h"
#include "model/models/resnet.h"

namespace ldcp::models {

// Spatial size an up block's upsampler must produce (diffusers' `upsample_size`); nullopt: x2.
using UpsampleSize = std::optional<std::pair<int64_t, int64_t>>;

// What the down blocks return: the block's output and the states the up blocks take as skip
// connections (one per resnet, plus the downsampled output).
struct DownBlockOutput {
  torch::Tensor hidden_states;
  std::vector<torch::Tensor> output_states;
};

// Settings shared by the blocks; defaults as diffusers' block constructors.
struct UNetBlockConfig {
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t prev_output_channel = 0;  // up blocks: width of the incoming hidden states
  int64_t temb_channels = 0;
  int64_t num_layers = 1;
  double resnet_eps = 1e-6;
  int64_t resnet_groups = 32;
  double output_scale_factor = 1.0;
  bool add_downsample = true;  // down blocks
  int64_t downsample_padding = 1;
  bool add_upsample = true;  // up blocks
  // Cross-attention blocks only:
  int64_t transformer_layers_per_block = 1;
  int64_t num_attention_heads = 1;  // head dim = out_channels / num_attention_heads
  int64_t cross_attention_dim = 1280;
  bool use_linear_projection = false;
  bool only_cross_attention = false;
  bool upcast_attention = false;
};

// resnets[i] then attentions[i] per layer; then downsamplers.0.
class CrossAttnDownBlock2DImpl : public torch::nn::Module {
 public:
  explicit CrossAttnDownBlock2DImpl(const UNetBlockConfig& config);
  DownBlockOutput forward(const torch::Tensor& hidden_states, const torch::Tensor& temb,
                          const torch::Tensor& encoder_hidden_states);

  const UNetBlockConfig& config() const { return config_; }

  torch::nn::ModuleList attentions{nullptr};
  torch::nn::ModuleList resnets{nullptr};
  torch::nn::ModuleList downsamplers{nullptr};  // null without add_downsample

  // Typed views of the lists above.
  std::vector<Transformer2DModel> attention_modules;
  std::vector<ResnetBlock2D> resnet_modules;
  Downsample2D downsampler{nullptr};

 private:
  UNetBlockConfig config_;
};
TORCH_MODULE(CrossAttnDownBlock2D);

// resnets[i] per layer; then downsamplers.0.
class DownBlock2DImpl : public torch::nn::Module {
 public:
  explicit DownBlock2DImpl(const UNetBlockConfig& config);
  DownBlockOutput forward(const torch::Tensor& hidden_states, const torch::Tensor& temb);

  const UNetBlockConfig& config() const { return config_; }

  torch::nn::ModuleList resnets{nullptr};
  torch::nn::ModuleList downsamplers{nullptr};

  std::vector<ResnetBlock2D> resnet_modules;
  Downsample2D downsampler{nullptr};

 private:
  UNetBlockConfig config_;
};
TORCH_MODULE(DownBlock2D);

// resnets[0], then attentions[i] and resnets[i + 1] per layer (num_layers, default 1). Uses
// in_channels (out_channels = in_channels) and output_scale_factor for its resnets.
class UNetMidBlock2DCrossAttnImpl : public torch::nn::Module {
 public:
  explicit UNetMidBlock2DCrossAttnImpl(const UNetBlockConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states, const torch::Tensor& temb,
                        const torch::Tensor& encoder_hidden_states);

  const UNetBlockConfig& config() const { return config_; }

  torch::nn::ModuleList attentions{nullptr};
  torch::nn::ModuleList resnets{nullptr};

  std::vector<Transformer2DModel> attention_modules;
  std::vector<ResnetBlock2D> resnet_modules;

 private:
  UNetBlockConfig config_;
};
TORCH_MODULE(UNetMidBlock2DCrossAttn);

// Per layer: concatenate the last skip state, resnets[i], attentions[i]; then upsamplers.0.
// res_hidden_states holds this block's skip states in down-path order (the last is used first);
// its size must equal num_layers.
class CrossAttnUpBlock2DImpl : public torch::nn::Module {
 public:
  explicit CrossAttnUpBlock2DImpl(const UNetBlockConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states,
                        const std::vector<torch::Tensor>& res_hidden_states,
                        const torch::Tensor& temb, const torch::Tensor& encoder_hidden_states,
                        const UpsampleSize& upsample_size = std::nullopt);

  const UNetBlockConfig& config() const { return config_; }

  torch::nn::ModuleList attentions{nullptr};
  torch::nn::ModuleList resnets{nullptr};
  torch::nn::ModuleList upsamplers{nullptr};  // null without add_upsample

  std::vector<Transformer2DModel> attention_modules;
  std::vector<ResnetBlock2D> resnet_modules;
  Upsample2D upsampler{nullptr};

 private:
  UNetBlockConfig config_;
};
TORCH_MODULE(CrossAttnUpBlock2D);

// Per layer: concatenate the last skip state, resnets[i]; then upsamplers.0.
class UpBlock2DImpl : public torch::nn::Module {
 public:
  explicit UpBlock2DImpl(const UNetBlockConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states,
                        const std::vector<torch::Tensor>& res_hidden_states,
                        const torch::Tensor& temb,
                        const UpsampleSize& upsample_size = std::nullopt);

  const UNetBlockConfig& config() const { return config_; }

  torch::nn::ModuleList resnets{nullptr};
  torch::nn::ModuleList upsamplers{nullptr};

  std::vector<ResnetBlock2D> resnet_modules;
  Upsample2D upsampler{nullptr};

 private:
  UNetBlockConfig config_;
};
TORCH_MODULE(UpBlock2D);

}  // namespace ldcp::models
