#pragma once
// What the pruning machinery needs of a layer with a ChannelGate (ResnetBlock2D, FeedForward):
// the gate, a once-only reordering of its units, its cost per unit and a weight-only score.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/pruning/channel_gate.h"

namespace ldcp::pruning {

class GatedLayer {
 public:
  virtual ~GatedLayer() = default;
  // Creates the gate (idempotent); `name` is the layer's module path.
  virtual void enable_gate(const std::string& name) = 0;
  virtual const std::shared_ptr<ChannelGate>& gate() const = 0;
  // Permutes the units so that unit order[0] comes first; the layer's output is unchanged (to
  // rounding). In place, once, at load time.
  virtual void reorder_units(const std::vector<int64_t>& order) = 0;
  // Multiply-accumulates of one unit for one batch element that has `positions` spatial
  // positions (or tokens) in this layer.
  virtual int64_t unit_macs(int64_t positions) const = 0;
  // [num_units] float: the L1 norm of each unit's input-side weights (the rows that produce
  // the unit's channels); the `magnitude` importance source.
  virtual at::Tensor magnitude_scores() const = 0;
};

}  // namespace ldcp::pruning
