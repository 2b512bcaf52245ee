#pragma once
// transformers' models/clip/configuration_clip.py, the text tower's CLIPTextConfig, read and
// checked without libtorch: modeling_clip.h builds the model from it, and the fuzz build
// (tests/fuzz) links this part alone.

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace ldcp::clip {

// Caps on config.json's sizes, checked before the model is built: far above every CLIP text tower
// (SD1.5's: 49408 tokens, width 768, 12 layers; SDXL's second: 1280, 5120, 32), and low enough that
// a hostile config cannot make the loader allocate without bound.
inline constexpr int64_t kMaxClipVocab = int64_t{1} << 20;          // vocab_size
inline constexpr int64_t kMaxClipWidth = int64_t{1} << 14;          // hidden_size, projection_dim
inline constexpr int64_t kMaxClipIntermediate = 4 * kMaxClipWidth;  // intermediate_size
inline constexpr int64_t kMaxClipLayers = 128;                      // num_hidden_layers
inline constexpr int64_t kMaxClipPositions = int64_t{1} << 13;      // max_position_embeddings
inline constexpr int64_t kMaxClipParameters = int64_t{1} << 32;     // all weights together

// transformers' CLIPTextConfig; defaults as there (openai/clip-vit-base-patch32's text tower).
// from_json refuses sizes above the caps (kMaxClip*) and a config whose weights would number more
// than kMaxClipParameters (SDXL's larger text tower has 0.7e9).
struct ClipTextConfig {
  int64_t vocab_size = 49408;            // at most kMaxClipVocab
  int64_t hidden_size = 512;             // at most kMaxClipWidth
  int64_t intermediate_size = 2048;      // at most kMaxClipIntermediate
  int64_t projection_dim = 512;          // read for completeness; CLIPTextModel has no projection
  int64_t num_hidden_layers = 12;        // at most kMaxClipLayers
  int64_t num_attention_heads = 8;       // divides hidden_size
  int64_t max_position_embeddings = 77;  // at most kMaxClipPositions
  // One of transformers' ACT2FN entries without parameters: quick_gelu, gelu, gelu_python,
  // gelu_new, gelu_accurate, gelu_pytorch_tanh, gelu_python_tanh, gelu_fast, gelu_10, relu,
  // relu6, silu, swish, sigmoid, tanh, mish, linear.
  std::string hidden_act = "quick_gelu";
  double layer_norm_eps = 1e-5;
  double attention_dropout = 0.0;  // inference only: never applied
  int64_t pad_token_id = 1;
  int64_t bos_token_id = 49406;
  int64_t eos_token_id = 49407;

  // From text_encoder/config.json; throws io::ConfigError naming the key for wrong types, sizes
  // beyond the caps, unknown activations and a hidden_size that the heads do not divide.
  static ClipTextConfig from_json(const nlohmann::json& config);
};

// The activations hidden_act may name (modeling_clip.cpp implements each).
const std::vector<std::string>& clip_activation_names();

}  // namespace ldcp::clip
