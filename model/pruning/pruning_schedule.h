#pragma once
// How much of the U-Net to prune at each denoising step of one request. A pruning level L in
// [0, 1) is the fraction of the gated FLOPs dropped (0: the unpruned model).

#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace ldcp::pruning {

struct PruningSchedule {
  enum class Mode {
    kOff,      // every step at level 0
    kFixed,    // every step at `level`, or only at steps whose timestep < `below_timestep`
    kPerStep,  // per_step[i] is step i's level (the last one repeats if there are more steps)
  };
  Mode mode = Mode::kOff;
  double level = 0.0;
  std::optional<double> below_timestep;  // kFixed only: prune only the late (low-noise) steps
  std::vector<double> per_step;

  static PruningSchedule off() { return {}; }
  static PruningSchedule fixed(double level) {
    PruningSchedule s;
    s.mode = Mode::kFixed;
    s.level = level;
    return s;
  }
  static PruningSchedule steps(std::vector<double> levels) {
    PruningSchedule s;
    s.mode = Mode::kPerStep;
    s.per_step = std::move(levels);
    return s;
  }

  // The level of step `step` (0-based) whose timestep is `timestep`.
  double level_at(int64_t step, double timestep) const {
    switch (mode) {
      case Mode::kOff:
        return 0.0;
      case Mode::kFixed:
        return (!below_timestep || timestep < *below_timestep) ? level : 0.0;
      case Mode::kPerStep:
        if (per_step.empty()) return 0.0;
        return per_step[std::min<size_t>(static_cast<size_t>(step), per_step.size() - 1)];
    }
    return 0.0;
  }

  // The largest level any step can get.
  double max_level() const {
    if (mode == Mode::kFixed) return level;
    double m = 0.0;
    if (mode == Mode::kPerStep) {
      for (double l : per_step) m = std::max(m, l);
    }
    return m;
  }

  // Throws std::invalid_argument naming the field when a level is outside [0, 1) or not finite.
  void validate() const {
    auto check = [](double l, const std::string& field) {
      if (!(l >= 0.0 && l < 1.0)) {
        throw std::invalid_argument(field + " must be in [0, 1), got " + std::to_string(l));
      }
    };
    if (mode == Mode::kFixed) check(level, "pruning level");
    for (size_t i = 0; i < per_step.size(); ++i) {
      check(per_step[i], "pruning per_step[" + std::to_string(i) + "]");
    }
    if (mode == Mode::kPerStep && per_step.empty()) {
      throw std::invalid_argument("pruning per_step must list at least one level");
    }
  }

  bool operator==(const PruningSchedule&) const = default;
};

}  // namespace ldcp::pruning
