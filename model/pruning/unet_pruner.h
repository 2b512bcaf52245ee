#pragma once
// Learned Dynamic Channel Pruning of a UNet2DConditionModel: gates on every ResnetBlock2D and
// every transformer feed-forward, reordered once by importance, and the mapping from a pruning
// level to how many units each layer keeps.
//
// A level L in [0, 1) asks to drop the fraction L of the gated multiply-accumulates. Units are
// dropped globally in ascending score (per-layer-normalised where the source asks for it),
// always from the end of a layer (its least important units, thanks to the reordering), until
// the dropped cost reaches L; every layer keeps at least min_keep_fraction of its units. The
// mapping is deterministic; describe() prints it.

#include <cstdint>
#include <string>
#include <vector>

#include "model/pruning/gate_scores.h"

namespace ldcp::models {
class UNet2DConditionModelImpl;
}

namespace ldcp::pruning {

struct PlannerOptions {
  double min_keep_fraction = 0.125;  // no layer keeps fewer units than this (and at least one)
};

struct LevelPlan {
  double level = 0;                 // as requested
  double dropped_macs_fraction = 0;  // of the gated MACs actually dropped (>= level, by < one unit)
  double dropped_channel_fraction = 0;  // of the gated channels
  std::vector<int64_t> kept_units;      // per layer, in layers() order
};

class UNetPruner {
 public:
  // Attaches the gates, checks that `scores` fit (error naming the layer), reorders every gated
  // layer's units by descending score, in place (output unchanged), and measures each layer's
  // cost with one small forward pass.
  UNetPruner(models::UNet2DConditionModelImpl& unet, const GateScores& scores,
             const PlannerOptions& options = {});

  const std::vector<GatedLayerRef>& layers() const { return layers_; }
  const GateScores& scores() const { return scores_; }
  double max_level() const;  // the most that the per-layer floors allow

  LevelPlan plan(double level) const;  // throws std::invalid_argument outside [0, 1)
  void apply(const LevelPlan& plan);   // sets every gate's keep count; moves no weights
  void apply(double level) { apply(plan(level)); }
  void reset();                        // keep everything (level 0)

  // Gated MACs per batch element the plan drops at the positions the gates saw in their last
  // forward (so at the size last run).
  int64_t dropped_macs_last_forward(const LevelPlan& plan) const;
  // Gated MACs per batch element at level 0 at the last forward's positions.
  int64_t gated_macs_last_forward() const;

  // One line per layer: name, kept/total units, unit cost; then the totals.
  std::string describe(const LevelPlan& plan) const;

 private:
  std::vector<GatedLayerRef> layers_;
  GateScores scores_;
  PlannerOptions options_;
  std::vector<std::vector<double>> sorted_scores_;  // per layer, descending, normalised
  std::vector<double> unit_cost_;                   // MACs per unit at calibration size
  std::vector<int64_t> floor_units_;
};

}  // namespace ldcp::pruning
