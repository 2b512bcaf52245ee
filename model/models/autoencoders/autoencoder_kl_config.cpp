#include "model/models/autoencoders/autoencoder_kl_config.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "model/io/json_file.h"

namespace ldcp::models {

using ldcp::io::ConfigError;
using ldcp::io::get_or;

AutoencoderKLConfig AutoencoderKLConfig::from_json(const nlohmann::json& json) {
  const auto class_name = get_or<std::string>(json, "_class_name", "AutoencoderKL");
  if (class_name != "AutoencoderKL") {
    throw ConfigError("config \"_class_name\" is \"" + class_name + "\", expected AutoencoderKL");
  }
  AutoencoderKLConfig c;
  c.in_channels = get_or(json, "in_channels", c.in_channels);
  c.out_channels = get_or(json, "out_channels", c.out_channels);
  c.down_block_types = get_or(json, "down_block_types", c.down_block_types);
  c.up_block_types = get_or(json, "up_block_types", c.up_block_types);
  c.block_out_channels = get_or(json, "block_out_channels", c.block_out_channels);
  c.layers_per_block = get_or(json, "layers_per_block", c.layers_per_block);
  c.act_fn = get_or(json, "act_fn", c.act_fn);
  c.latent_channels = get_or(json, "latent_channels", c.latent_channels);
  c.norm_num_groups = get_or(json, "norm_num_groups", c.norm_num_groups);
  // diffusers accepts an int or a list (height, width) and tiles with the first entry.
  if (auto it = json.find("sample_size"); it != json.end() && it->is_array()) {
    const auto sizes = get_or<std::vector<int64_t>>(json, "sample_size", {});
    if (sizes.empty()) throw ConfigError("config key \"sample_size\" is an empty list");
    c.sample_size = sizes.front();
  } else {
    c.sample_size = get_or(json, "sample_size", c.sample_size);
  }
  c.scaling_factor = get_or(json, "scaling_factor", c.scaling_factor);
  if (auto it = json.find("shift_factor"); it != json.end() && !it->is_null()) {
    c.shift_factor = get_or(json, "shift_factor", 0.0);
  }
  if (auto it = json.find("latents_mean"); it != json.end() && !it->is_null()) {
    c.latents_mean = get_or<std::vector<double>>(json, "latents_mean", {});
  }
  if (auto it = json.find("latents_std"); it != json.end() && !it->is_null()) {
    c.latents_std = get_or<std::vector<double>>(json, "latents_std", {});
  }
  c.force_upcast = get_or(json, "force_upcast", c.force_upcast);
  c.use_quant_conv = get_or(json, "use_quant_conv", c.use_quant_conv);
  c.use_post_quant_conv = get_or(json, "use_post_quant_conv", c.use_post_quant_conv);
  c.mid_block_add_attention = get_or(json, "mid_block_add_attention", c.mid_block_add_attention);

  // Checks what the modules would otherwise fail on later, with less helpful messages.
  const auto blocks = c.block_out_channels.size();
  if (blocks == 0) throw ConfigError("config key \"block_out_channels\" is empty");
  // Each block after the first halves the resolution: 2^(blocks - 1) must stay representable.
  if (blocks > kMaxVaeBlocks) {
    throw ConfigError("config key \"block_out_channels\" has " + std::to_string(blocks) +
                      " entries, more than " + std::to_string(kMaxVaeBlocks));
  }
  if (c.down_block_types.size() != blocks || c.up_block_types.size() != blocks) {
    throw ConfigError(
        "config keys \"down_block_types\" and \"up_block_types\" must have as many "
        "entries as \"block_out_channels\" (" +
        std::to_string(blocks) + ")");
  }
  for (const auto& type : c.down_block_types) {
    if (type != "DownEncoderBlock2D") {
      throw ConfigError("config key \"down_block_types\": unsupported block \"" + type + "\"");
    }
  }
  for (const auto& type : c.up_block_types) {
    if (type != "UpDecoderBlock2D") {
      throw ConfigError("config key \"up_block_types\": unsupported block \"" + type + "\"");
    }
  }
  if (c.act_fn != "silu" && c.act_fn != "swish") {
    throw ConfigError("config key \"act_fn\": unsupported activation \"" + c.act_fn + "\"");
  }
  if (c.norm_num_groups <= 0) throw ConfigError("config key \"norm_num_groups\" must be positive");
  for (auto width : c.block_out_channels) {
    if (width <= 0 || width % c.norm_num_groups != 0) {
      throw ConfigError("config key \"block_out_channels\": " + std::to_string(width) +
                        " is not a positive multiple of norm_num_groups (" +
                        std::to_string(c.norm_num_groups) + ")");
    }
  }
  if (c.in_channels <= 0 || c.out_channels <= 0 || c.latent_channels <= 0 ||
      c.layers_per_block <= 0) {
    throw ConfigError(
        "config keys \"in_channels\", \"out_channels\", \"latent_channels\" and "
        "\"layers_per_block\" must be positive");
  }
  // The caps (autoencoder_kl_config.h), before anything is built from these sizes.
  auto at_most = [](const char* key, int64_t value, int64_t cap) {
    if (value > cap) {
      throw ConfigError("config key \"" + std::string(key) + "\" = " + std::to_string(value) +
                        " exceeds " + std::to_string(cap));
    }
  };
  at_most("in_channels", c.in_channels, kMaxVaeWidth);
  at_most("out_channels", c.out_channels, kMaxVaeWidth);
  at_most("latent_channels", c.latent_channels, kMaxVaeWidth);
  at_most("layers_per_block", c.layers_per_block, kMaxVaeLayers);
  for (auto width : c.block_out_channels) at_most("block_out_channels", width, kMaxVaeWidth);
  // The weights, counted from above (the caps keep every product within int64_t): per block,
  // the encoder's and the decoder's resnets (3x3, 3x3 and a 1x1 shortcut) and resamplers at the
  // wider of its and the previous width; the two mid blocks; the convolutions in and out.
  const int64_t layers = c.layers_per_block;
  int64_t weights = 0, previous = c.block_out_channels.front();
  for (auto width : c.block_out_channels) {
    const int64_t w = std::max(width, previous);
    weights += (2 * layers + 3) * 19 * w * w;
    previous = width;
  }
  const int64_t last = c.block_out_channels.back();
  weights += 2 * (2 * 19 + 4) * last * last;
  weights += 9 * (c.in_channels + c.out_channels + 4 * c.latent_channels) *
             (c.block_out_channels.front() + last);
  if (weights > kMaxVaeParameters) {
    throw ConfigError("config keys \"block_out_channels\" and \"layers_per_block\" describe " +
                      std::to_string(weights) + " weights, more than " +
                      std::to_string(kMaxVaeParameters));
  }
  return c;
}

int64_t AutoencoderKLConfig::spatial_scale() const {
  return int64_t{1} << (static_cast<int64_t>(block_out_channels.size()) - 1);
}

}  // namespace ldcp::models
