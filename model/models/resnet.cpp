#include "model/models/resnet.h"

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/padding.h>
#include <torch/nn/functional/upsampling.h>

namespace ldcp::models {

namespace F = torch::nn::functional;

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DConfig& config) : config_(config) {
  if (config_.out_channels == 0) config_.out_channels = config_.in_channels;
  const auto in = config_.in_channels, out = config_.out_channels;
  norm1 = register_module(
      "norm1", torch::nn::GroupNorm(torch::nn::GroupNormOptions(config_.groups, in).eps(config_.eps)));
  conv1 = register_module("conv1",
                          torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1)));
  if (config_.temb_channels > 0) {
    time_emb_proj = register_module("time_emb_proj", torch::nn::Linear(config_.temb_channels, out));
  }
  norm2 = register_module(
      "norm2", torch::nn::GroupNorm(torch::nn::GroupNormOptions(config_.groups, out).eps(config_.eps)));
  conv2 = register_module("conv2",
                          torch::nn::Conv2d(torch::nn::Conv2dOptions(out, out, 3).padding(1)));
  if (in != out) {
    conv_shortcut = register_module("conv_shortcut",
                                    torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 1)));
  }
}

torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& input, const torch::Tensor& temb) {
  auto hidden = conv1(F::silu(norm1(input)));
  if (time_emb_proj && temb.defined()) {
    hidden = hidden + time_emb_proj(F::silu(temb)).unsqueeze(-1).unsqueeze(-1);
  }
  hidden = conv2(F::silu(norm2(hidden)));
  auto shortcut = conv_shortcut ? conv_shortcut(input) : input;
  auto output = shortcut + hidden;
  return config_.output_scale_factor == 1.0 ? output : output / config_.output_scale_factor;
}

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding)
    : padding_(padding) {
  conv = register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, out_channels, 3)
                                                       .stride(2)
                                                       .padding(padding)));
}

torch::Tensor Downsample2DImpl::forward(const torch::Tensor& input) {
  if (padding_ == 0) {
    return conv(F::pad(input, F::PadFuncOptions({0, 1, 0, 1}).mode(torch::kConstant).value(0)));
  }
  return conv(input);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels, int64_t out_channels) {
  conv = register_module(
      "conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(channels, out_channels, 3).padding(1)));
}

torch::Tensor Upsample2DImpl::forward(const torch::Tensor& input,
                                      std::optional<std::pair<int64_t, int64_t>> output_size) {
  // As diffusers: nearest upsampling runs in float32 for bfloat16 inputs.
  auto x = input.scalar_type() == torch::kBFloat16 ? input.to(torch::kFloat32) : input.contiguous();
  auto options = F::InterpolateFuncOptions().mode(torch::kNearest);
  if (output_size) {
    options.size(std::vector<int64_t>{output_size->first, output_size->second});
  } else {
    options.scale_factor(std::vector<double>{2.0, 2.0});
  }
  x = F::interpolate(x, options);
  if (x.scalar_type() != input.scalar_type()) x = x.to(input.scalar_type());
  return conv(x);
}

}  // namespace ldcp::models
