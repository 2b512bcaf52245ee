#include "model/models/unets/unet_2d_condition.h"

#include <algorithm>
#include <set>
#include <sstream>
#include <stdexcept>

#include "model/io/json_file.h"
#include "model/lora/lora_hook.h"
#include "model/models/layers.h"

namespace ldcp::models {

using io::ConfigError;

// ---------------------------------------------------------------------------------------------
// UNet2DConditionModel

UNet2DConditionModelImpl::UNet2DConditionModelImpl(const UNet2DConditionConfig& config)
    : config_(config) {
  config_.validate();
  const auto& c = config_;
  const size_t n = c.num_blocks();
  const auto& channels = c.block_out_channels;

  // input
  conv_in = register_module(
      "conv_in", conv2d(torch::nn::Conv2dOptions(c.in_channels, channels[0], c.conv_in_kernel)
                            .padding((c.conv_in_kernel - 1) / 2)));

  // time
  const int64_t time_embed_dim = c.time_embed_dim();
  time_proj = register_module("time_proj", Timesteps(channels[0], c.flip_sin_to_cos, c.freq_shift));
  time_embedding =
      register_module("time_embedding", TimestepEmbedding(channels[0], time_embed_dim));

  auto block_config = [&](size_t i) {
    UNetBlockConfig block;
    block.temb_channels = time_embed_dim;
    block.resnet_eps = c.norm_eps;
    block.resnet_groups = c.norm_num_groups;
    block.transformer_layers_per_block = c.transformer_layers(i);
    block.num_attention_heads = c.num_attention_heads(i);
    block.cross_attention_dim = c.cross_attention_dim_of(i);
    block.use_linear_projection = c.use_linear_projection;
    block.only_cross_attention = c.only_cross_attention_of(i);
    block.upcast_attention = c.upcast_attention;
    return block;
  };

  // down
  down_blocks = register_module("down_blocks", torch::nn::ModuleList());
  int64_t output_channel = channels[0];
  for (size_t i = 0; i < n; ++i) {
    auto block = block_config(i);
    block.in_channels = output_channel;
    output_channel = channels[i];
    block.out_channels = output_channel;
    block.num_layers = c.layers(i);
    block.add_downsample = i + 1 != n;
    block.downsample_padding = c.downsample_padding;
    if (c.down_block_types[i] == "CrossAttnDownBlock2D") {
      down_blocks->push_back(CrossAttnDownBlock2D(block));
    } else {
      down_blocks->push_back(DownBlock2D(block));
    }
  }

  // mid
  if (!c.mid_block_type.empty()) {
    auto block = block_config(n - 1);
    block.in_channels = channels[n - 1];
    block.output_scale_factor = c.mid_block_scale_factor;
    block.only_cross_attention = false;  // UNetMidBlock2DCrossAttn has no such option
    mid_block = register_module("mid_block", UNetMidBlock2DCrossAttn(block));
  }

  // up: the per-block settings reversed
  up_blocks = register_module("up_blocks", torch::nn::ModuleList());
  output_channel = channels[n - 1];
  for (size_t i = 0; i < n; ++i) {
    const size_t mirror = n - 1 - i;  // the down block at the same resolution
    const bool is_final_block = i + 1 == n;
    auto block = block_config(mirror);
    block.prev_output_channel = output_channel;
    output_channel = channels[mirror];
    block.out_channels = output_channel;
    block.in_channels = channels[std::max<size_t>(mirror, 1) - 1];
    block.num_layers = c.layers(mirror) + 1;
    block.add_upsample = !is_final_block;
    if (!is_final_block) ++num_upsamplers_;
    if (c.up_block_types[i] == "CrossAttnUpBlock2D") {
      up_blocks->push_back(CrossAttnUpBlock2D(block));
    } else {
      up_blocks->push_back(UpBlock2D(block));
    }
  }

  // out
  conv_norm_out = register_module(
      "conv_norm_out",
      torch::nn::GroupNorm(
          torch::nn::GroupNormOptions(c.norm_num_groups, channels[0]).eps(c.norm_eps)));
  conv_act = register_module("conv_act", torch::nn::SiLU());
  conv_out = register_module(
      "conv_out", conv2d(torch::nn::Conv2dOptions(channels[0], c.out_channels, c.conv_out_kernel)
                             .padding((c.conv_out_kernel - 1) / 2)));
}

torch::Tensor UNet2DConditionModelImpl::get_time_embed(const torch::Tensor& sample,
                                                       const torch::Tensor& timestep) {
  if (!timestep.defined() || timestep.dim() > 1) {
    throw std::invalid_argument("UNet2DConditionModel: timestep must be a 0-d or 1-d tensor");
  }
  auto timesteps = timestep.dim() == 0 ? timestep.unsqueeze(0) : timestep;
  const int64_t batch = sample.size(0);
  if (timesteps.size(0) != 1 && timesteps.size(0) != batch) {
    throw std::invalid_argument("UNet2DConditionModel: " + std::to_string(timesteps.size(0)) +
                                " timesteps for a batch of " + std::to_string(batch));
  }
  // Broadcast to the batch dimension, as diffusers does.
  timesteps = timesteps.to(sample.device()).expand({batch});
  // Timesteps returns float32; the time embedding runs in the sample's dtype.
  return time_proj(timesteps).to(sample.scalar_type());
}

torch::Tensor UNet2DConditionModelImpl::forward(const torch::Tensor& sample_in,
                                                const torch::Tensor& timestep,
                                                const torch::Tensor& encoder_hidden_states) {
  const auto& c = config_;
  if (!sample_in.defined() || sample_in.dim() != 4 || sample_in.size(1) != c.in_channels) {
    std::ostringstream msg;
    msg << "UNet2DConditionModel: sample must be [B, " << c.in_channels << ", H, W], got "
        << (sample_in.defined() ? sample_in.sizes() : c10::IntArrayRef{});
    throw std::invalid_argument(msg.str());
  }
  if (!encoder_hidden_states.defined() || encoder_hidden_states.dim() != 3 ||
      encoder_hidden_states.size(0) != sample_in.size(0)) {
    throw std::invalid_argument(
        "UNet2DConditionModel: encoder_hidden_states must be [B, L, cross_attention_dim] with "
        "the sample's batch size");
  }

  // The overall upsampling factor is 2^num_upsamplers; for other latent sizes each upsampler
  // is given the size of the skip connection it meets.
  const int64_t overall_up_factor = int64_t{1} << num_upsamplers_;
  const bool forward_upsample_size =
      sample_in.size(2) % overall_up_factor != 0 || sample_in.size(3) % overall_up_factor != 0;

  // 0. center input if necessary
  auto sample = c.center_input_sample ? 2 * sample_in - 1.0 : sample_in;

  // 1. time
  auto t_emb = get_time_embed(sample, timestep);
  auto emb = time_embedding(t_emb);

  // 2. pre-process
  sample = lora::add_lora(conv_in.get(), sample, conv_in(sample));

  // 3. down
  std::vector<torch::Tensor> down_block_res_samples{sample};
  for (const auto& module : *down_blocks) {
    DownBlockOutput out;
    if (auto* cross = module->as<CrossAttnDownBlock2DImpl>()) {
      out = cross->forward(sample, emb, encoder_hidden_states);
    } else {
      out = module->as<DownBlock2DImpl>()->forward(sample, emb);
    }
    sample = out.hidden_states;
    down_block_res_samples.insert(down_block_res_samples.end(), out.output_states.begin(),
                                  out.output_states.end());
  }

  // 4. mid
  if (mid_block) sample = mid_block(sample, emb, encoder_hidden_states);

  // 5. up
  UpsampleSize upsample_size;
  for (size_t i = 0; i < up_blocks->size(); ++i) {
    const bool is_final_block = i + 1 == up_blocks->size();
    const auto& module = up_blocks->ptr(i);
    auto* cross = module->as<CrossAttnUpBlock2DImpl>();
    auto* plain = module->as<UpBlock2DImpl>();
    const size_t num_resnets = cross ? cross->resnet_modules.size() : plain->resnet_modules.size();

    std::vector<torch::Tensor> res_samples(down_block_res_samples.end() - num_resnets,
                                           down_block_res_samples.end());
    down_block_res_samples.resize(down_block_res_samples.size() - num_resnets);

    if (!is_final_block && forward_upsample_size) {
      const auto& next_skip = down_block_res_samples.back();
      upsample_size = std::make_pair(next_skip.size(2), next_skip.size(3));
    }
    if (cross) {
      sample = cross->forward(sample, res_samples, emb, encoder_hidden_states, upsample_size);
    } else {
      sample = plain->forward(sample, res_samples, emb, upsample_size);
    }
  }

  // 6. post-process
  sample = conv_act(conv_norm_out(sample));
  return lora::add_lora(conv_out.get(), sample, conv_out(sample));
}

// ---------------------------------------------------------------------------------------------

UNet2DConditionModel load_unet(const std::filesystem::path& unet_dir,
                               const io::LoadOptions& options) {
  const auto config_path = unet_dir / "config.json";
  const auto json = io::read_json_file(config_path);  // its errors name the file already
  UNet2DConditionConfig config;
  try {
    config = UNet2DConditionConfig::from_json(json);
  } catch (const ConfigError& e) {
    throw ConfigError(config_path.string() + ": " + e.what());
  }
  auto model = make_uninitialized<UNet2DConditionModel>(options.dtype, config);
  io::load_component(*model, unet_dir, options);
  model->eval();
  for (auto& parameter : model->parameters()) parameter.set_requires_grad(false);
  return model;
}

}  // namespace ldcp::models
