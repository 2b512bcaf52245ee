#pragma once
// Timestep embeddings of diffusers' models/embeddings.py: get_timestep_embedding, Timesteps
// (the parameterless sinusoidal projection) and TimestepEmbedding (linear_1, SiLU, linear_2).

#include <torch/nn/module.h>
#include <torch/nn/modules/linear.h>

namespace ldcp::models {

// Sinusoidal embeddings [N, embedding_dim] (float32) of 1-D `timesteps` (any numeric dtype;
// fractional values allowed), as in DDPM: frequencies exp(-ln(max_period) * i / (half -
// downscale_freq_shift)), sin then cos (cos then sin with flip_sin_to_cos), zero-padded when
// embedding_dim is odd.
torch::Tensor get_timestep_embedding(const torch::Tensor& timesteps, int64_t embedding_dim,
                                     bool flip_sin_to_cos = false,
                                     double downscale_freq_shift = 1.0, double scale = 1.0,
                                     int64_t max_period = 10000);

// get_timestep_embedding as a module (no parameters); always returns float32.
class TimestepsImpl : public torch::nn::Module {
 public:
  TimestepsImpl(int64_t num_channels, bool flip_sin_to_cos, double downscale_freq_shift,
                double scale = 1.0);
  torch::Tensor forward(const torch::Tensor& timesteps);

  int64_t num_channels() const { return num_channels_; }

 private:
  int64_t num_channels_;
  bool flip_sin_to_cos_;
  double downscale_freq_shift_;
  double scale_;
};
TORCH_MODULE(Timesteps);

// linear_1 -> SiLU -> linear_2 (act_fn "silu", no cond_proj, no post activation: the SD
// configuration).
class TimestepEmbeddingImpl : public torch::nn::Module {
 public:
  TimestepEmbeddingImpl(int64_t in_channels, int64_t time_embed_dim, int64_t out_dim = 0);
  torch::Tensor forward(const torch::Tensor& sample);

  torch::nn::Linear linear_1{nullptr};
  torch::nn::Linear linear_2{nullptr};
};
TORCH_MODULE(TimestepEmbedding);

}  // namespace ldcp::models
