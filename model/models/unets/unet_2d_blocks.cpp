#include "model/models/unets/unet_2d_blocks.h"

#include <stdexcept>
#include <string>

namespace ldcp::models {

namespace {

ResnetBlock2D make_resnet(const UNetBlockConfig& config, int64_t in_channels,
                          int64_t out_channels) {
  ResnetBlock2DConfig resnet;
  resnet.in_channels = in_channels;
  resnet.out_channels = out_channels;
  resnet.temb_channels = config.temb_channels;
  resnet.groups = config.resnet_groups;
  resnet.eps = config.resnet_eps;
  resnet.output_scale_factor = config.output_scale_factor;
  return ResnetBlock2D(resnet);
}

// Transformer2DModel(num_attention_heads, out_channels // num_attention_heads, ...) as the
// cross-attention blocks build it.
Transformer2DModel make_transformer(const UNetBlockConfig& config, int64_t channels,
                                    const char* block) {
  if (config.num_attention_heads <= 0 || channels % config.num_attention_heads != 0) {
    throw std::invalid_argument(std::string(block) + ": " + std::to_string(channels) +
                                " channels do not split into " +
                                std::to_string(config.num_attention_heads) + " attention heads");
  }
  Transformer2DModelConfig transformer;
  transformer.num_attention_heads = config.num_attention_heads;
  transformer.attention_head_dim = channels / config.num_attention_heads;
  transformer.in_channels = channels;
  transformer.num_layers = config.transformer_layers_per_block;
  transformer.cross_attention_dim = config.cross_attention_dim;
  transformer.norm_num_groups = config.resnet_groups;
  transformer.use_linear_projection = config.use_linear_projection;
  transformer.only_cross_attention = config.only_cross_attention;
  transformer.upcast_attention = config.upcast_attention;
  return Transformer2DModel(transformer);
}

// Input width of an up block's i-th resnet: the incoming hidden states plus the skip state
// (the block's own width, except the last layer's, which comes from the next block down).
int64_t up_resnet_in_channels(const UNetBlockConfig& config, int64_t i) {
  const int64_t res_skip_channels =
      i == config.num_layers - 1 ? config.in_channels : config.out_channels;
  const int64_t resnet_in_channels = i == 0 ? config.prev_output_channel : config.out_channels;
  return resnet_in_channels + res_skip_channels;
}

void check_skip_count(const std::vector<torch::Tensor>& res_hidden_states, size_t expected,
                      const char* block) {
  if (res_hidden_states.size() != expected) {
    throw std::invalid_argument(std::string(block) + ": expected " + std::to_string(expected) +
                                " skip states, got " + std::to_string(res_hidden_states.size()));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// CrossAttnDownBlock2D

CrossAttnDownBlock2DImpl::CrossAttnDownBlock2DImpl(const UNetBlockConfig& config)
    : config_(config) {
  attentions = register_module("attentions", torch::nn::ModuleList());
  resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const int64_t in = i == 0 ? config_.in_channels : config_.out_channels;
    resnet_modules.push_back(make_resnet(config_, in, config_.out_channels));
    resnets->push_back(resnet_modules.back());
    attention_modules.push_back(
        make_transformer(config_, config_.out_channels, "CrossAttnDownBlock2D"));
    attentions->push_back(attention_modules.back());
  }
  if (config_.add_downsample) {
    downsampler =
        Downsample2D(config_.out_channels, config_.out_channels, config_.downsample_padding);
    downsamplers = register_module("downsamplers", torch::nn::ModuleList(downsampler));
  }
}

DownBlockOutput CrossAttnDownBlock2DImpl::forward(const torch::Tensor& hidden_states,
                                                  const torch::Tensor& temb,
                                                  const torch::Tensor& encoder_hidden_states) {
  DownBlockOutput out{hidden_states, {}};
  for (size_t i = 0; i < resnet_modules.size(); ++i) {
    out.hidden_states = resnet_modules[i](out.hidden_states, temb);
    out.hidden_states = attention_modules[i](out.hidden_states, encoder_hidden_states);
    out.output_states.push_back(out.hidden_states);
  }
  if (downsampler) {
    out.hidden_states = downsampler(out.hidden_states);
    out.output_states.push_back(out.hidden_states);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// DownBlock2D

DownBlock2DImpl::DownBlock2DImpl(const UNetBlockConfig& config) : config_(config) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    const int64_t in = i == 0 ? config_.in_channels : config_.out_channels;
    resnet_modules.push_back(make_resnet(config_, in, config_.out_channels));
    resnets->push_back(resnet_modules.back());
  }
  if (config_.add_downsample) {
    downsampler =
        Downsample2D(config_.out_channels, config_.out_channels, config_.downsample_padding);
    downsamplers = register_module("downsamplers", torch::nn::ModuleList(downsampler));
  }
}

DownBlockOutput DownBlock2DImpl::forward(const torch::Tensor& hidden_states,
                                         const torch::Tensor& temb) {
  DownBlockOutput out{hidden_states, {}};
  for (auto& resnet : resnet_modules) {
    out.hidden_states = resnet(out.hidden_states, temb);
    out.output_states.push_back(out.hidden_states);
  }
  if (downsampler) {
    out.hidden_states = downsampler(out.hidden_states);
    out.output_states.push_back(out.hidden_states);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// UNetMidBlock2DCrossAttn

UNetMidBlock2DCrossAttnImpl::UNetMidBlock2DCrossAttnImpl(const UNetBlockConfig& config)
    : config_(config) {
  config_.out_channels = config_.in_channels;
  const int64_t channels = config_.in_channels;
  attentions = register_module("attentions", torch::nn::ModuleList());
  resnets = register_module("resnets", torch::nn::ModuleList());
  // There is always at least one resnet.
  resnet_modules.push_back(make_resnet(config_, channels, channels));
  resnets->push_back(resnet_modules.back());
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    attention_modules.push_back(make_transformer(config_, channels, "UNetMidBlock2DCrossAttn"));
    attentions->push_back(attention_modules.back());
    resnet_modules.push_back(make_resnet(config_, channels, channels));
    resnets->push_back(resnet_modules.back());
  }
}

torch::Tensor UNetMidBlock2DCrossAttnImpl::forward(const torch::Tensor& hidden_states,
                                                   const torch::Tensor& temb,
                                                   const torch::Tensor& encoder_hidden_states) {
  auto hidden = resnet_modules[0](hidden_states, temb);
  for (size_t i = 0; i < attention_modules.size(); ++i) {
    hidden = attention_modules[i](hidden, encoder_hidden_states);
    hidden = resnet_modules[i + 1](hidden, temb);
  }
  return hidden;
}

// ---------------------------------------------------------------------------------------------
// CrossAttnUpBlock2D

CrossAttnUpBlock2DImpl::CrossAttnUpBlock2DImpl(const UNetBlockConfig& config) : config_(config) {
  attentions = register_module("attentions", torch::nn::ModuleList());
  resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    resnet_modules.push_back(
        make_resnet(config_, up_resnet_in_channels(config_, i), config_.out_channels));
    resnets->push_back(resnet_modules.back());
    attention_modules.push_back(
        make_transformer(config_, config_.out_channels, "CrossAttnUpBlock2D"));
    attentions->push_back(attention_modules.back());
  }
  if (config_.add_upsample) {
    upsampler = Upsample2D(config_.out_channels, config_.out_channels);
    upsamplers = register_module("upsamplers", torch::nn::ModuleList(upsampler));
  }
}

torch::Tensor CrossAttnUpBlock2DImpl::forward(const torch::Tensor& hidden_states,
                                              const std::vector<torch::Tensor>& res_hidden_states,
                                              const torch::Tensor& temb,
                                              const torch::Tensor& encoder_hidden_states,
                                              const UpsampleSize& upsample_size) {
  check_skip_count(res_hidden_states, resnet_modules.size(), "CrossAttnUpBlock2D");
  auto hidden = hidden_states;
  auto skip = res_hidden_states.rbegin();  // pop from the end
  for (size_t i = 0; i < resnet_modules.size(); ++i, ++skip) {
    hidden = torch::cat({hidden, *skip}, 1);
    hidden = resnet_modules[i](hidden, temb);
    hidden = attention_modules[i](hidden, encoder_hidden_states);
  }
  if (upsampler) hidden = upsampler(hidden, upsample_size);
  return hidden;
}

// ---------------------------------------------------------------------------------------------
// UpBlock2D

UpBlock2DImpl::UpBlock2DImpl(const UNetBlockConfig& config) : config_(config) {
  resnets = register_module("resnets", torch::nn::ModuleList());
  for (int64_t i = 0; i < config_.num_layers; ++i) {
    resnet_modules.push_back(
        make_resnet(config_, up_resnet_in_channels(config_, i), config_.out_channels));
    resnets->push_back(resnet_modules.back());
  }
  if (config_.add_upsample) {
    upsampler = Upsample2D(config_.out_channels, config_.out_channels);
    upsamplers = register_module("upsamplers", torch::nn::ModuleList(upsampler));
  }
}

torch::Tensor UpBlock2DImpl::forward(const torch::Tensor& hidden_states,
                                     const std::vector<torch::Tensor>& res_hidden_states,
                                     const torch::Tensor& temb, const UpsampleSize& upsample_size) {
  check_skip_count(res_hidden_states, resnet_modules.size(), "UpBlock2D");
  auto hidden = hidden_states;
  auto skip = res_hidden_states.rbegin();
  for (size_t i = 0; i < resnet_modules.size(); ++i, ++skip) {
    hidden = torch::cat({hidden, *skip}, 1);
    hidden = resnet_modules[i](hidden, temb);
  }
  if (upsampler) hidden = upsampler(hidden, upsample_size);
  return hidden;
}

}  // namespace ldcp::models
