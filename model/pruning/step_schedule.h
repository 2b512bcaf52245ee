#pragma once
// Step-aware pruning schedules: one level per denoising step, chosen for an average U-Net FLOPs
// budget from measured per-step sensitivities (`ldcp tune-schedule`), stored in a gates file's
// metadata and mapped onto the timesteps of any request. Pure arithmetic and JSON, no libtorch,
// so that the optimiser is unit-testable without a model.
//
// Terms. A step's FLOPs fraction is its U-Net FLOPs over level 0's; it falls linearly with the
// level (1 - gated share x dropped share), so FlopsCurve interpolates measured points. A budget
// B is the mean FLOPs fraction over a run's steps. The sensitivity of step i at level l is the
// final-image error when only step i is pruned at l; the optimiser predicts a schedule's error
// as the sum over its steps.

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace ldcp::pruning {

// U-Net FLOPs fraction as a function of the level: linear between measured points, (0, 1) first.
struct FlopsCurve {
  std::vector<double> levels;     // ascending, levels[0] == 0
  std::vector<double> fractions;  // fractions[0] == 1, strictly decreasing

  double at(double level) const;            // clamped to [0, max_level()]
  double level_for(double fraction) const;  // the inverse, clamped to the curve's range
  double max_level() const { return levels.empty() ? 0.0 : levels.back(); }
  // Throws std::invalid_argument (prefixed with `what`) unless the points are as described.
  void validate(const std::string& what) const;
};

// Measured per-step sensitivities: error[i][g] is the final-image error (MSE against the
// level-0 image) with only step i pruned, at levels[g]; between grid levels (and from 0, where
// the error is 0) linear.
struct StepSensitivity {
  std::vector<double> levels;              // the grid, ascending, all > 0
  std::vector<std::vector<double>> error;  // [step][grid level], finite, >= 0

  size_t num_steps() const { return error.size(); }
  double at(size_t step, double level) const;
  void validate(const std::string& what) const;
};

// One learned schedule: per-step levels whose mean FLOPs fraction is `budget`.
struct StepSchedule {
  double budget = 1.0;            // mean U-Net FLOPs fraction over the steps, in (0, 1]
  double floor = 0.0;             // no step below this level (bounds the request's peak memory)
  std::string sampler;            // what it was tuned for
  int64_t steps = 0;              // the requested step count (PNDM runs one timestep more)
  std::vector<double> timesteps;  // of the steps that ran, in run order
  std::vector<double> levels;     // one per timestep, in [floor, flops.max_level()]
  double flops_fraction = 1.0;    // the mean FLOPs fraction the curve predicts (== budget)
  FlopsCurve flops;               // the curve it was solved on (re-mapping keeps the budget on it)
  double predicted_error = 0.0;   // sum of the steps' sensitivities (informational)
  double constant_level = 0.0;    // the one level with the same mean FLOPs (informational)
};

// The budgets a floor and the curve allow: [fraction at max_level, fraction at floor].
std::pair<double, double> feasible_budgets(const FlopsCurve& flops, double floor);

// Mean FLOPs fraction of per-step levels on the curve.
double mean_flops_fraction(const FlopsCurve& flops, const std::vector<double>& levels);
// Predicted final error of per-step levels: the sum of the steps' sensitivities.
double predicted_error(const StepSensitivity& sensitivity, const std::vector<double>& levels);

// The constant level whose FLOPs fraction is `budget` (the baseline schedule); throws
// std::invalid_argument when the curve does not reach it.
double constant_level_for_budget(const FlopsCurve& flops, double budget);

struct ScheduleOptimizerOptions {
  // Candidate levels per step on the DP grid (uniform in FLOPs); 0: as many as keep the DP
  // near 4e7 operations (between 16 and 200).
  int grid_points = 0;
};

// Per-step levels in [floor, min(grid max, curve max)] minimising the predicted error subject
// to a mean FLOPs fraction equal to `budget`: a DP over steps on a grid uniform in FLOPs saved,
// then one step's level moved continuously so that the mean lands on the budget exactly.
// Throws std::invalid_argument for a budget outside feasible_budgets() (naming the range), a
// floor outside the grid, or malformed inputs. Fills every StepSchedule field except sampler,
// steps and timesteps.
StepSchedule optimize_step_schedule(const StepSensitivity& sensitivity, const FlopsCurve& flops,
                                    double budget, double floor,
                                    const ScheduleOptimizerOptions& options = {});

// The schedule's levels for a run whose timesteps are `timesteps`. The same timesteps as tuned
// (same sampler and step count): the stored levels. Otherwise the level as a function of the
// timestep (linear between the stored timesteps, mean of duplicates, constant beyond the ends),
// then shifted by one common amount, clamped to [floor, max level], so that the mean FLOPs
// fraction over the new steps equals the budget again.
std::vector<double> levels_for_timesteps(const StepSchedule& schedule,
                                         const std::vector<double>& timesteps);

// Gates-file metadata: the key, and the JSON text of a list of schedules.
inline constexpr const char* kStepSchedulesKey = "step_schedules";
// Bounds on what a (untrusted) gates file may hold.
inline constexpr size_t kMaxStepSchedules = 64;
inline constexpr size_t kMaxScheduleSteps = 4096;
inline constexpr size_t kMaxFlopsCurvePoints = 256;
inline constexpr size_t kMaxStepSchedulesJsonBytes = 4 << 20;

std::string step_schedules_to_json(const std::vector<StepSchedule>& schedules);
// Parses and validates (finite numbers, levels in [0, 1), lengths equal, budgets feasible on
// their curves and distinct, sizes bounded); errors name `file`, the key and the entry.
std::vector<StepSchedule> step_schedules_from_json(const std::string& text,
                                                   const std::string& file);
// The schedules in a gates file's metadata; none when the key is absent.
std::vector<StepSchedule> step_schedules_from_metadata(
    const std::map<std::string, std::string>& metadata, const std::string& file);

// The schedule whose budget equals `budget` within 1e-6; throws std::invalid_argument listing
// the stored budgets (or saying there are none) otherwise. `what` starts the message.
const StepSchedule& find_step_schedule(const std::vector<StepSchedule>& schedules, double budget,
                                       const std::string& what);

}  // namespace ldcp::pruning
