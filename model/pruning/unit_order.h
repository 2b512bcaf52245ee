#pragma once
// The order in which UNetPruner reorders a gated layer's units (reorder_units), from the
// layer's scores: descending score, ties by unit index. Others that must follow the same
// permutation (a LoRA's factors on a gated layer, model/lora) compute it here.

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

namespace ldcp::pruning {

// scores: [num_units]; the permutation reorder_units() receives (order[0]: the unit moved first).
std::vector<int64_t> unit_order(const at::Tensor& scores);

// The channels of the units in `order`, `unit_size` consecutive channels per unit: the channel
// permutation reorder_units() applies (ResnetBlock2D's conv1 rows and conv2 columns; one half
// of a FeedForward's proj rows, and its proj_out columns).
std::vector<int64_t> unit_channels(const std::vector<int64_t>& order, int64_t unit_size);

}  // namespace ldcp::pruning
