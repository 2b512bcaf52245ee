#pragma once
// CLIP's text encoder, transformers' CLIPTextModel (models/clip/modeling_clip.py): token and
// position embeddings, pre-norm transformer layers with causal self-attention, final layer norm.
// The module tree is transformers 4's (CLIPTextModel.text_model = CLIPTextTransformer), the key
// layout SD1.5's text_encoder ships ("text_model.embeddings.token_embedding.weight", ...).
// transformers 5 saves the same tensors without the "text_model." prefix (it strips the prefix
// when loading the older layout); load_clip_text_model loads those into `text_model` itself.

#include <cstdint>
#include <filesystem>
#include <string>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <nlohmann/json_fwd.hpp>

#include "model/clip/configuration_clip.h"
#include "model/io/weights.h"

namespace ldcp::clip {

// token_embedding + position_embedding (positions 0..L-1; transformers' position_ids buffer is
// not persistent, so it is no parameter here).
class ClipTextEmbeddingsImpl : public torch::nn::Module {
 public:
  explicit ClipTextEmbeddingsImpl(const ClipTextConfig& config);
  torch::Tensor forward(const torch::Tensor& input_ids);

  torch::nn::Embedding token_embedding{nullptr};
  torch::nn::Embedding position_embedding{nullptr};
};
TORCH_MODULE(ClipTextEmbeddings);

// Multi-head self-attention with the causal mask of the text tower; scale head_dim**-0.5.
class ClipAttentionImpl : public torch::nn::Module {
 public:
  explicit ClipAttentionImpl(const ClipTextConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  torch::nn::Linear k_proj{nullptr};
  torch::nn::Linear v_proj{nullptr};
  torch::nn::Linear q_proj{nullptr};
  torch::nn::Linear out_proj{nullptr};

 private:
  int64_t num_heads_;
  int64_t head_dim_;
  double scale_;
};
TORCH_MODULE(ClipAttention);

// fc1 - activation - fc2.
class ClipMLPImpl : public torch::nn::Module {
 public:
  explicit ClipMLPImpl(const ClipTextConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  torch::nn::Linear fc1{nullptr};
  torch::nn::Linear fc2{nullptr};

 private:
  torch::Tensor (*activation_)(const torch::Tensor&);  // config.hidden_act
};
TORCH_MODULE(ClipMLP);

// Pre-norm residual layer: x + attn(ln1(x)), then x + mlp(ln2(x)).
class ClipEncoderLayerImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderLayerImpl(const ClipTextConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  ClipAttention self_attn{nullptr};
  torch::nn::LayerNorm layer_norm1{nullptr};
  ClipMLP mlp{nullptr};
  torch::nn::LayerNorm layer_norm2{nullptr};
};
TORCH_MODULE(ClipEncoderLayer);

class ClipEncoderImpl : public torch::nn::Module {
 public:
  explicit ClipEncoderImpl(const ClipTextConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  torch::nn::ModuleList layers{nullptr};
};
TORCH_MODULE(ClipEncoder);

// transformers 4's CLIPTextTransformer (transformers 5's CLIPTextModel body).
class ClipTextTransformerImpl : public torch::nn::Module {
 public:
  explicit ClipTextTransformerImpl(const ClipTextConfig& config);
  torch::Tensor forward(const torch::Tensor& input_ids);

  ClipTextEmbeddings embeddings{nullptr};
  ClipEncoder encoder{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(ClipTextTransformer);

class ClipTextModelImpl : public torch::nn::Module {
 public:
  explicit ClipTextModelImpl(const ClipTextConfig& config);
  // input_ids: [B, L] (or [L]) integer ids, L <= max_position_embeddings ->
  // last_hidden_state [B, L, hidden_size]. Throws std::invalid_argument for other shapes and ids
  // outside the vocabulary.
  torch::Tensor forward(const torch::Tensor& input_ids);
  const ClipTextConfig& config() const { return config_; }

  ClipTextTransformer text_model{nullptr};

 private:
  ClipTextConfig config_;
};
TORCH_MODULE(ClipTextModel);

// Config (config.json) and weights (model.safetensors, or its fp16 variant) of a text_encoder
// folder, in eval mode on the CPU in float32. Accepts both key layouts (see above) and ignores
// "text_model.embeddings.position_ids", which older checkpoints such as SD1.5's carry. Throws
// io::ConfigError / io::WeightLoadError naming the file.
ClipTextModel load_clip_text_model(const std::filesystem::path& text_encoder_dir,
                                   const io::LoadOptions& options = {});

}  // namespace ldcp::clip
