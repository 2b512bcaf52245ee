#include "model/pruning/unet_pruner.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include <torch/torch.h>

#include "model/models/unets/unet_2d_condition.h"
#include "model/pruning/gated_layer.h"
#include "model/pruning/unit_order.h"

namespace ldcp::pruning {

std::vector<int64_t> unit_order(const at::Tensor& scores) {
  const auto values_t = scores.detach().to(torch::kCPU, torch::kDouble).contiguous();
  const double* values = values_t.data_ptr<double>();
  std::vector<int64_t> order(static_cast<size_t>(values_t.numel()));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return values[a] > values[b]; });
  return order;
}

std::vector<int64_t> unit_channels(const std::vector<int64_t>& order, int64_t unit_size) {
  std::vector<int64_t> channels;
  channels.reserve(order.size() * static_cast<size_t>(unit_size));
  for (int64_t unit : order) {
    for (int64_t c = 0; c < unit_size; ++c) channels.push_back(unit * unit_size + c);
  }
  return channels;
}

UNetPruner::UNetPruner(models::UNet2DConditionModelImpl& unet, const GateScores& scores,
                       const PlannerOptions& options)
    : scores_(scores), options_(options) {
  layers_ = attach_gates(unet);
  check_scores_fit(unet, scores, "gate scores (" + scores.source + ")");
  torch::NoGradGuard no_grad;
  for (const auto& ref : layers_) {
    auto layer_scores = scores.layers.at(ref.name).to(torch::kDouble).contiguous();
    std::vector<double> values(layer_scores.data_ptr<double>(),
                               layer_scores.data_ptr<double>() + layer_scores.numel());
    const auto order = unit_order(layer_scores);
    ref.layer->reorder_units(order);
    ref.layer->gate()->keep_all();
    double mean = 0;
    for (double v : values) mean += std::abs(v);
    mean /= static_cast<double>(values.size());
    std::vector<double> sorted;
    for (int64_t unit : order) {
      sorted.push_back(scores.normalize_per_layer && mean > 0 ? values[unit] / mean : values[unit]);
    }
    sorted_scores_.push_back(std::move(sorted));
    const int64_t units = ref.layer->gate()->num_units();
    floor_units_.push_back(std::max<int64_t>(
        1, static_cast<int64_t>(std::ceil(options_.min_keep_fraction * static_cast<double>(units)))));
  }

  // One forward at the smallest latent the U-Net accepts records every gate's positions, whose
  // ratios are the same at every size (all resolutions scale together).
  const auto& config = unet.config();
  const int64_t side = int64_t{1} << unet.num_upsamplers();
  const auto& weight = unet.conv_in->weight;
  auto options_t = torch::TensorOptions().dtype(weight.dtype()).device(weight.device());
  unet.forward(torch::zeros({1, config.in_channels, side, side}, options_t),
               torch::tensor(500, torch::kLong),
               torch::zeros({1, 1, config.cross_attention_dim_of(0)}, options_t));
  // Costs as at the model's native size (positions scale with the area; the time-embedding
  // rows of a ResNet unit do not), so the plan is the one for the size the model is used at.
  const int64_t native = config.sample_size ? std::max(config.sample_size->first, side) : 64;
  const int64_t area_scale = (native / side) * (native / side);
  for (const auto& ref : layers_) {
    unit_cost_.push_back(static_cast<double>(
        ref.layer->unit_macs(ref.layer->gate()->last_positions() * area_scale)));
  }
}

double UNetPruner::max_level() const {
  double total = 0, droppable = 0;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const auto units = layers_[l].layer->gate()->num_units();
    total += unit_cost_[l] * static_cast<double>(units);
    droppable += unit_cost_[l] * static_cast<double>(units - floor_units_[l]);
  }
  return total > 0 ? droppable / total : 0.0;
}

LevelPlan UNetPruner::plan(double level) const {
  if (!(level >= 0.0 && level < 1.0)) {
    throw std::invalid_argument("pruning level must be in [0, 1), got " + std::to_string(level));
  }
  LevelPlan plan;
  plan.level = level;
  double total_cost = 0, total_channels = 0;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const auto& gate = *layers_[l].layer->gate();
    plan.kept_units.push_back(gate.num_units());
    total_cost += unit_cost_[l] * static_cast<double>(gate.num_units());
    total_channels += static_cast<double>(gate.channels());
  }
  if (level == 0.0 || total_cost == 0) return plan;

  // Candidates: every droppable unit, least important first; ties by layer then unit so the
  // order is total and deterministic. Within a layer scores descend, so drops are suffixes.
  std::vector<std::tuple<double, size_t, int64_t>> candidates;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const auto units = static_cast<int64_t>(sorted_scores_[l].size());
    for (int64_t u = units - 1; u >= floor_units_[l]; --u) {
      candidates.emplace_back(sorted_scores_[l][u], l, -u);
    }
  }
  std::sort(candidates.begin(), candidates.end());
  double dropped_cost = 0, dropped_channels = 0;
  const double target = level * total_cost;
  for (const auto& [score, l, neg_unit] : candidates) {
    if (dropped_cost >= target) break;
    // A layer's kept count only shrinks from the end: skip a unit whose successors are kept.
    if (plan.kept_units[l] - 1 != -neg_unit) continue;
    plan.kept_units[l] -= 1;
    dropped_cost += unit_cost_[l];
    dropped_channels += static_cast<double>(layers_[l].layer->gate()->unit_size());
  }
  plan.dropped_macs_fraction = dropped_cost / total_cost;
  plan.dropped_channel_fraction = dropped_channels / total_channels;
  return plan;
}

void UNetPruner::apply(const LevelPlan& plan) {
  if (plan.kept_units.size() != layers_.size()) {
    throw std::invalid_argument("pruning plan does not match this U-Net's gated layers");
  }
  for (size_t l = 0; l < layers_.size(); ++l) layers_[l].layer->gate()->keep(plan.kept_units[l]);
}

void UNetPruner::reset() {
  for (const auto& ref : layers_) ref.layer->gate()->keep_all();
}

int64_t UNetPruner::dropped_macs_last_forward(const LevelPlan& plan) const {
  int64_t macs = 0;
  for (size_t l = 0; l < layers_.size(); ++l) {
    const auto& gate = *layers_[l].layer->gate();
    macs += (gate.num_units() - plan.kept_units[l]) * layers_[l].layer->unit_macs(gate.last_positions());
  }
  return macs;
}

int64_t UNetPruner::gated_macs_last_forward() const {
  int64_t macs = 0;
  for (const auto& ref : layers_) {
    const auto& gate = *ref.layer->gate();
    macs += gate.num_units() * ref.layer->unit_macs(gate.last_positions());
  }
  return macs;
}

std::string UNetPruner::describe(const LevelPlan& plan) const {
  std::ostringstream out;
  out << "pruning level " << plan.level << " (scores: " << scores_.source << "): drops "
      << plan.dropped_macs_fraction * 100 << "% of gated MACs, "
      << plan.dropped_channel_fraction * 100 << "% of gated channels\n";
  for (size_t l = 0; l < layers_.size(); ++l) {
    const auto& gate = *layers_[l].layer->gate();
    out << "  " << layers_[l].name << ": keeps " << plan.kept_units[l] << "/" << gate.num_units()
        << " units of " << gate.unit_size() << " channels\n";
  }
  return out.str();
}

}  // namespace ldcp::pruning
