#pragma once
// The U-Net's transformer parts, mirroring diffusers:
//   attention_processor.py: Attention (to_q, to_k, to_v, to_out.0) run as AttnProcessor2_0,
//   activations.py: GEGLU, attention.py: FeedForward and BasicTransformerBlock,
//   transformers/transformer_2d.py: Transformer2DModel (continuous input only).
// Submodules carry diffusers' names, so named_parameters() equals the checkpoint keys.

#include <vector>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "model/pruning/gated_layer.h"

namespace ldcp::models {

struct AttentionConfig {
  int64_t query_dim = 0;
  int64_t cross_attention_dim = 0;  // 0: self-attention (keys/values from the query input)
  int64_t heads = 8;
  int64_t dim_head = 64;
  bool bias = false;     // of to_q, to_k, to_v
  bool out_bias = true;  // of to_out.0
  // Accepted for the config's sake: diffusers' default processor (scaled_dot_product_attention)
  // ignores it too.
  bool upcast_attention = false;
};

// Multi-head attention through at::scaled_dot_product_attention (scale dim_head^-0.5).
class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const AttentionConfig& config);

  // hidden_states [B, N, query_dim]; encoder_hidden_states [B, M, cross_attention_dim] or
  // undefined for self-attention. Returns [B, N, query_dim].
  torch::Tensor forward(const torch::Tensor& hidden_states,
                        const torch::Tensor& encoder_hidden_states = {});

  const AttentionConfig& config() const { return config_; }
  int64_t inner_dim() const { return config_.heads * config_.dim_head; }

  torch::nn::Linear to_q{nullptr};
  torch::nn::Linear to_k{nullptr};
  torch::nn::Linear to_v{nullptr};
  torch::nn::ModuleList to_out{nullptr};   // [Linear, Dropout]: the Dropout keeps index 1
  torch::nn::Linear to_out_proj{nullptr};  // to_out[0], typed (not registered twice)

 private:
  AttentionConfig config_;
};
TORCH_MODULE(Attention);

// Gated GELU: proj to 2 x dim_out, then hidden * gelu(gate) (exact GELU). The first dim_out
// output channels of proj are the hidden half, the last dim_out the gate half.
class GEGLUImpl : public torch::nn::Module {
 public:
  GEGLUImpl(int64_t dim_in, int64_t dim_out, bool bias = true);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  torch::nn::Linear proj{nullptr};
};
TORCH_MODULE(GEGLU);

struct FeedForwardConfig {
  int64_t dim = 0;
  int64_t dim_out = 0;  // 0: dim
  int64_t mult = 4;
  int64_t inner_dim = 0;  // 0: dim * mult
  bool bias = true;
  // Only diffusers' "geglu" (what Transformer2DModel uses in the U-Net) is implemented.
};

// net = [GEGLU(dim, inner_dim), Dropout, Linear(inner_dim, dim_out)].
// Gated (channel pruning): the inner channels, in chunks: the matching rows of both halves of
// net.0.proj and columns of net.2.
class FeedForwardImpl : public torch::nn::Module, public pruning::GatedLayer {
 public:
  explicit FeedForwardImpl(const FeedForwardConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states);

  const FeedForwardConfig& config() const { return config_; }

  void enable_gate(const std::string& name) override;
  const std::shared_ptr<pruning::ChannelGate>& gate() const override { return gate_; }
  void reorder_units(const std::vector<int64_t>& order) override;
  // Both proj rows and the net.2 column of each channel of a chunk.
  int64_t unit_macs(int64_t positions) const override;
  // L1 norm of each chunk's proj rows (hidden and gate halves).
  at::Tensor magnitude_scores() const override;
  static constexpr int64_t kMaxUnits = 32;

  torch::nn::ModuleList net{nullptr};
  // Typed views of net[0] and net[2] (registered only inside net).
  GEGLU act{nullptr};
  torch::nn::Linear proj_out{nullptr};

 private:
  torch::Tensor forward_sliced(const torch::Tensor& hidden_states);

  FeedForwardConfig config_;
  std::shared_ptr<pruning::ChannelGate> gate_;
};
TORCH_MODULE(FeedForward);

struct BasicTransformerBlockConfig {
  int64_t dim = 0;
  int64_t num_attention_heads = 1;
  int64_t attention_head_dim = 0;
  int64_t cross_attention_dim = 0;  // 0: no cross-attention (no norm2 / attn2)
  bool attention_bias = false;
  bool only_cross_attention = false;  // attn1 attends to the encoder states too
  bool upcast_attention = false;
  double norm_eps = 1e-5;
};

// norm_type "layer_norm": x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x)).
class BasicTransformerBlockImpl : public torch::nn::Module {
 public:
  explicit BasicTransformerBlockImpl(const BasicTransformerBlockConfig& config);
  torch::Tensor forward(const torch::Tensor& hidden_states,
                        const torch::Tensor& encoder_hidden_states = {});

  const BasicTransformerBlockConfig& config() const { return config_; }

  torch::nn::LayerNorm norm1{nullptr};
  Attention attn1{nullptr};
  torch::nn::LayerNorm norm2{nullptr};
  Attention attn2{nullptr};
  torch::nn::LayerNorm norm3{nullptr};
  FeedForward ff{nullptr};

 private:
  BasicTransformerBlockConfig config_;
};
TORCH_MODULE(BasicTransformerBlock);

struct Transformer2DModelConfig {
  int64_t num_attention_heads = 16;
  int64_t attention_head_dim = 88;
  int64_t in_channels = 0;
  int64_t out_channels = 0;  // 0: in_channels
  int64_t num_layers = 1;
  int64_t norm_num_groups = 32;
  int64_t cross_attention_dim = 0;  // 0: none
  bool attention_bias = false;
  bool use_linear_projection = false;  // proj_in/proj_out: Linear instead of 1x1 Conv2d
  bool only_cross_attention = false;
  bool upcast_attention = false;
  double norm_eps = 1e-5;  // of the blocks' LayerNorms (the GroupNorm uses 1e-6)
};

// Continuous-input Transformer2DModel: GroupNorm, proj_in, transformer_blocks over the H*W
// tokens, proj_out, plus the input as residual.
class Transformer2DModelImpl : public torch::nn::Module {
 public:
  explicit Transformer2DModelImpl(const Transformer2DModelConfig& config);

  // hidden_states [B, C, H, W]; encoder_hidden_states [B, L, cross_attention_dim].
  torch::Tensor forward(const torch::Tensor& hidden_states,
                        const torch::Tensor& encoder_hidden_states = {});

  const Transformer2DModelConfig& config() const { return config_; }
  int64_t inner_dim() const { return config_.num_attention_heads * config_.attention_head_dim; }

  torch::nn::GroupNorm norm{nullptr};
  // Registered as "proj_in" / "proj_out": the Conv2d or the Linear, per use_linear_projection.
  torch::nn::Conv2d proj_in_conv{nullptr};
  torch::nn::Linear proj_in_linear{nullptr};
  torch::nn::ModuleList transformer_blocks{nullptr};
  torch::nn::Conv2d proj_out_conv{nullptr};
  torch::nn::Linear proj_out_linear{nullptr};

  std::vector<BasicTransformerBlock> block_modules;  // typed views of transformer_blocks

 private:
  Transformer2DModelConfig config_;
};
TORCH_MODULE(Transformer2DModel);

}  // namespace ldcp::models
