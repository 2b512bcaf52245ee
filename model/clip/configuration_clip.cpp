#include "model/clip/configuration_clip.h"

#include <algorithm>

#include <nlohmann/json.hpp>

#include "model/io/json_file.h"

namespace ldcp::clip {

const std::vector<std::string>& clip_activation_names() {
  static const std::vector<std::string> names = {"quick_gelu",
                                                 "gelu",
                                                 "gelu_python",
                                                 "gelu_new",
                                                 "gelu_accurate",
                                                 "gelu_python_tanh",
                                                 "gelu_pytorch_tanh",
                                                 "gelu_fast",
                                                 "gelu_10",
                                                 "relu",
                                                 "relu6",
                                                 "silu",
                                                 "swish",
                                                 "sigmoid",
                                                 "tanh",
                                                 "mish",
                                                 "linear"};
  return names;
}

ClipTextConfig ClipTextConfig::from_json(const nlohmann::json& json) {
  if (!json.is_object()) throw io::ConfigError("the CLIP text config is not a JSON object");
  ClipTextConfig c;
  c.vocab_size = io::get_or(json, "vocab_size", c.vocab_size);
  c.hidden_size = io::get_or(json, "hidden_size", c.hidden_size);
  c.intermediate_size = io::get_or(json, "intermediate_size", c.intermediate_size);
  c.projection_dim = io::get_or(json, "projection_dim", c.projection_dim);
  c.num_hidden_layers = io::get_or(json, "num_hidden_layers", c.num_hidden_layers);
  c.num_attention_heads = io::get_or(json, "num_attention_heads", c.num_attention_heads);
  c.max_position_embeddings =
      io::get_or(json, "max_position_embeddings", c.max_position_embeddings);
  c.hidden_act = io::get_or(json, "hidden_act", c.hidden_act);
  c.layer_norm_eps = io::get_or(json, "layer_norm_eps", c.layer_norm_eps);
  c.attention_dropout = io::get_or(json, "attention_dropout", c.attention_dropout);
  c.pad_token_id = io::get_or(json, "pad_token_id", c.pad_token_id);
  c.bos_token_id = io::get_or(json, "bos_token_id", c.bos_token_id);
  // transformers allows a list here; only the pooled output (not computed here) uses it.
  if (auto it = json.find("eos_token_id"); it != json.end() && it->is_number_integer()) {
    c.eos_token_id = it->get<int64_t>();
  }

  auto positive = [](const char* key, int64_t value) {
    if (value <= 0) {
      throw io::ConfigError("config key \"" + std::string(key) + "\" must be positive, got " +
                            std::to_string(value));
    }
  };
  positive("vocab_size", c.vocab_size);
  positive("hidden_size", c.hidden_size);
  positive("intermediate_size", c.intermediate_size);
  positive("num_hidden_layers", c.num_hidden_layers);
  positive("num_attention_heads", c.num_attention_heads);
  positive("max_position_embeddings", c.max_position_embeddings);
  // The caps (configuration_clip.h), before anything is built from these sizes.
  auto at_most = [](const char* key, int64_t value, int64_t cap) {
    if (value > cap) {
      throw io::ConfigError("config key \"" + std::string(key) + "\" = " + std::to_string(value) +
                            " exceeds " + std::to_string(cap));
    }
  };
  at_most("vocab_size", c.vocab_size, kMaxClipVocab);
  at_most("hidden_size", c.hidden_size, kMaxClipWidth);
  at_most("intermediate_size", c.intermediate_size, kMaxClipIntermediate);
  at_most("projection_dim", c.projection_dim, kMaxClipWidth);
  at_most("num_hidden_layers", c.num_hidden_layers, kMaxClipLayers);
  at_most("max_position_embeddings", c.max_position_embeddings, kMaxClipPositions);
  // Each cap alone still allows 10^11 weights together; count them (the sizes are capped, so
  // the products fit in int64_t).
  const int64_t h = c.hidden_size, inner = c.intermediate_size;
  const int64_t layer =
      4 * (h * h + h) + 2 * h * inner + inner + h + 4 * h;  // attention, MLP, norms
  const int64_t weights =
      (c.vocab_size + c.max_position_embeddings) * h + c.num_hidden_layers * layer + 2 * h;
  if (weights > kMaxClipParameters) {
    throw io::ConfigError(
        "config keys \"vocab_size\", \"hidden_size\", \"intermediate_size\", "
        "\"num_hidden_layers\" and \"max_position_embeddings\" describe " +
        std::to_string(weights) + " weights, more than " + std::to_string(kMaxClipParameters));
  }
  if (c.hidden_size % c.num_attention_heads != 0) {
    throw io::ConfigError("config key \"hidden_size\" (" + std::to_string(c.hidden_size) +
                          ") is not a multiple of \"num_attention_heads\" (" +
                          std::to_string(c.num_attention_heads) + ")");
  }
  const auto& names = clip_activation_names();
  if (std::find(names.begin(), names.end(), c.hidden_act) == names.end()) {
    throw io::ConfigError("config key \"hidden_act\": unsupported activation \"" + c.hidden_act +
                          "\"");
  }
  return c;
}

}  // namespace ldcp::clip
