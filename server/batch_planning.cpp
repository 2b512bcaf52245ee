// RequestScheduler's planning: which queued requests form the next batch, at which level, and
// what it reserves (the policy is described in request_scheduler.h).

#include <algorithm>
#include <cmath>

#include "server/metrics.h"
#include "server/request_scheduler.h"
#include "server/scheduler_batch.h"

namespace ldcp::server {

double RequestScheduler::allowed_max(const Job& job) const {
  if (job.pruning.mode != PruningRequest::Mode::kAuto) return job.pruning.schedule.max_level();
  const double cap = std::min(config_.max_level, job.pruning.max_level);
  double best = 0.0;
  for (double l : config_.levels) {
    if (l <= cap + 1e-12) best = l;
  }
  return best;
}

int64_t RequestScheduler::job_cost_floor(const Job& job) const {
  const double level =
      job.pruning.mode == PruningRequest::Mode::kAuto ? allowed_max(job) : peak_level(job);
  return costs_of(job).estimate(images_of(job), job.params.width, job.params.height, level,
                                guided(job));
}

bool RequestScheduler::compatible(const Job& head, const Job& other) const {
  const bool head_auto = head.pruning.mode == PruningRequest::Mode::kAuto;
  const bool other_auto = other.pruning.mode == PruningRequest::Mode::kAuto;
  if (head_auto != other_auto) return false;
  // A batch runs on one model's engine: never mixed.
  if (head.model != other.model) return false;
  return engine_of(head).batchable(head.params, other.params);
}

double RequestScheduler::grid_level_below(double level, double floor) const {
  double below = floor;
  for (double l : config_.levels) {
    if (l < level - 1e-12 && l >= floor) below = std::max(below, l);
  }
  return below;
}

double RequestScheduler::hysteresis(AutoState& st, double best, double allowed,
                                    const std::function<int64_t(double)>& cost, int64_t free) {
  if (best >= st.sticky_level) {
    st.sticky_level = best;
    st.down_streak = 0;
    return best;
  }
  // The next grid level below the current one (but not below what fits best).
  const double below = grid_level_below(st.sticky_level, best);
  const auto margin = static_cast<int64_t>(config_.hysteresis_fraction *
                                           static_cast<double>(budget_.budget_bytes()));
  if (cost(below) + margin <= free) {
    ++st.down_streak;
  } else {
    st.down_streak = 0;
  }
  if (st.down_streak >= config_.hysteresis_decisions) {
    st.sticky_level = below;
    st.down_streak = 0;
  }
  return std::max(best, std::min(st.sticky_level, allowed));
}

std::optional<RequestScheduler::Batch> RequestScheduler::plan(
    const std::vector<std::shared_ptr<Job>>& candidates, int64_t free) {
  const Job& head = *candidates.front();
  if (head.pruning.mode == PruningRequest::Mode::kAuto) return plan_auto(candidates, free);
  const int64_t w = head.params.width, h = head.params.height;
  const CostModel& costs = costs_of(head);
  for (size_t n = candidates.size(); n >= 1; --n) {
    Batch b;
    b.jobs.assign(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(n));
    for (const auto& j : b.jobs) b.images += images_of(*j);
    b.free_at_start = free;
    b.guided = guided(head);
    b.schedule = head.pruning.schedule;
    b.level = b.schedule.max_level();
    b.memory_level = peak_level(head);  // batchable jobs share the schedule and first step
    b.reserved = costs.estimate(b.images, w, h, b.memory_level, b.guided);
    if (b.reserved <= free) return b;
  }
  return std::nullopt;
}

std::optional<RequestScheduler::Batch> RequestScheduler::plan_auto(
    const std::vector<std::shared_ptr<Job>>& candidates, int64_t free) {
  const Job& head = *candidates.front();
  const int64_t w = head.params.width, h = head.params.height;
  const bool is_guided = guided(head);
  const CostModel& costs = costs_of(head);
  AutoState& st = *auto_[head.model];
  // Every (batch prefix, level) that fits, within the levels all of its requests allow.
  std::vector<AutoLevelPolicy::Option> fitting;
  std::vector<double> allowed_of(candidates.size() + 1, 1.0), floor_of(candidates.size() + 1, 0);
  int64_t images = 0;
  for (size_t n = 1; n <= candidates.size(); ++n) {
    const Job& j = *candidates[n - 1];
    images += images_of(j);
    allowed_of[n] = std::min(allowed_of[n - 1], allowed_max(j));
    floor_of[n] = std::max(floor_of[n - 1], j.min_level);
    for (double l : config_.levels) {
      if (l > allowed_of[n] + 1e-12) break;
      if (l + 1e-12 < floor_of[n]) continue;
      if (costs.estimate(images, w, h, l, is_guided) <= free) fitting.push_back({n, images, l});
    }
  }
  // The queue of this model: its throughput table is its own.
  int64_t queued_images = 0, queued_requests = 0;
  for (const auto& j : queue_) {
    if (j->model != head.model) continue;
    queued_images += images_of(*j);
    ++queued_requests;
  }
  const auto now = Clock::now();
  const bool saturated = st.policy.saturated(
      now, st.running > 0, std::chrono::duration<double>(now - head.arrival).count(),
      queued_requests);
  const auto choice =
      st.policy.choose(fitting, allowed_of[1], pipelines::steps_run(head.params), queued_images,
                       now, w * h, running_batches_ == 0 && st.sticky_level <= 0, saturated);
  if (!choice) return std::nullopt;
  const size_t n = choice->option.requests;
  Batch b;
  b.jobs.assign(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(n));
  b.images = choice->option.images;
  b.free_at_start = free;
  b.guided = is_guided;
  auto cost = [&](double l) { return costs.estimate(b.images, w, h, l, is_guided); };
  if (floor_of[n] > 0) {
    b.level = choice->option.level;  // an out-of-memory retry: no hysteresis
    b.reason = LevelReason::kMemory;
  } else {
    // The hysteresis damps flapping at the memory limit. A level held for throughput has done
    // its work once this batch empties the queue: from there the policy's own choice, so that
    // one burst does not hold a high level for several decisions per grid step.
    if (st.sticky_reason != LevelReason::kMemory && queued_images <= choice->option.images &&
        choice->option.level < st.sticky_level) {
      st.sticky_level = choice->option.level;
      st.down_streak = 0;
    }
    if (choice->option.level >= st.sticky_level) st.sticky_reason = choice->reason;
    b.level = hysteresis(st, choice->option.level, allowed_of[n], cost, free);
    // Held above the policy's choice by the hysteresis: what set the held level.
    b.reason = b.level > choice->option.level + 1e-12 ? st.sticky_reason : choice->reason;
  }
  b.schedule =
      b.level > 0 ? pruning::PruningSchedule::fixed(b.level) : pruning::PruningSchedule::off();
  b.memory_level = b.level;
  b.reserved = cost(b.level);
  if (metrics_) metrics_->auto_level_decision(level_reason_name(*b.reason));
  return b;
}

}  // namespace ldcp::server
