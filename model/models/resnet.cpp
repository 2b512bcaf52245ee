#include "model/models/resnet.h"

#include <algorithm>

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/conv.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/functional/normalization.h>
#include <torch/nn/functional/padding.h>
#include <torch/nn/functional/upsampling.h>

#include "model/lora/lora_hook.h"
#include "model/models/layers.h"

namespace ldcp::models {

namespace F = torch::nn::functional;

namespace {
// A layer plus the active LoRA branch (model/lora/lora_hook.h).
template <typename Layer>
torch::Tensor run(Layer& layer, const torch::Tensor& x) {
  return lora::add_lora(layer.get(), x, layer->forward(x));
}
}  // namespace

ResnetBlock2DImpl::ResnetBlock2DImpl(const ResnetBlock2DConfig& config) : config_(config) {
  if (config_.out_channels == 0) config_.out_channels = config_.in_channels;
  const auto in = config_.in_channels, out = config_.out_channels;
  norm1 = register_module(
      "norm1",
      torch::nn::GroupNorm(torch::nn::GroupNormOptions(config_.groups, in).eps(config_.eps)));
  conv1 = register_module("conv1", conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1)));
  if (config_.temb_channels > 0) {
    time_emb_proj = register_module("time_emb_proj",
                                    linear(torch::nn::LinearOptions(config_.temb_channels, out)));
  }
  norm2 = register_module(
      "norm2",
      torch::nn::GroupNorm(torch::nn::GroupNormOptions(config_.groups, out).eps(config_.eps)));
  conv2 = register_module("conv2", conv2d(torch::nn::Conv2dOptions(out, out, 3).padding(1)));
  if (in != out) {
    conv_shortcut = register_module("conv_shortcut", conv2d(torch::nn::Conv2dOptions(in, out, 1)));
  }
}

torch::Tensor ResnetBlock2DImpl::forward(const torch::Tensor& input, const torch::Tensor& temb) {
  if (gate_) {
    gate_->record_positions(input.size(2) * input.size(3));
    if (gate_->sliced()) return forward_sliced(input, temb);
  }
  auto hidden = run(conv1, F::silu(norm1(input)));
  if (time_emb_proj && temb.defined()) {
    hidden = hidden + run(time_emb_proj, F::silu(temb)).unsqueeze(-1).unsqueeze(-1);
  }
  hidden = F::silu(norm2(hidden));
  if (gate_ && gate_->mask().defined()) {
    // [units] or [batch, units] -> per channel, broadcast over the spatial dimensions.
    auto mask = gate_->mask().to(hidden.dtype()).repeat_interleave(gate_->unit_size(), -1);
    hidden =
        hidden * (mask.dim() == 1 ? mask.view({1, -1, 1, 1}) : mask.unsqueeze(-1).unsqueeze(-1));
  }
  hidden = run(conv2, hidden);
  auto shortcut = conv_shortcut ? run(conv_shortcut, input) : input;
  auto output = shortcut + hidden;
  return config_.output_scale_factor == 1.0 ? output : output / config_.output_scale_factor;
}

// The same block on the first kept_channels() gated channels only: narrowed weights (views,
// no copies of conv1's or the projection's rows), GroupNorm over the kept groups.
torch::Tensor ResnetBlock2DImpl::forward_sliced(const torch::Tensor& input,
                                                const torch::Tensor& temb) {
  const int64_t kept = gate_->kept_channels();
  // The LoRA branches (lora_hook.h) on the same channels: conv1's and the projection's kept
  // rows, conv2's kept columns.
  const auto normed = F::silu(norm1(input));
  auto hidden = lora::add_lora(
      conv1.get(), normed,
      F::conv2d(normed, conv1->weight.narrow(0, 0, kept),
                F::Conv2dFuncOptions().bias(conv1->bias.narrow(0, 0, kept)).padding(1)),
      0, kept);
  if (time_emb_proj && temb.defined()) {
    const auto t_in = F::silu(temb);
    auto t = lora::add_lora(time_emb_proj.get(), t_in,
                            F::linear(t_in, time_emb_proj->weight.narrow(0, 0, kept),
                                      time_emb_proj->bias.narrow(0, 0, kept)),
                            0, kept);
    hidden = hidden + t.unsqueeze(-1).unsqueeze(-1);
  }
  hidden = F::silu(F::group_norm(hidden, F::GroupNormFuncOptions(gate_->kept_units())
                                             .weight(norm2->weight.narrow(0, 0, kept))
                                             .bias(norm2->bias.narrow(0, 0, kept))
                                             .eps(config_.eps)));
  hidden = lora::add_lora(conv2.get(), hidden,
                          F::conv2d(hidden, conv2->weight.narrow(1, 0, kept),
                                    F::Conv2dFuncOptions().bias(conv2->bias).padding(1)),
                          0, -1, kept);
  auto shortcut = conv_shortcut ? run(conv_shortcut, input) : input;
  auto output = shortcut + hidden;
  return config_.output_scale_factor == 1.0 ? output : output / config_.output_scale_factor;
}

void ResnetBlock2DImpl::enable_gate(const std::string& name) {
  if (gate_) return;
  const auto out = config_.out_channels;
  gate_ = std::make_shared<pruning::ChannelGate>(name, config_.groups, out / config_.groups);
}

void ResnetBlock2DImpl::reorder_units(const std::vector<int64_t>& order) {
  if (!gate_) throw std::logic_error("reorder_units on a block without a gate");
  const int64_t units = gate_->num_units(), size = gate_->unit_size();
  if (static_cast<int64_t>(order.size()) != units) {
    throw std::invalid_argument("gate " + gate_->name() + ": order has " +
                                std::to_string(order.size()) + " entries, expected " +
                                std::to_string(units));
  }
  std::vector<int64_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < units; ++i) {
    if (sorted[i] != i) {
      throw std::invalid_argument("gate " + gate_->name() + ": order is not a permutation");
    }
  }
  std::vector<int64_t> channels;
  channels.reserve(units * size);
  for (int64_t unit : order) {
    for (int64_t c = 0; c < size; ++c) channels.push_back(unit * size + c);
  }
  auto index = torch::tensor(channels, torch::kLong).to(conv1->weight.device());
  torch::NoGradGuard no_grad;
  auto permute = [&](torch::Tensor& t, int64_t dim) { t.copy_(t.index_select(dim, index)); };
  permute(conv1->weight, 0);
  permute(conv1->bias, 0);
  if (time_emb_proj) {
    permute(time_emb_proj->weight, 0);
    permute(time_emb_proj->bias, 0);
  }
  permute(norm2->weight, 0);
  permute(norm2->bias, 0);
  permute(conv2->weight, 1);
}

at::Tensor ResnetBlock2DImpl::magnitude_scores() const {
  torch::NoGradGuard no_grad;
  const int64_t groups = config_.groups;
  // L1 norm of each output channel's kernel (any memory format), summed per group.
  const auto per_channel = conv1->weight.detach().abs().sum({1, 2, 3});
  return per_channel.reshape({groups, -1}).sum(1).to(torch::kFloat).cpu();
}

int64_t ResnetBlock2DImpl::unit_macs(int64_t positions) const {
  const int64_t size = gate_ ? gate_->unit_size() : config_.out_channels / config_.groups;
  const int64_t temb = time_emb_proj ? size * config_.temb_channels : 0;
  return size * (config_.in_channels * 9 + config_.out_channels * 9) * positions + temb;
}

Downsample2DImpl::Downsample2DImpl(int64_t channels, int64_t out_channels, int64_t padding)
    : padding_(padding) {
  conv = register_module(
      "conv",
      conv2d(torch::nn::Conv2dOptions(channels, out_channels, 3).stride(2).padding(padding)));
}

torch::Tensor Downsample2DImpl::forward(const torch::Tensor& input) {
  if (padding_ == 0) {
    return run(conv, F::pad(input, F::PadFuncOptions({0, 1, 0, 1}).mode(torch::kConstant).value(0)));
  }
  return run(conv, input);
}

Upsample2DImpl::Upsample2DImpl(int64_t channels, int64_t out_channels) {
  conv = register_module("conv",
                         conv2d(torch::nn::Conv2dOptions(channels, out_channels, 3).padding(1)));
}

torch::Tensor Upsample2DImpl::forward(const torch::Tensor& input,
                                      std::optional<std::pair<int64_t, int64_t>> output_size) {
  // As diffusers: nearest upsampling runs in float32 for bfloat16 inputs, and on a contiguous
  // copy for batches of 64 or more (the NHWC kernel fails on large batches, diffusers#984).
  auto x = input.scalar_type() == torch::kBFloat16 ? input.to(torch::kFloat32) : input;
  if (x.size(0) >= 64) x = x.contiguous();
  auto options = F::InterpolateFuncOptions().mode(torch::kNearest);
  if (output_size) {
    options.size(std::vector<int64_t>{output_size->first, output_size->second});
  } else {
    options.scale_factor(std::vector<double>{2.0, 2.0});
  }
  x = F::interpolate(x, options);
  if (x.scalar_type() != input.scalar_type()) x = x.to(input.scalar_type());
  return run(conv, x);
}

}  // namespace ldcp::models
