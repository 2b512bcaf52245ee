#pragma once
// The scheduler's unit of work, shared by request_scheduler.cpp (running batches) and
// batch_planning.cpp (forming them). Internal to the scheduler.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "server/request_scheduler.h"

namespace ldcp::server {

struct RequestScheduler::Batch {
  std::vector<std::shared_ptr<Job>> jobs;
  pruning::PruningSchedule schedule;
  double level = 0;         // the schedule's highest level
  double memory_level = 0;  // its least pruned step's, which sets the peak (costs are per level)
  int64_t images = 0;
  int64_t reserved = 0;
  int64_t free_at_start = 0;
  bool guided = true;
  std::optional<LevelReason> reason;  // AUTO only
  Clock::time_point started{};        // when it was handed to a model thread
};

// Classifier-free guidance doubles the U-Net rows; costs are kept apart (cost_model.h).
inline bool guided(const Job& job) { return job.params.guidance_scale > 1.0; }
// The level of a schedule's least pruned step from `first_step` on (an init image's run skips
// the steps before pipelines::first_denoising_step): what its memory peak is costed at (a
// per-step schedule peaks at its lowest level, not its highest).
inline double peak_level(const pruning::PruningSchedule& schedule, int64_t first_step = 0) {
  switch (schedule.mode) {
    case pruning::PruningSchedule::Mode::kOff:
      return 0.0;
    case pruning::PruningSchedule::Mode::kFixed:
      return schedule.below_timestep ? 0.0 : schedule.level;
    case pruning::PruningSchedule::Mode::kPerStep:
      if (schedule.per_step.empty()) return 0.0;
      return *std::min_element(
          schedule.per_step.begin() +
              std::min<std::ptrdiff_t>(first_step,
                                       static_cast<std::ptrdiff_t>(schedule.per_step.size()) - 1),
          schedule.per_step.end());
  }
  return 0.0;
}

// The first step of the sampler's schedule a job runs (0 unless an init image's strength skips).
inline int64_t first_step_of(const Job& job) {
  return job.params.steps - pipelines::steps_run(job.params);
}
inline double peak_level(const Job& job) {
  return peak_level(job.pruning.schedule, first_step_of(job));
}

inline int64_t images_of(const Job& job) { return std::max<int64_t>(1, job.params.num_images); }

}  // namespace ldcp::server
