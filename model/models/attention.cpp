#include "model/models/attention.h"

#include <algorithm>

#include <stdexcept>
#include <string>

#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/nn/functional/activation.h>

#include "model/lora/lora_hook.h"
#include "model/models/layers.h"
#include "model/runtime/linear_backend.h"

namespace ldcp::models {

namespace F = torch::nn::functional;

namespace {
// A Linear layer through the process's CPU linear backend (ATen or oneDNN: linear_backend.h),
// plus the active LoRA branch (model/lora/lora_hook.h).
torch::Tensor run_linear(const torch::nn::Linear& layer, const torch::Tensor& x) {
  return lora::add_lora(layer.get(), x, runtime::linear(x, layer->weight, layer->bias));
}

// A Conv2d layer plus the active LoRA branch.
torch::Tensor run_conv(torch::nn::Conv2d& layer, const torch::Tensor& x) {
  return lora::add_lora(layer.get(), x, layer->forward(x));
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// Attention

AttentionImpl::AttentionImpl(const AttentionConfig& config) : config_(config) {
  const int64_t kv_dim =
      config_.cross_attention_dim > 0 ? config_.cross_attention_dim : config_.query_dim;
  const int64_t inner = inner_dim();
  to_q = register_module(
      "to_q", linear(torch::nn::LinearOptions(config_.query_dim, inner).bias(config_.bias)));
  to_k =
      register_module("to_k", linear(torch::nn::LinearOptions(kv_dim, inner).bias(config_.bias)));
  to_v =
      register_module("to_v", linear(torch::nn::LinearOptions(kv_dim, inner).bias(config_.bias)));
  to_out_proj = linear(torch::nn::LinearOptions(inner, config_.query_dim).bias(config_.out_bias));
  to_out = register_module("to_out", torch::nn::ModuleList(to_out_proj, torch::nn::Dropout(0.0)));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& hidden_states,
                                     const torch::Tensor& encoder_hidden_states) {
  // AttnProcessor2_0 for 3-D input, no mask.
  const auto& context = encoder_hidden_states.defined() ? encoder_hidden_states : hidden_states;
  const int64_t batch = hidden_states.size(0);
  auto query = run_linear(to_q, hidden_states);
  auto key = run_linear(to_k, context);
  auto value = run_linear(to_v, context);

  const int64_t heads = config_.heads;
  const int64_t head_dim = key.size(-1) / heads;
  query = query.view({batch, -1, heads, head_dim}).transpose(1, 2);
  key = key.view({batch, -1, heads, head_dim}).transpose(1, 2);
  value = value.view({batch, -1, heads, head_dim}).transpose(1, 2);

  auto out = at::scaled_dot_product_attention(query, key, value);
  out = out.transpose(1, 2).reshape({batch, -1, heads * head_dim}).to(query.scalar_type());
  return run_linear(to_out_proj, out);  // to_out[1] is a Dropout: the identity at inference
}

// ---------------------------------------------------------------------------------------------
// GEGLU, FeedForward

GEGLUImpl::GEGLUImpl(int64_t dim_in, int64_t dim_out, bool bias) {
  proj = register_module("proj", linear(torch::nn::LinearOptions(dim_in, dim_out * 2).bias(bias)));
}

torch::Tensor GEGLUImpl::forward(const torch::Tensor& hidden_states) {
  auto chunks = run_linear(proj, hidden_states).chunk(2, -1);
  return chunks[0] * F::gelu(chunks[1]);
}

FeedForwardImpl::FeedForwardImpl(const FeedForwardConfig& config) : config_(config) {
  if (config_.inner_dim == 0) config_.inner_dim = config_.dim * config_.mult;
  if (config_.dim_out == 0) config_.dim_out = config_.dim;
  act = GEGLU(config_.dim, config_.inner_dim, config_.bias);
  proj_out =
      linear(torch::nn::LinearOptions(config_.inner_dim, config_.dim_out).bias(config_.bias));
  net = register_module("net", torch::nn::ModuleList(act, torch::nn::Dropout(0.0), proj_out));
}

torch::Tensor FeedForwardImpl::forward(const torch::Tensor& hidden_states) {
  // net[1] is a Dropout: the identity at inference.
  if (!gate_) return run_linear(proj_out, act(hidden_states));
  gate_->record_positions(hidden_states.size(-2));
  if (gate_->sliced()) return forward_sliced(hidden_states);
  auto inner = act(hidden_states);
  if (gate_->mask().defined()) {
    // [units] or [batch, units] -> per inner channel, broadcast over the tokens.
    auto mask = gate_->mask().to(inner.dtype()).repeat_interleave(gate_->unit_size(), -1);
    inner = inner * (mask.dim() == 1 ? mask : mask.unsqueeze(1));
  }
  return run_linear(proj_out, inner);
}

// The first kept_channels() inner channels only: two narrowed products for the hidden and gate
// halves of proj (views of its rows) and net.2 on the matching columns (a strided view that
// the matrix product reads in place).
torch::Tensor FeedForwardImpl::forward_sliced(const torch::Tensor& hidden_states) {
  const int64_t kept = gate_->kept_channels(), inner = config_.inner_dim;
  const auto& w = act->proj->weight;
  const auto& b = act->proj->bias;
  auto half = [&](int64_t offset) {
    return lora::add_lora(act->proj.get(), hidden_states,
                          runtime::linear(hidden_states, w.narrow(0, offset, kept),
                                          b.defined() ? b.narrow(0, offset, kept) : torch::Tensor()),
                          offset, kept);
  };
  auto activated = half(0) * F::gelu(half(inner));
  return lora::add_lora(
      proj_out.get(), activated,
      runtime::linear(activated, proj_out->weight.narrow(1, 0, kept), proj_out->bias), 0, -1, kept);
}

void FeedForwardImpl::enable_gate(const std::string& name) {
  if (gate_) return;
  int64_t units = std::min(kMaxUnits, config_.inner_dim);
  while (config_.inner_dim % units != 0) --units;
  gate_ = std::make_shared<pruning::ChannelGate>(name, units, config_.inner_dim / units);
}

void FeedForwardImpl::reorder_units(const std::vector<int64_t>& order) {
  if (!gate_) throw std::logic_error("reorder_units on a feed-forward without a gate");
  const int64_t units = gate_->num_units(), size = gate_->unit_size(), inner = config_.inner_dim;
  std::vector<int64_t> sorted = order;
  std::sort(sorted.begin(), sorted.end());
  if (static_cast<int64_t>(order.size()) != units) {
    throw std::invalid_argument("gate " + gate_->name() + ": order has " +
                                std::to_string(order.size()) + " entries, expected " +
                                std::to_string(units));
  }
  for (int64_t i = 0; i < units; ++i) {
    if (sorted[i] != i) {
      throw std::invalid_argument("gate " + gate_->name() + ": order is not a permutation");
    }
  }
  std::vector<int64_t> channels, both_halves;
  for (int64_t unit : order) {
    for (int64_t c = 0; c < size; ++c) channels.push_back(unit * size + c);
  }
  both_halves = channels;
  for (int64_t c : channels) both_halves.push_back(inner + c);
  const auto device = proj_out->weight.device();
  auto index = torch::tensor(channels, torch::kLong).to(device);
  auto index2 = torch::tensor(both_halves, torch::kLong).to(device);
  torch::NoGradGuard no_grad;
  auto& w = act->proj->weight;
  w.copy_(w.index_select(0, index2));
  if (act->proj->bias.defined()) act->proj->bias.copy_(act->proj->bias.index_select(0, index2));
  proj_out->weight.copy_(proj_out->weight.index_select(1, index));
}

int64_t FeedForwardImpl::unit_macs(int64_t positions) const {
  const int64_t size = gate_ ? gate_->unit_size() : config_.inner_dim / kMaxUnits;
  return size * (2 * config_.dim + config_.dim_out) * positions;
}

at::Tensor FeedForwardImpl::magnitude_scores() const {
  torch::NoGradGuard no_grad;
  const int64_t units = gate_ ? gate_->num_units() : kMaxUnits, inner = config_.inner_dim;
  auto rows = act->proj->weight.detach().abs().sum(1);  // [2 * inner]
  auto per_channel = rows.narrow(0, 0, inner) + rows.narrow(0, inner, inner);
  return per_channel.reshape({units, -1}).sum(1).to(torch::kFloat).cpu();
}

// ---------------------------------------------------------------------------------------------
// BasicTransformerBlock

namespace {

torch::nn::LayerNorm layer_norm(int64_t dim, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(eps).elementwise_affine(true));
}

}  // namespace

BasicTransformerBlockImpl::BasicTransformerBlockImpl(const BasicTransformerBlockConfig& config)
    : config_(config) {
  AttentionConfig attn;
  attn.query_dim = config_.dim;
  attn.heads = config_.num_attention_heads;
  attn.dim_head = config_.attention_head_dim;
  attn.bias = config_.attention_bias;
  attn.upcast_attention = config_.upcast_attention;

  norm1 = register_module("norm1", layer_norm(config_.dim, config_.norm_eps));
  AttentionConfig attn1_config = attn;
  attn1_config.cross_attention_dim = config_.only_cross_attention ? config_.cross_attention_dim : 0;
  attn1 = register_module("attn1", Attention(attn1_config));

  if (config_.cross_attention_dim > 0) {
    norm2 = register_module("norm2", layer_norm(config_.dim, config_.norm_eps));
    AttentionConfig attn2_config = attn;
    attn2_config.cross_attention_dim = config_.cross_attention_dim;
    attn2 = register_module("attn2", Attention(attn2_config));
  }

  norm3 = register_module("norm3", layer_norm(config_.dim, config_.norm_eps));
  FeedForwardConfig ff_config;
  ff_config.dim = config_.dim;
  ff = register_module("ff", FeedForward(ff_config));
}

torch::Tensor BasicTransformerBlockImpl::forward(const torch::Tensor& hidden_states,
                                                 const torch::Tensor& encoder_hidden_states) {
  auto hidden = hidden_states;
  auto attn_output =
      attn1(norm1(hidden), config_.only_cross_attention ? encoder_hidden_states : torch::Tensor());
  hidden = attn_output + hidden;

  if (attn2) hidden = attn2(norm2(hidden), encoder_hidden_states) + hidden;

  hidden = ff(norm3(hidden)) + hidden;
  return hidden;
}

// ---------------------------------------------------------------------------------------------
// Transformer2DModel

Transformer2DModelImpl::Transformer2DModelImpl(const Transformer2DModelConfig& config)
    : config_(config) {
  if (config_.out_channels == 0) config_.out_channels = config_.in_channels;
  const int64_t in = config_.in_channels, out = config_.out_channels, inner = inner_dim();
  if (in <= 0 || inner <= 0) {
    throw std::invalid_argument("Transformer2DModel: in_channels (" + std::to_string(in) +
                                ") and heads x head_dim (" + std::to_string(inner) +
                                ") must be positive");
  }

  norm = register_module(
      "norm", torch::nn::GroupNorm(
                  torch::nn::GroupNormOptions(config_.norm_num_groups, in).eps(1e-6).affine(true)));
  if (config_.use_linear_projection) {
    proj_in_linear = register_module("proj_in", linear(torch::nn::LinearOptions(in, inner)));
  } else {
    proj_in_conv = register_module("proj_in", conv2d(torch::nn::Conv2dOptions(in, inner, 1)));
  }

  transformer_blocks = register_module("transformer_blocks", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    BasicTransformerBlockConfig block;
    block.dim = inner;
    block.num_attention_heads = config_.num_attention_heads;
    block.attention_head_dim = config_.attention_head_dim;
    block.cross_attention_dim = config_.cross_attention_dim;
    block.attention_bias = config_.attention_bias;
    block.only_cross_attention = config_.only_cross_attention;
    block.upcast_attention = config_.upcast_attention;
    block.norm_eps = config_.norm_eps;
    block_modules.emplace_back(block);
    transformer_blocks->push_back(block_modules.back());
  }

  if (config_.use_linear_projection) {
    proj_out_linear = register_module("proj_out", linear(torch::nn::LinearOptions(inner, out)));
  } else {
    proj_out_conv = register_module("proj_out", conv2d(torch::nn::Conv2dOptions(inner, out, 1)));
  }
}

torch::Tensor Transformer2DModelImpl::forward(const torch::Tensor& hidden_states,
                                              const torch::Tensor& encoder_hidden_states) {
  const int64_t batch = hidden_states.size(0), height = hidden_states.size(2),
                width = hidden_states.size(3);
  const auto& residual = hidden_states;

  // 1. Input: [B, C, H, W] -> [B, H*W, inner]
  auto hidden = norm(hidden_states);
  if (proj_in_conv) {
    hidden = run_conv(proj_in_conv, hidden);
    const int64_t channels = hidden.size(1);
    hidden = hidden.permute({0, 2, 3, 1}).reshape({batch, height * width, channels});
  } else {
    const int64_t channels = hidden.size(1);
    hidden = hidden.permute({0, 2, 3, 1}).reshape({batch, height * width, channels});
    hidden = run_linear(proj_in_linear, hidden);
  }

  // 2. Blocks
  for (auto& block : block_modules) hidden = block(hidden, encoder_hidden_states);

  // 3. Output: back to [B, C, H, W] in the input's layout (a free view when channels-last),
  // plus the residual
  const auto layout = residual.suggest_memory_format();
  if (proj_out_conv) {
    hidden = hidden.reshape({batch, height, width, hidden.size(-1)})
                 .permute({0, 3, 1, 2})
                 .contiguous(layout);
    hidden = run_conv(proj_out_conv, hidden);
  } else {
    hidden = run_linear(proj_out_linear, hidden);
    hidden = hidden.reshape({batch, height, width, hidden.size(-1)})
                 .permute({0, 3, 1, 2})
                 .contiguous(layout);
  }
  return hidden + residual;
}

}  // namespace ldcp::models
