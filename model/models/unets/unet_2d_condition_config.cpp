#include "model/models/unets/unet_2d_condition_config.h"

#include <algorithm>
#include <string>

#include <nlohmann/json.hpp>

#include "model/io/json_file.h"

namespace ldcp::models {

using io::ConfigError;

namespace {

template <typename T>
T per_block_value(const std::vector<T>& values, size_t block) {
  return values.size() == 1 ? values[0] : values.at(block);
}

bool is_null_or_absent(const nlohmann::json& config, const std::string& key) {
  auto it = config.find(key);
  return it == config.end() || it->is_null();
}

// A setting that is a scalar (one value for all blocks) or a list with one value per block.
template <typename T>
std::vector<T> read_per_block(const nlohmann::json& config, const std::string& key,
                              const std::vector<T>& fallback, size_t num_blocks) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  try {
    if (!it->is_array()) return {io::json_to<T>(*it, key)};
    if (it->size() != num_blocks) {
      throw ConfigError("config key \"" + key + "\" has " + std::to_string(it->size()) +
                        " entries; down_block_types has " + std::to_string(num_blocks));
    }
    std::vector<T> values;
    for (const auto& value : *it) {
      if (value.is_array() || value.is_null()) {
        throw ConfigError("config key \"" + key +
                          "\": nested lists and null entries are not supported");
      }
      values.push_back(io::json_to<T>(value, key));
    }
    return values;
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError("config key \"" + key + "\" has the wrong type: " + e.what());
  }
}

template <typename T>
std::vector<T> read_list(const nlohmann::json& config, const std::string& key,
                         const std::vector<T>& fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  if (!it->is_array()) throw ConfigError("config key \"" + key + "\" must be a list");
  try {
    return io::json_to<std::vector<T>>(*it, key);
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError("config key \"" + key + "\" has the wrong type: " + e.what());
  }
}

void reject_unless_null(const nlohmann::json& config, const std::string& key) {
  if (!is_null_or_absent(config, key)) {
    throw ConfigError("config key \"" + key + "\" = " + config.at(key).dump() +
                      " is not supported (only null)");
  }
}

template <typename T>
void reject_unless(const nlohmann::json& config, const std::string& key, const T& supported) {
  if (io::get_or<T>(config, key, supported) != supported) {
    throw ConfigError("config key \"" + key + "\" = " + config.at(key).dump() +
                      " is not supported (only " + nlohmann::json(supported).dump() + ")");
  }
}

}  // namespace

UNet2DConditionConfig UNet2DConditionConfig::from_json(const nlohmann::json& config) {
  if (!config.is_object()) throw ConfigError("the U-Net config is not a JSON object");
  const auto class_name = io::get_or<std::string>(config, "_class_name", "UNet2DConditionModel");
  if (class_name != "UNet2DConditionModel") {
    throw ConfigError("config key \"_class_name\" = \"" + class_name +
                      "\": expected UNet2DConditionModel");
  }

  // Features of UNet2DConditionModel that SD1.5-style models do not use.
  for (const char* key :
       {"num_attention_heads", "class_embed_type", "num_class_embeds", "addition_embed_type",
        "encoder_hid_dim", "encoder_hid_dim_type", "time_cond_proj_dim", "timestep_post_act",
        "time_embedding_act_fn", "reverse_transformer_layers_per_block", "cross_attention_norm"}) {
    reject_unless_null(config, key);
  }
  reject_unless<std::string>(config, "time_embedding_type", "positional");
  reject_unless<std::string>(config, "resnet_time_scale_shift", "default");
  reject_unless<std::string>(config, "attention_type", "default");
  reject_unless<bool>(config, "dual_cross_attention", false);
  reject_unless<bool>(config, "class_embeddings_concat", false);
  if (config.contains("norm_num_groups") && config.at("norm_num_groups").is_null()) {
    throw ConfigError("config key \"norm_num_groups\" = null is not supported");
  }
  // Not read: dropout (inference), and keys that only other block or embedding types use
  // (resnet_skip_time_act, resnet_out_scale_factor, mid_block_only_cross_attention,
  // addition_time_embed_dim, projection_class_embeddings_input_dim,
  // addition_embed_type_num_heads).

  UNet2DConditionConfig c;
  if (auto it = config.find("sample_size"); it != config.end() && !it->is_null()) {
    try {
      if (it->is_array()) {
        if (it->size() != 2) throw ConfigError("config key \"sample_size\" must have 2 entries");
        c.sample_size = std::make_pair(io::json_to<int64_t>(it->at(0), "sample_size"),
                                       io::json_to<int64_t>(it->at(1), "sample_size"));
      } else {
        const auto size = io::json_to<int64_t>(*it, "sample_size");
        c.sample_size = std::make_pair(size, size);
      }
    } catch (const nlohmann::json::exception& e) {
      throw ConfigError(std::string("config key \"sample_size\" has the wrong type: ") + e.what());
    }
  }
  c.in_channels = io::get_or(config, "in_channels", c.in_channels);
  c.out_channels = io::get_or(config, "out_channels", c.out_channels);
  c.center_input_sample = io::get_or(config, "center_input_sample", c.center_input_sample);
  c.flip_sin_to_cos = io::get_or(config, "flip_sin_to_cos", c.flip_sin_to_cos);
  c.freq_shift = io::get_or(config, "freq_shift", c.freq_shift);
  c.down_block_types = read_list(config, "down_block_types", c.down_block_types);
  if (auto it = config.find("mid_block_type"); it != config.end()) {
    c.mid_block_type = it->is_null() ? "" : io::get_or<std::string>(config, "mid_block_type", "");
  }
  c.up_block_types = read_list(config, "up_block_types", c.up_block_types);
  c.block_out_channels = read_list(config, "block_out_channels", c.block_out_channels);

  const size_t n = c.down_block_types.size();
  c.only_cross_attention =
      read_per_block(config, "only_cross_attention", c.only_cross_attention, n);
  c.layers_per_block = read_per_block(config, "layers_per_block", c.layers_per_block, n);
  c.downsample_padding = io::get_or(config, "downsample_padding", c.downsample_padding);
  c.mid_block_scale_factor = io::get_or(config, "mid_block_scale_factor", c.mid_block_scale_factor);
  c.act_fn = io::get_or(config, "act_fn", c.act_fn);
  c.norm_num_groups = io::get_or(config, "norm_num_groups", c.norm_num_groups);
  c.norm_eps = io::get_or(config, "norm_eps", c.norm_eps);
  c.cross_attention_dim = read_per_block(config, "cross_attention_dim", c.cross_attention_dim, n);
  c.transformer_layers_per_block =
      read_per_block(config, "transformer_layers_per_block", c.transformer_layers_per_block, n);
  c.attention_head_dim = read_per_block(config, "attention_head_dim", c.attention_head_dim, n);
  c.use_linear_projection = io::get_or(config, "use_linear_projection", c.use_linear_projection);
  c.upcast_attention = io::get_or(config, "upcast_attention", c.upcast_attention);
  c.time_embedding_dim = io::get_or<int64_t>(config, "time_embedding_dim", 0);
  c.conv_in_kernel = io::get_or(config, "conv_in_kernel", c.conv_in_kernel);
  c.conv_out_kernel = io::get_or(config, "conv_out_kernel", c.conv_out_kernel);
  c.validate();
  return c;
}

int64_t UNet2DConditionConfig::num_attention_heads(size_t block) const {
  return per_block_value(attention_head_dim, block);
}
int64_t UNet2DConditionConfig::layers(size_t block) const {
  return per_block_value(layers_per_block, block);
}
int64_t UNet2DConditionConfig::cross_attention_dim_of(size_t block) const {
  return per_block_value(cross_attention_dim, block);
}
int64_t UNet2DConditionConfig::transformer_layers(size_t block) const {
  return per_block_value(transformer_layers_per_block, block);
}
bool UNet2DConditionConfig::only_cross_attention_of(size_t block) const {
  return per_block_value(only_cross_attention, block);
}
int64_t UNet2DConditionConfig::time_embed_dim() const {
  return time_embedding_dim > 0 ? time_embedding_dim : block_out_channels.at(0) * 4;
}

namespace {

// The U-Net's weights, counted from above in double (no overflow whatever the values): per block,
// the down and up resnets (3x3, 3x3, a 1x1 shortcut and the time projection) and resamplers at the
// wider of its and the previous width, its transformers (self- and cross-attention, GEGLU feed
// forward, projections in and out), the mid block, the time embedding and the convolutions in
// and out. Within 10% above diffusers' count for SD1.5 and SDXL.
double estimated_weights(const UNet2DConditionConfig& c) {
  const auto d = [](int64_t v) { return static_cast<double>(v); };
  const double temb = d(c.time_embed_dim()), first = d(c.block_out_channels.front());
  double weights = d(c.conv_in_kernel) * d(c.conv_in_kernel) * d(c.in_channels) * first +
                   d(c.conv_out_kernel) * d(c.conv_out_kernel) * d(c.out_channels) * first +
                   first * temb + temb * temb;
  const auto resnet = [&](double w) { return 19 * w * w + temb * w; };
  const auto transformer = [](double w, double context) { return 20 * w * w + 2 * w * context; };
  const size_t n = c.num_blocks();
  double previous = first;
  for (size_t i = 0; i < n; ++i) {
    const double width = d(c.block_out_channels[i]), layers = d(c.layers(i));
    weights += (2 * layers + 3) * resnet(std::max(width, previous));
    previous = width;
    if (c.down_block_types[i] == "CrossAttnDownBlock2D" ||
        c.up_block_types[n - 1 - i] == "CrossAttnUpBlock2D") {
      weights += (2 * layers + 1) * d(c.transformer_layers(i)) *
                 transformer(width, d(c.cross_attention_dim_of(i)));
    }
  }
  if (!c.mid_block_type.empty()) {
    const double last = d(c.block_out_channels.back());
    weights += 2 * resnet(last) + d(c.transformer_layers(n - 1)) *
                                      transformer(last, d(c.cross_attention_dim_of(n - 1)));
  }
  return weights;
}

}  // namespace

void UNet2DConditionConfig::validate() const {
  const size_t n = down_block_types.size();
  auto fail = [](const std::string& key, const std::string& why) {
    throw ConfigError("config key \"" + key + "\" " + why);
  };
  if (n == 0) fail("down_block_types", "is empty");
  if (n > kMaxUNetBlocks) {
    fail("down_block_types",
         "has " + std::to_string(n) + " entries, more than " + std::to_string(kMaxUNetBlocks));
  }
  if (up_block_types.size() != n) {
    fail("up_block_types", "must have as many entries as down_block_types");
  }
  if (block_out_channels.size() != n) {
    fail("block_out_channels", "must have as many entries as down_block_types");
  }
  auto check_per_block = [&](const std::string& key, size_t size) {
    if (size != 1 && size != n) fail(key, "must be one value or one per down block");
  };
  check_per_block("only_cross_attention", only_cross_attention.size());
  check_per_block("layers_per_block", layers_per_block.size());
  check_per_block("cross_attention_dim", cross_attention_dim.size());
  check_per_block("transformer_layers_per_block", transformer_layers_per_block.size());
  check_per_block("attention_head_dim", attention_head_dim.size());

  for (const auto& type : down_block_types) {
    if (type != "CrossAttnDownBlock2D" && type != "DownBlock2D") {
      fail("down_block_types", "contains unsupported block type \"" + type +
                                   "\" (supported: CrossAttnDownBlock2D, DownBlock2D)");
    }
  }
  for (const auto& type : up_block_types) {
    if (type != "CrossAttnUpBlock2D" && type != "UpBlock2D") {
      fail("up_block_types", "contains unsupported block type \"" + type +
                                 "\" (supported: CrossAttnUpBlock2D, UpBlock2D)");
    }
  }
  if (!mid_block_type.empty() && mid_block_type != "UNetMidBlock2DCrossAttn") {
    fail("mid_block_type",
         "= \"" + mid_block_type + "\" is not supported (UNetMidBlock2DCrossAttn or null)");
  }
  if (act_fn != "silu" && act_fn != "swish") {
    fail("act_fn", "= \"" + act_fn + "\" is not supported (only silu)");
  }
  // Positive and at most kMaxUNetWidth (sizes derived from them, such as 4 x the first block's
  // width, must not overflow).
  auto positive = [&](const std::string& key, int64_t value) {
    if (value <= 0) fail(key, "must be positive, got " + std::to_string(value));
    if (value > kMaxUNetWidth) {
      fail(key, "= " + std::to_string(value) + " exceeds " + std::to_string(kMaxUNetWidth));
    }
  };
  positive("in_channels", in_channels);
  positive("out_channels", out_channels);
  positive("norm_num_groups", norm_num_groups);
  for (auto v : block_out_channels) positive("block_out_channels", v);
  auto layer_count = [&](const std::string& key, int64_t value) {
    if (value > kMaxUNetLayers) {
      fail(key, "= " + std::to_string(value) + " exceeds " + std::to_string(kMaxUNetLayers));
    }
    positive(key, value);
  };
  for (auto v : layers_per_block) layer_count("layers_per_block", v);
  for (auto v : cross_attention_dim) positive("cross_attention_dim", v);
  for (auto v : transformer_layers_per_block) layer_count("transformer_layers_per_block", v);
  for (auto v : attention_head_dim) positive("attention_head_dim", v);
  if (time_embedding_dim < 0 || time_embedding_dim > kMaxUNetWidth) {
    fail("time_embedding_dim", "must be in [0, " + std::to_string(kMaxUNetWidth) + "]");
  }
  auto kernel = [&](const std::string& key, int64_t value) {
    if (value <= 0 || value % 2 == 0 || value > kMaxUNetKernel) {
      fail(key, "= " + std::to_string(value) + " must be odd and at most " +
                    std::to_string(kMaxUNetKernel));
    }
  };
  kernel("conv_in_kernel", conv_in_kernel);
  kernel("conv_out_kernel", conv_out_kernel);
  for (auto v : block_out_channels) {
    if (v % norm_num_groups != 0) {
      fail("norm_num_groups", "= " + std::to_string(norm_num_groups) +
                                  " does not divide block_out_channels entry " + std::to_string(v));
    }
  }
  for (size_t i = 0; i < n; ++i) {
    const bool cross = down_block_types[i] == "CrossAttnDownBlock2D" ||
                       up_block_types[n - 1 - i] == "CrossAttnUpBlock2D" ||
                       (i + 1 == n && !mid_block_type.empty());
    if (cross && block_out_channels[i] % num_attention_heads(i) != 0) {
      fail("attention_head_dim",
           "(the number of heads) = " + std::to_string(num_attention_heads(i)) +
               " does not divide block_out_channels entry " +
               std::to_string(block_out_channels[i]));
    }
  }
  const double weights = estimated_weights(*this);
  if (weights > static_cast<double>(kMaxUNetParameters)) {
    fail("block_out_channels",
         "with layers_per_block, transformer_layers_per_block and cross_attention_dim describe "
         "about " +
             std::to_string(static_cast<int64_t>(weights)) + " weights, more than " +
             std::to_string(kMaxUNetParameters));
  }
}

}  // namespace ldcp::models
