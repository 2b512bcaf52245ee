#include "model/clip/modeling_clip.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "model/io/json_file.h"
#include "model/io/safetensors.h"
#include "model/lora/lora_hook.h"
#include "model/models/layers.h"

namespace ldcp::clip {
namespace {

using Activation = torch::Tensor (*)(const torch::Tensor&);

torch::Tensor tanh_gelu(const torch::Tensor& x) {  // NewGELUActivation / AccurateGELUActivation
  return 0.5 * x * (1.0 + torch::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * torch::pow(x, 3.0))));
}

// transformers' ACT2FN (activations.py), the parameterless entries.
const std::map<std::string, Activation>& activations() {
  static const std::map<std::string, Activation> table = {
      {"quick_gelu", [](const torch::Tensor& x) { return x * torch::sigmoid(1.702 * x); }},
      {"gelu", [](const torch::Tensor& x) { return torch::gelu(x); }},
      {"gelu_python", [](const torch::Tensor& x) { return torch::gelu(x); }},
      {"gelu_new", tanh_gelu},
      {"gelu_accurate", tanh_gelu},
      {"gelu_python_tanh", tanh_gelu},
      {"gelu_pytorch_tanh", [](const torch::Tensor& x) { return torch::gelu(x, "tanh"); }},
      {"gelu_fast",
       [](const torch::Tensor& x) {
         return 0.5 * x * (1.0 + torch::tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)));
       }},
      {"gelu_10", [](const torch::Tensor& x) { return torch::clamp(torch::gelu(x), -10, 10); }},
      {"relu", [](const torch::Tensor& x) { return torch::relu(x); }},
      {"relu6", [](const torch::Tensor& x) { return torch::clamp(x, 0, 6); }},
      {"silu", [](const torch::Tensor& x) { return torch::silu(x); }},
      {"swish", [](const torch::Tensor& x) { return torch::silu(x); }},
      {"sigmoid", [](const torch::Tensor& x) { return torch::sigmoid(x); }},
      {"tanh", [](const torch::Tensor& x) { return torch::tanh(x); }},
      {"mish", [](const torch::Tensor& x) { return torch::mish(x); }},
      {"linear", [](const torch::Tensor& x) { return x; }},
  };
  return table;
}

Activation find_activation(const std::string& name) {
  auto it = activations().find(name);
  if (it == activations().end()) {
    throw io::ConfigError("config key \"hidden_act\": unsupported activation \"" + name + "\"");
  }
  return it->second;
}

const std::string kPrefix = "text_model.";

}  // namespace

ClipTextEmbeddingsImpl::ClipTextEmbeddingsImpl(const ClipTextConfig& config) {
  token_embedding = register_module(
      "token_embedding",
      models::embedding(torch::nn::EmbeddingOptions(config.vocab_size, config.hidden_size)));
  position_embedding = register_module("position_embedding",
                                       models::embedding(torch::nn::EmbeddingOptions(
                                           config.max_position_embeddings, config.hidden_size)));
}

torch::Tensor ClipTextEmbeddingsImpl::forward(const torch::Tensor& input_ids) {
  auto position_ids =
      torch::arange(input_ids.size(-1), input_ids.options().dtype(torch::kLong)).unsqueeze(0);
  return token_embedding(input_ids) + position_embedding(position_ids);
}

ClipAttentionImpl::ClipAttentionImpl(const ClipTextConfig& config)
    : num_heads_(config.num_attention_heads),
      head_dim_(config.hidden_size / config.num_attention_heads),
      scale_(1.0 / std::sqrt(static_cast<double>(head_dim_))) {
  const auto dim = config.hidden_size;
  k_proj = register_module("k_proj", models::linear(torch::nn::LinearOptions(dim, dim)));
  v_proj = register_module("v_proj", models::linear(torch::nn::LinearOptions(dim, dim)));
  q_proj = register_module("q_proj", models::linear(torch::nn::LinearOptions(dim, dim)));
  out_proj = register_module("out_proj", models::linear(torch::nn::LinearOptions(dim, dim)));
}

namespace {
// A Linear layer plus the active LoRA branch (model/lora/lora_hook.h).
torch::Tensor run_linear(torch::nn::Linear& layer, const torch::Tensor& x) {
  return lora::add_lora(layer.get(), x, layer->forward(x));
}
}  // namespace

torch::Tensor ClipAttentionImpl::forward(const torch::Tensor& hidden_states) {
  const auto batch = hidden_states.size(0), length = hidden_states.size(1);
  auto heads = [&](const torch::Tensor& x) {
    return x.view({batch, length, num_heads_, head_dim_}).transpose(1, 2);
  };
  auto queries = heads(run_linear(q_proj, hidden_states));
  auto keys = heads(run_linear(k_proj, hidden_states));
  auto values = heads(run_linear(v_proj, hidden_states));
  // The text tower only ever attends causally (transformers' create_causal_mask without a
  // padding mask); SD pipelines pass no attention_mask.
  auto output = at::scaled_dot_product_attention(queries, keys, values, /*attn_mask=*/{},
                                                 /*dropout_p=*/0.0, /*is_causal=*/true, scale_);
  output = output.transpose(1, 2).reshape({batch, length, num_heads_ * head_dim_});
  return run_linear(out_proj, output);
}

ClipMLPImpl::ClipMLPImpl(const ClipTextConfig& config)
    : activation_(find_activation(config.hidden_act)) {
  fc1 = register_module("fc1", models::linear(torch::nn::LinearOptions(config.hidden_size,
                                                                       config.intermediate_size)));
  fc2 = register_module("fc2", models::linear(torch::nn::LinearOptions(config.intermediate_size,
                                                                       config.hidden_size)));
}

torch::Tensor ClipMLPImpl::forward(const torch::Tensor& hidden_states) {
  return run_linear(fc2, activation_(run_linear(fc1, hidden_states)));
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const ClipTextConfig& config) {
  auto norm = [&] {
    return torch::nn::LayerNorm(
        torch::nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps));
  };
  self_attn = register_module("self_attn", ClipAttention(config));
  layer_norm1 = register_module("layer_norm1", norm());
  mlp = register_module("mlp", ClipMLP(config));
  layer_norm2 = register_module("layer_norm2", norm());
}

torch::Tensor ClipEncoderLayerImpl::forward(const torch::Tensor& hidden_states) {
  auto hidden = hidden_states + self_attn(layer_norm1(hidden_states));
  return hidden + mlp(layer_norm2(hidden));
}

ClipEncoderImpl::ClipEncoderImpl(const ClipTextConfig& config) {
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < config.num_hidden_layers; ++i)
    layers->push_back(ClipEncoderLayer(config));
}

torch::Tensor ClipEncoderImpl::forward(const torch::Tensor& hidden_states) {
  auto hidden = hidden_states;
  for (const auto& layer : *layers) hidden = layer->as<ClipEncoderLayer>()->forward(hidden);
  return hidden;
}

ClipTextTransformerImpl::ClipTextTransformerImpl(const ClipTextConfig& config) {
  embeddings = register_module("embeddings", ClipTextEmbeddings(config));
  encoder = register_module("encoder", ClipEncoder(config));
  final_layer_norm = register_module(
      "final_layer_norm",
      torch::nn::LayerNorm(
          torch::nn::LayerNormOptions({config.hidden_size}).eps(config.layer_norm_eps)));
}

torch::Tensor ClipTextTransformerImpl::forward(const torch::Tensor& input_ids) {
  return final_layer_norm(encoder(embeddings(input_ids)));
}

ClipTextModelImpl::ClipTextModelImpl(const ClipTextConfig& config) : config_(config) {
  text_model = register_module("text_model", ClipTextTransformer(config));
}

torch::Tensor ClipTextModelImpl::forward(const torch::Tensor& input_ids) {
  if (!input_ids.defined() || input_ids.dim() < 1 || input_ids.dim() > 2 ||
      !at::isIntegralType(input_ids.scalar_type(), /*includeBool=*/false)) {
    throw std::invalid_argument(
        "ClipTextModel: input_ids must be a [batch, length] integer tensor");
  }
  // As transformers: input_ids.view(-1, length).
  auto ids = input_ids.reshape({-1, input_ids.size(-1)}).to(torch::kLong);
  const auto length = ids.size(1);
  if (length < 1 || length > config_.max_position_embeddings) {
    throw std::invalid_argument("ClipTextModel: sequence length " + std::to_string(length) +
                                " is outside [1, max_position_embeddings=" +
                                std::to_string(config_.max_position_embeddings) + "]");
  }
  if (ids.numel() > 0) {
    const auto low = ids.min().item<int64_t>(), high = ids.max().item<int64_t>();
    if (low < 0 || high >= config_.vocab_size) {
      throw std::invalid_argument(
          "ClipTextModel: token id " + std::to_string(low < 0 ? low : high) +
          " is outside the vocabulary [0, " + std::to_string(config_.vocab_size) + ")");
    }
  }
  return text_model(ids);
}

ClipTextModel load_clip_text_model(const std::filesystem::path& text_encoder_dir,
                                   const io::LoadOptions& options) {
  const auto config_file = text_encoder_dir / "config.json";
  const auto json = io::read_json_file(config_file);
  ClipTextConfig config;
  try {
    config = ClipTextConfig::from_json(json);
  } catch (const io::ConfigError& e) {
    throw io::ConfigError(config_file.string() + ": " + e.what());
  }
  auto model = models::make_uninitialized<ClipTextModel>(options.dtype, config);

  // transformers 5 writes the keys without "text_model." (its PrefixChange for CLIPTextModel):
  // they are then the keys of the inner module. Older checkpoints, SD1.5's among them, have it.
  // The key names decide which module loads, so the weights stream in once (load_component).
  const auto weight_file = io::find_weight_file(text_encoder_dir, options.prefer_fp16);
  std::vector<std::string> names;
  if (weight_file.extension() == ".json") {  // sharded: model.safetensors.index.json
    const auto index = io::read_json_file(weight_file);
    if (auto map = index.find("weight_map"); map != index.end() && map->is_object()) {
      for (const auto& entry : map->items()) names.push_back(entry.key());
    }
  } else {
    names = io::SafetensorsFile(weight_file).names();
  }
  const bool prefixed = std::any_of(names.begin(), names.end(), [](const std::string& name) {
    return name.rfind(kPrefix, 0) == 0;
  });
  io::LoadOptions load_options = options;
  load_options.ignored_unexpected.push_back(kPrefix + "embeddings.position_ids");
  load_options.ignored_unexpected.push_back("embeddings.position_ids");
  if (prefixed) {
    io::load_component(*model, text_encoder_dir, load_options);
  } else {
    io::load_component(*model->text_model, text_encoder_dir, load_options);
  }
  model->eval();
  return model;
}

}  // namespace ldcp::clip
