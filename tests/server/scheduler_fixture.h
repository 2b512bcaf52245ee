#pragma once
// The scheduler under test: a FakeEngine, a calibrated cost model and a budget, with helpers to
// submit jobs and wait for their outcomes. Shared by the scheduler's policy test files.

#include <future>
#include <memory>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "server/calibration.h"
#include "server/cost_model.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "server/request_scheduler.h"
#include "tests/server/fake_engine.h"

namespace ldcp::server::testing {

using namespace std::chrono_literals;

// Budget 10000 bytes, 1000 in use at idle: 9000 for batches. Cost: images x 4000 x (1 - level).
struct Fixture {
  explicit Fixture(SchedulerConfig config = base_config(), int64_t budget_bytes = 10000)
      : budget(budget_bytes, 0, [this] { return engine.memory(); }), costs(0.0) {
    calibrate(engine, costs, calibration_plan());
    budget.set_baseline(1000);
    engine.started = 0;  // count the scheduler's runs only
    scheduler = std::make_unique<RequestScheduler>(engine, budget, costs, &metrics, config);
  }
  // 64x64 at the grid's levels, batches of 1 and 2, one step.
  static CalibrationPlan calibration_plan() {
    CalibrationPlan plan;
    plan.sizes = {{64, 64}};
    plan.levels = {0.0, 0.25, 0.5, 0.75};
    plan.batch_sizes = {1, 2};
    plan.steps = 1;
    return plan;
  }
  static SchedulerConfig base_config() {
    SchedulerConfig c;
    c.levels = {0.0, 0.25, 0.5, 0.75};
    c.max_level = 0.75;
    c.max_batch = 1;
    c.batch_window = 0ms;
    c.hysteresis_decisions = 3;
    c.hysteresis_fraction = 0.05;
    c.max_queue = 8;
    return c;
  }

  FakeEngine engine;
  MemoryBudget budget;
  CostModel costs;
  Metrics metrics;
  std::unique_ptr<RequestScheduler> scheduler;
};

struct Submitted {
  std::shared_ptr<Job> job;
  std::future<JobOutcome> done;
};

inline Submitted submit(RequestScheduler& s, int64_t size = 64, int priority = 0,
                        PruningRequest pruning = {}, int64_t steps = 3, int64_t images = 1) {
  auto job = std::make_shared<Job>();
  job->params.width = job->params.height = size;
  job->params.steps = steps;
  job->params.num_images = images;
  job->params.sampler = "euler";
  job->pruning = pruning;
  if (pruning.mode != PruningRequest::Mode::kAuto) job->params.pruning = pruning.schedule;
  job->priority = priority;
  auto promise = std::make_shared<std::promise<JobOutcome>>();
  job->on_done = [promise](JobOutcome&& o) { promise->set_value(std::move(o)); };
  Submitted out{job, promise->get_future()};
  s.submit(job);
  return out;
}

inline JobOutcome wait(Submitted& s) {
  EXPECT_EQ(s.done.wait_for(10s), std::future_status::ready);
  return s.done.get();
}

inline PruningRequest fixed(double level) {
  PruningRequest p;
  p.mode = PruningRequest::Mode::kFixed;
  p.schedule = level > 0 ? pruning::PruningSchedule::fixed(level) : pruning::PruningSchedule::off();
  return p;
}

inline PruningRequest auto_max(double max_level) {
  PruningRequest p;
  p.max_level = max_level;
  return p;
}

inline void wait_started(FakeEngine& e, int n) {
  for (int i = 0; i < 2000 && e.started < n; ++i) std::this_thread::sleep_for(1ms);
  ASSERT_GE(e.started, n);
}

}  // namespace ldcp::server::testing
