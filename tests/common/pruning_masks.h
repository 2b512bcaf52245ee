#pragma once
// The masked counterpart of a pruned level, for the tests that check sliced == masked: each gated
// layer's gate multiplies its dropped units by 0 instead of slicing them away.

#include <torch/torch.h>

#include "model/pruning/gated_layer.h"
#include "model/pruning/unet_pruner.h"

namespace ldcp::testing {

// Masks every gated layer of `pruner` (after pruner.reset()) to keep `plan`'s units.
inline void set_plan_masks(const pruning::UNetPruner& pruner, const pruning::LevelPlan& plan) {
  for (size_t l = 0; l < pruner.layers().size(); ++l) {
    const auto& gate = pruner.layers()[l].layer->gate();
    auto mask = torch::zeros({gate->num_units()});
    mask.narrow(0, 0, plan.kept_units[l]).fill_(1.0);
    gate->set_mask(mask);
  }
}

inline void clear_masks(const pruning::UNetPruner& pruner) {
  for (const auto& ref : pruner.layers()) ref.layer->gate()->set_mask({});
}

}  // namespace ldcp::testing
