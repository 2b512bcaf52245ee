#include "model/models/layers.h"

#include <torch/torch.h>

namespace ldcp::models {
namespace {

thread_local bool skip_initialization = false;
thread_local std::optional<c10::ScalarType> uninitialized_dtype;

// Gives `parameter` uninitialized storage of `shape` (the registered parameter is the same
// tensor, so the module sees the new size).
void resize_uninitialized(at::Tensor& parameter, at::IntArrayRef shape) {
  if (!parameter.defined()) return;
  torch::NoGradGuard no_grad;
  auto options = parameter.options();
  if (uninitialized_dtype) options = options.dtype(*uninitialized_dtype);
  parameter.set_data(at::empty(shape, options));
}

}  // namespace

UninitializedParameters::UninitializedParameters(std::optional<c10::ScalarType> dtype)
    : previous_active_(skip_initialization), previous_dtype_(uninitialized_dtype) {
  skip_initialization = true;
  uninitialized_dtype = dtype;
}

UninitializedParameters::~UninitializedParameters() {
  skip_initialization = previous_active_;
  uninitialized_dtype = previous_dtype_;
}

bool UninitializedParameters::active() { return skip_initialization; }

std::optional<c10::ScalarType> UninitializedParameters::dtype() { return uninitialized_dtype; }

torch::nn::Conv2d conv2d(const torch::nn::Conv2dOptions& options) {
  if (!skip_initialization) return torch::nn::Conv2d(options);
  // The smallest valid layer (one channel per group) draws next to nothing; then the real
  // widths, with empty parameters.
  auto small = options;
  small.in_channels(options.groups()).out_channels(options.groups());
  torch::nn::Conv2d conv(small);
  conv->options.in_channels(options.in_channels()).out_channels(options.out_channels());
  const auto kernel = options.kernel_size();
  resize_uninitialized(
      conv->weight, {options.out_channels(), options.in_channels() / options.groups(), (*kernel)[0],
                     (*kernel)[1]});
  resize_uninitialized(conv->bias, {options.out_channels()});
  return conv;
}

torch::nn::Linear linear(const torch::nn::LinearOptions& options) {
  if (!skip_initialization) return torch::nn::Linear(options);
  torch::nn::Linear layer(torch::nn::LinearOptions(1, 1).bias(options.bias()));
  layer->options = options;
  resize_uninitialized(layer->weight, {options.out_features(), options.in_features()});
  resize_uninitialized(layer->bias, {options.out_features()});
  return layer;
}

torch::nn::Embedding embedding(const torch::nn::EmbeddingOptions& options) {
  if (!skip_initialization) return torch::nn::Embedding(options);
  auto small = options;
  small.num_embeddings(1).padding_idx(std::nullopt);
  torch::nn::Embedding layer(small);
  layer->options = options;
  resize_uninitialized(layer->weight, {options.num_embeddings(), options.embedding_dim()});
  return layer;
}

}  // namespace ldcp::models
