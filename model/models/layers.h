#pragma once
// The libtorch layers the networks are built from, made through these factories so that a
// network about to receive checkpoint weights skips drawing random ones.
//
// libtorch's Conv2d/Linear/Embedding constructors fill their parameters with random numbers
// (serially: about 4 s for SD1.5's U-Net on a CPU) that loading overwrites at once. Inside an
// UninitializedParameters scope the factories give the layers uninitialized parameters of the
// right shapes instead; outside one they construct the layers as libtorch does.

#include <cstdint>
#include <optional>
#include <utility>

#include <c10/core/ScalarType.h>

#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>

namespace ldcp::models {

// While alive (on this thread), the factories below leave parameters uninitialized, in
// `dtype` when given (so that a bf16 run never allocates its weights in fp32). For loaders
// only: every parameter must then be overwritten before use.
class UninitializedParameters {
 public:
  explicit UninitializedParameters(std::optional<c10::ScalarType> dtype = std::nullopt);
  ~UninitializedParameters();
  UninitializedParameters(const UninitializedParameters&) = delete;
  UninitializedParameters& operator=(const UninitializedParameters&) = delete;

  static bool active();
  // The dtype of the innermost active scope, if it set one.
  static std::optional<c10::ScalarType> dtype();

 private:
  bool previous_active_;
  std::optional<c10::ScalarType> previous_dtype_;
};

// A Module (holder) built inside an UninitializedParameters scope: for loaders that read every
// parameter from a checkpoint next (load_component is strict, so none is left unread).
template <typename Module, typename... Args>
Module make_uninitialized(std::optional<c10::ScalarType> dtype, Args&&... args) {
  UninitializedParameters skip_random_init(dtype);
  return Module(std::forward<Args>(args)...);
}

torch::nn::Conv2d conv2d(const torch::nn::Conv2dOptions& options);
torch::nn::Linear linear(const torch::nn::LinearOptions& options);
torch::nn::Embedding embedding(const torch::nn::EmbeddingOptions& options);

}  // namespace ldcp::models
