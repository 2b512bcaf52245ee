#pragma once
// ResNet building blocks of diffusers' models/resnet.py: ResnetBlock2D, Downsample2D, Upsample2D.
// Submodules carry diffusers' names, so named_parameters() equals the checkpoint keys.

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "model/pruning/gated_layer.h"

namespace ldcp::models {

struct ResnetBlock2DConfig {
  int64_t in_channels = 0;
  int64_t out_channels = 0;  // 0: same as in_channels
  int64_t temb_channels = 512;  // 0: no time embedding (the VAE's blocks)
  int64_t groups = 32;          // GroupNorm groups of norm1 and norm2
  double eps = 1e-6;
  double output_scale_factor = 1.0;
};

// Pre-activation residual block: norm1-SiLU-conv1 (+ time embedding) norm2-SiLU-conv2, plus a
// 1x1 shortcut when the width changes. `time_embedding_norm="default"`, no up/down sampling.
class ResnetBlock2DImpl : public torch::nn::Module, public pruning::GatedLayer {
 public:
  explicit ResnetBlock2DImpl(const ResnetBlock2DConfig& config);

  // temb: [batch, temb_channels] or undefined when the block has no time embedding.
  torch::Tensor forward(const torch::Tensor& input, const torch::Tensor& temb = {});

  const ResnetBlock2DConfig& config() const { return config_; }

  // Channel pruning between conv1 and conv2 (conv1's output channels, time_emb_proj's rows,
  // norm2's affine, conv2's input channels) in whole GroupNorm groups, so every kept group is
  // normalised exactly as before; the block's input and output widths do not change.
  void enable_gate(const std::string& name) override;
  const std::shared_ptr<pruning::ChannelGate>& gate() const override { return gate_; }
  void reorder_units(const std::vector<int64_t>& order) override;
  // conv1's rows and conv2's columns of one group (3x3 kernels), plus its time_emb_proj rows.
  int64_t unit_macs(int64_t positions) const override;
  // L1 norm of conv1's rows of each group.
  at::Tensor magnitude_scores() const override;

  torch::nn::GroupNorm norm1{nullptr};
  torch::nn::Conv2d conv1{nullptr};
  torch::nn::Linear time_emb_proj{nullptr};
  torch::nn::GroupNorm norm2{nullptr};
  torch::nn::Conv2d conv2{nullptr};
  torch::nn::Conv2d conv_shortcut{nullptr};

 private:
  torch::Tensor forward_sliced(const torch::Tensor& input, const torch::Tensor& temb);

  ResnetBlock2DConfig config_;
  std::shared_ptr<pruning::ChannelGate> gate_;
};
TORCH_MODULE(ResnetBlock2D);

// Strided 3x3 convolution. padding=0 is the VAE encoder's variant, which pads (0,1,0,1) first.
class Downsample2DImpl : public torch::nn::Module {
 public:
  Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding);
  torch::Tensor forward(const torch::Tensor& input);

  torch::nn::Conv2d conv{nullptr};

 private:
  int64_t padding_;
};
TORCH_MODULE(Downsample2D);

// Nearest-neighbour x2 upsampling (or to `output_size`) followed by a 3x3 convolution.
class Upsample2DImpl : public torch::nn::Module {
 public:
  Upsample2DImpl(int64_t channels, int64_t out_channels);
  torch::Tensor forward(const torch::Tensor& input,
                        std::optional<std::pair<int64_t, int64_t>> output_size = std::nullopt);

  torch::nn::Conv2d conv{nullptr};
};
TORCH_MODULE(Upsample2D);

}  // namespace ldcp::models
