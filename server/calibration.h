#pragma once
// Start-up calibration of the cost model: real runs of the engine at the configured sizes,
// levels and batch sizes, recording each run's measured peak above the weights.

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "server/cost_model.h"
#include "server/engine.h"

namespace ldcp::server {

struct CalibrationPlan {
  std::vector<std::pair<int64_t, int64_t>> sizes;  // (width, height)
  std::vector<double> levels;
  std::vector<int64_t> batch_sizes = {1, 2};
  int64_t steps = 2;
  std::string sampler = "pndm";
};

// 1 .. max_batch: every batch size the scheduler can start is measured, not extrapolated.
std::vector<int64_t> calibration_batch_sizes(int64_t max_batch);

// One calibration run's wall time (AUTO's throughput table starts from these).
struct CalibrationRun {
  double level = 0;
  int64_t images = 0, steps = 0;
  int64_t pixels = 0;  // width x height
  double seconds = 0;
  double fixed_seconds = 0;  // text encoding and decoding (not per step)
};

// Runs the plan and fills `costs` (and `runs` when given). Returns the levels that ran (a level the
// engine rejects is left out with a warning; level 0 must run, or this throws).
std::vector<double> calibrate(Engine& engine, CostModel& costs, const CalibrationPlan& plan,
                              std::vector<CalibrationRun>* runs = nullptr);

}  // namespace ldcp::server
