#include "model/models/embeddings.h"

#include <cmath>

#include <torch/nn/functional/activation.h>
#include <torch/nn/functional/padding.h>

#include "model/lora/lora_hook.h"
#include "model/models/layers.h"

namespace ldcp::models {

namespace F = torch::nn::functional;

torch::Tensor get_timestep_embedding(const torch::Tensor& timesteps, int64_t embedding_dim,
                                     bool flip_sin_to_cos, double downscale_freq_shift,
                                     double scale, int64_t max_period) {
  TORCH_CHECK(timesteps.dim() == 1, "Timesteps should be a 1d-array, got shape ",
              timesteps.sizes());
  const int64_t half_dim = embedding_dim / 2;
  // Same operations in the same order as diffusers, so the float32 rounding is identical.
  auto exponent =
      -std::log(static_cast<double>(max_period)) *
      torch::arange(0, half_dim, torch::dtype(torch::kFloat32).device(timesteps.device()));
  exponent = exponent / (static_cast<double>(half_dim) - downscale_freq_shift);

  auto emb = torch::exp(exponent);
  emb = timesteps.unsqueeze(1).to(torch::kFloat32) * emb.unsqueeze(0);
  emb = scale * emb;
  emb = torch::cat({torch::sin(emb), torch::cos(emb)}, -1);
  if (flip_sin_to_cos) {
    emb = torch::cat({emb.slice(1, half_dim), emb.slice(1, 0, half_dim)}, -1);
  }
  if (embedding_dim % 2 == 1) emb = F::pad(emb, F::PadFuncOptions({0, 1, 0, 0}));
  return emb;
}

TimestepsImpl::TimestepsImpl(int64_t num_channels, bool flip_sin_to_cos,
                             double downscale_freq_shift, double scale)
    : num_channels_(num_channels),
      flip_sin_to_cos_(flip_sin_to_cos),
      downscale_freq_shift_(downscale_freq_shift),
      scale_(scale) {}

torch::Tensor TimestepsImpl::forward(const torch::Tensor& timesteps) {
  return get_timestep_embedding(timesteps, num_channels_, flip_sin_to_cos_, downscale_freq_shift_,
                                scale_);
}

TimestepEmbeddingImpl::TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim,
                                             int64_t out_dim) {
  linear_1 =
      register_module("linear_1", linear(torch::nn::LinearOptions(in_channels, time_embed_dim)));
  linear_2 = register_module(
      "linear_2",
      linear(torch::nn::LinearOptions(time_embed_dim, out_dim > 0 ? out_dim : time_embed_dim)));
}

torch::Tensor TimestepEmbeddingImpl::forward(const torch::Tensor& sample) {
  // Plus the active LoRA branches (model/lora/lora_hook.h).
  const auto hidden = F::silu(lora::add_lora(linear_1.get(), sample, linear_1(sample)));
  return lora::add_lora(linear_2.get(), hidden, linear_2(hidden));
}

}  // namespace ldcp::models
