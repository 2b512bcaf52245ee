#include "model/models/autoencoders/vae.h"

#include <stdexcept>
#include <string>

#include <ATen/ops/randn.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/nn/modules/dropout.h>

#include "model/models/layers.h"

namespace ldcp::models {

namespace {

torch::nn::GroupNorm make_group_norm(int64_t groups, int64_t channels, double eps) {
  return torch::nn::GroupNorm(torch::nn::GroupNormOptions(groups, channels).eps(eps));
}

torch::nn::Conv2d conv3x3(int64_t in, int64_t out) {
  return conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1));
}

}  // namespace

// ---- SpatialSelfAttention ----

SpatialSelfAttentionImpl::SpatialSelfAttentionImpl(const SpatialSelfAttentionConfig& config)
    : config_(config) {
  const auto channels = config_.channels;
  if (config_.heads <= 0 || channels % config_.heads != 0) {
    throw std::invalid_argument("SpatialSelfAttention: " + std::to_string(channels) +
                                " channels do not split into " + std::to_string(config_.heads) +
                                " heads");
  }
  if (config_.norm_num_groups > 0) {
    group_norm = register_module("group_norm",
                                 make_group_norm(config_.norm_num_groups, channels, config_.eps));
  }
  // inner_dim = heads * dim_head = channels, with biases (Attention(bias=True)).
  to_q = register_module("to_q", linear(torch::nn::LinearOptions(channels, channels)));
  to_k = register_module("to_k", linear(torch::nn::LinearOptions(channels, channels)));
  to_v = register_module("to_v", linear(torch::nn::LinearOptions(channels, channels)));
  to_out = register_module("to_out", torch::nn::ModuleList());
  to_out->push_back(linear(torch::nn::LinearOptions(channels, channels)));
  to_out->push_back(torch::nn::Dropout(0.0));
}

torch::Tensor SpatialSelfAttentionImpl::forward(const torch::Tensor& input) {
  // AttnProcessor2_0 with a 4-D input, no encoder states, no mask, no spatial norm.
  const auto residual = input;
  const auto batch = input.size(0), channels = input.size(1), height = input.size(2),
             width = input.size(3);
  auto hidden = input.reshape({batch, channels, height * width}).transpose(1, 2);
  if (group_norm) hidden = group_norm(hidden.transpose(1, 2)).transpose(1, 2);

  auto query = to_q(hidden);
  auto key = to_k(hidden);
  auto value = to_v(hidden);
  const auto heads = config_.heads;
  const auto head_dim = key.size(-1) / heads;
  query = query.view({batch, -1, heads, head_dim}).transpose(1, 2);
  key = key.view({batch, -1, heads, head_dim}).transpose(1, 2);
  value = value.view({batch, -1, heads, head_dim}).transpose(1, 2);

  hidden = at::scaled_dot_product_attention(query, key, value);
  hidden = hidden.transpose(1, 2).reshape({batch, -1, heads * head_dim}).to(query.scalar_type());
  hidden = to_out[0]->as<torch::nn::Linear>()->forward(hidden);  // to_out[1] is Dropout(0)

  // [B, H*W, C] -> [B, C, H, W] in the input's layout (a free view when channels-last)
  hidden = hidden.reshape({batch, height, width, channels})
               .permute({0, 3, 1, 2})
               .contiguous(input.suggest_memory_format());
  if (config_.residual_connection) hidden = hidden + residual;
  return hidden / config_.rescale_output_factor;
}

// ---- UNetMidBlock2D ----

UNetMidBlock2DImpl::UNetMidBlock2DImpl(const UNetMidBlock2DConfig& config) : config_(config) {
  const auto channels = config_.in_channels;
  ResnetBlock2DConfig resnet;
  resnet.in_channels = channels;
  resnet.out_channels = channels;
  resnet.temb_channels = config_.temb_channels;
  resnet.groups = config_.resnet_groups;
  resnet.eps = config_.resnet_eps;
  resnet.output_scale_factor = config_.output_scale_factor;

  SpatialSelfAttentionConfig attention;
  attention.channels = channels;
  attention.heads = channels / config_.attention_head_dim;
  attention.norm_num_groups = config_.attn_groups > 0 ? config_.attn_groups : config_.resnet_groups;
  attention.eps = config_.resnet_eps;
  attention.rescale_output_factor = config_.output_scale_factor;
  attention.residual_connection = true;

  attentions = register_module("attentions", torch::nn::ModuleList());
  resnets = register_module("resnets", torch::nn::ModuleList());
  resnets->push_back(ResnetBlock2D(resnet));  // there is always at least one resnet
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    if (config_.add_attention) attentions->push_back(SpatialSelfAttention(attention));
    resnets->push_back(ResnetBlock2D(resnet));
  }
}

torch::Tensor UNetMidBlock2DImpl::forward(const torch::Tensor& input, const torch::Tensor& temb) {
  auto hidden = resnets[0]->as<ResnetBlock2D>()->forward(input, temb);
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    if (config_.add_attention) hidden = attentions[i]->as<SpatialSelfAttention>()->forward(hidden);
    hidden = resnets[i + 1]->as<ResnetBlock2D>()->forward(hidden, temb);
  }
  return hidden;
}

// ---- DownEncoderBlock2D ----

DownEncoderBlock2DImpl::DownEncoderBlock2DImpl(const DownEncoderBlock2DConfig& config) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_layers; ++i) {
    ResnetBlock2DConfig resnet;
    resnet.in_channels = i == 0 ? config.in_channels : config.out_channels;
    resnet.out_channels = config.out_channels;
    resnet.temb_channels = 0;
    resnet.groups = config.resnet_groups;
    resnet.eps = config.resnet_eps;
    resnet.output_scale_factor = config.output_scale_factor;
    resnets->push_back(ResnetBlock2D(resnet));
  }
  if (config.add_downsample) {
    downsamplers = register_module("downsamplers", torch::nn::ModuleList());
    downsamplers->push_back(
        Downsample2D(config.out_channels, config.out_channels, config.downsample_padding));
  }
}

torch::Tensor DownEncoderBlock2DImpl::forward(const torch::Tensor& input) {
  auto hidden = input;
  for (const auto& resnet : *resnets) hidden = resnet->as<ResnetBlock2D>()->forward(hidden);
  if (downsamplers) {
    for (const auto& down : *downsamplers) hidden = down->as<Downsample2D>()->forward(hidden);
  }
  return hidden;
}

// ---- UpDecoderBlock2D ----

UpDecoderBlock2DImpl::UpDecoderBlock2DImpl(const UpDecoderBlock2DConfig& config) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_layers; ++i) {
    ResnetBlock2DConfig resnet;
    resnet.in_channels = i == 0 ? config.in_channels : config.out_channels;
    resnet.out_channels = config.out_channels;
    resnet.temb_channels = config.temb_channels;
    resnet.groups = config.resnet_groups;
    resnet.eps = config.resnet_eps;
    resnet.output_scale_factor = config.output_scale_factor;
    resnets->push_back(ResnetBlock2D(resnet));
  }
  if (config.add_upsample) {
    upsamplers = register_module("upsamplers", torch::nn::ModuleList());
    upsamplers->push_back(Upsample2D(config.out_channels, config.out_channels));
  }
}

torch::Tensor UpDecoderBlock2DImpl::forward(const torch::Tensor& input, const torch::Tensor& temb) {
  auto hidden = input;
  for (const auto& resnet : *resnets) hidden = resnet->as<ResnetBlock2D>()->forward(hidden, temb);
  if (upsamplers) {
    for (const auto& up : *upsamplers) hidden = up->as<Upsample2D>()->forward(hidden);
  }
  return hidden;
}

// ---- Encoder ----

EncoderImpl::EncoderImpl(const EncoderConfig& config) {
  const auto& channels = config.block_out_channels;
  if (channels.empty()) throw std::invalid_argument("Encoder: block_out_channels is empty");
  conv_in = register_module("conv_in", conv3x3(config.in_channels, channels.front()));

  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  int64_t output_channel = channels.front();
  for (size_t i = 0; i < channels.size(); ++i) {
    DownEncoderBlock2DConfig block;
    block.in_channels = output_channel;
    output_channel = channels[i];
    block.out_channels = output_channel;
    block.num_layers = config.layers_per_block;
    block.resnet_eps = 1e-6;
    block.resnet_groups = config.norm_num_groups;
    block.add_downsample = i + 1 != channels.size();
    block.downsample_padding = 0;
    down_blocks->push_back(DownEncoderBlock2D(block));
  }

  UNetMidBlock2DConfig mid;
  mid.in_channels = channels.back();
  mid.resnet_eps = 1e-6;
  mid.resnet_groups = config.norm_num_groups;
  mid.attention_head_dim = channels.back();
  mid.add_attention = config.mid_block_add_attention;
  mid_block = register_module("mid_block", UNetMidBlock2D(mid));

  conv_norm_out = register_module("conv_norm_out",
                                  make_group_norm(config.norm_num_groups, channels.back(), 1e-6));
  const auto out_channels = config.double_z ? 2 * config.out_channels : config.out_channels;
  conv_out = register_module("conv_out", conv3x3(channels.back(), out_channels));
}

torch::Tensor EncoderImpl::forward(const torch::Tensor& input) {
  auto sample = conv_in(input);
  for (const auto& block : *down_blocks) sample = block->as<DownEncoderBlock2D>()->forward(sample);
  sample = mid_block(sample);
  sample = torch::silu(conv_norm_out(sample));
  return conv_out(sample);
}

// ---- Decoder ----

DecoderImpl::DecoderImpl(const DecoderConfig& config) {
  const auto& channels = config.block_out_channels;
  if (channels.empty()) throw std::invalid_argument("Decoder: block_out_channels is empty");
  conv_in = register_module("conv_in", conv3x3(config.in_channels, channels.back()));

  UNetMidBlock2DConfig mid;
  mid.in_channels = channels.back();
  mid.resnet_eps = 1e-6;
  mid.resnet_groups = config.norm_num_groups;
  mid.attention_head_dim = channels.back();
  mid.add_attention = config.mid_block_add_attention;
  mid_block = register_module("mid_block", UNetMidBlock2D(mid));

  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  const std::vector<int64_t> reversed(channels.rbegin(), channels.rend());
  int64_t output_channel = reversed.front();
  for (size_t i = 0; i < reversed.size(); ++i) {
    UpDecoderBlock2DConfig block;
    block.in_channels = output_channel;  // prev_output_channel
    output_channel = reversed[i];
    block.out_channels = output_channel;
    block.num_layers = config.layers_per_block + 1;
    block.resnet_eps = 1e-6;
    block.resnet_groups = config.norm_num_groups;
    block.add_upsample = i + 1 != reversed.size();
    up_blocks->push_back(UpDecoderBlock2D(block));
  }

  conv_norm_out = register_module("conv_norm_out",
                                  make_group_norm(config.norm_num_groups, channels.front(), 1e-6));
  conv_out = register_module("conv_out", conv3x3(channels.front(), config.out_channels));
}

torch::Tensor DecoderImpl::forward(const torch::Tensor& input) {
  // diffusers 0.42.1's Decoder casts nothing: every stage runs in the dtype of its weights (an
  // fp32 VAE decodes fp32 latents; the pipelines upcast the whole VAE when force_upcast asks).
  auto sample = conv_in(input);
  sample = mid_block(sample);
  for (const auto& block : *up_blocks) sample = block->as<UpDecoderBlock2D>()->forward(sample);
  sample = torch::silu(conv_norm_out(sample));
  return conv_out(sample);
}

// ---- DiagonalGaussianDistribution ----

DiagonalGaussianDistribution::DiagonalGaussianDistribution(const torch::Tensor& params)
    : parameters(params) {
  auto chunks = params.chunk(2, 1);
  mean = chunks[0];
  logvar = chunks[1].clamp(-30.0, 20.0);
  std = (0.5 * logvar).exp();
  var = logvar.exp();
}

torch::Tensor DiagonalGaussianDistribution::sample(::std::optional<at::Generator> generator) const {
  const auto device = parameters.device();
  auto options = parameters.options();
  if (generator && generator->device().type() != device.type()) {
    // randn_tensor: a CPU generator draws on the CPU and the noise moves; others must match.
    if (!generator->device().is_cpu()) {
      throw ::std::invalid_argument("DiagonalGaussianDistribution::sample: cannot draw a " +
                                    device.str() + " tensor from a " + generator->device().str() +
                                    " generator");
    }
    options = options.device(torch::kCPU);
  }
  auto noise = at::randn(mean.sizes(), generator, options).to(device);
  return mean + this->std * noise;
}

}  // namespace ldcp::models
