#pragma once
// The gated channels of one layer: `num_units` units (a GroupNorm group of a ResNet block, a
// chunk of a feed-forward's inner channels) of `unit_size` channels each. The layer's channels
// are reordered once at load time so that unit 0 is the most important; a forward then computes
// only the first kept_units() units (a prefix: sliced weights, no copies per level).
//
// Not thread-safe: the keep count is per-model state, set by whoever runs the model (the
// pipeline sets it before each U-Net call from the request's pruning level).

#include <cstdint>
#include <stdexcept>
#include <string>

#include <ATen/core/Tensor.h>

namespace ldcp::pruning {

class ChannelGate {
 public:
  ChannelGate(std::string name, int64_t num_units, int64_t unit_size)
      : name_(std::move(name)), num_units_(num_units), unit_size_(unit_size), kept_(num_units) {
    if (num_units <= 0 || unit_size <= 0) {
      throw std::invalid_argument("gate " + name_ + ": units and unit size must be positive");
    }
  }

  const std::string& name() const { return name_; }  // the layer's module path, e.g. "down_blocks.0.resnets.1"
  int64_t num_units() const { return num_units_; }
  int64_t unit_size() const { return unit_size_; }
  int64_t channels() const { return num_units_ * unit_size_; }

  int64_t kept_units() const { return kept_; }
  int64_t kept_channels() const { return kept_ * unit_size_; }
  bool sliced() const { return kept_ < num_units_; }

  // Keeps the first `units` units (1..num_units).
  void keep(int64_t units) {
    if (units < 1 || units > num_units_) {
      throw std::out_of_range("gate " + name_ + ": cannot keep " + std::to_string(units) +
                              " of " + std::to_string(num_units_) + " units");
    }
    kept_ = units;
  }
  void keep_all() { kept_ = num_units_; }

  // Training and tests only: a multiplicative mask over the units ([num_units], or
  // [batch, num_units]) applied to the full layer's activations instead of slicing. Undefined
  // (the default) means no mask.
  void set_mask(at::Tensor unit_mask) { mask_ = std::move(unit_mask); }
  const at::Tensor& mask() const { return mask_; }

  // Spatial positions (or tokens) the layer saw in its last forward, per batch element; used to
  // weigh units by their real cost.
  int64_t last_positions() const { return last_positions_; }
  void record_positions(int64_t positions) { last_positions_ = positions; }

 private:
  std::string name_;
  int64_t num_units_;
  int64_t unit_size_;
  int64_t kept_;
  at::Tensor mask_;
  int64_t last_positions_ = 0;
};

}  // namespace ldcp::pruning
