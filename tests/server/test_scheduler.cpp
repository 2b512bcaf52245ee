// The scheduling policy, driven through a fake engine whose memory costs and timing the tests
// control: admission, level choice under pressure, max_level, queue order, batching,
// cancellation, deadlines, hysteresis and the out-of-memory retry.

#include <future>
#include <memory>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "server/scheduler_batch.h"
#include "tests/server/scheduler_fixture.h"

namespace ldcp::server {
namespace {

using namespace std::chrono_literals;
using namespace testing;

TEST(Scheduler, IdleServerRunsAutoAtLevelZero) {
  Fixture f;
  auto r = submit(*f.scheduler);
  auto o = wait(r);
  ASSERT_EQ(o.status, Status::kOk) << o.message;
  EXPECT_EQ(o.level, 0.0);
  ASSERT_EQ(o.result.step_levels.size(), 3u);
  EXPECT_EQ(o.result.step_levels[0], 0.0);
  EXPECT_EQ(o.batch_requests, 1);
}

TEST(Scheduler, LevelRisesWithMeasuredPressure) {
  Fixture f;
  // Free = 10000 - in use: 9000 -> 0; 3000 -> 0.25 (cost 3000); 2000 -> 0.5; 1500 -> 0.75.
  const std::vector<std::pair<int64_t, double>> cases = {
      {1000, 0.0}, {7000, 0.25}, {8000, 0.5}, {8500, 0.75}};
  for (auto [in_use, expected] : cases) {
    f.engine.external = in_use;
    auto r = submit(*f.scheduler);
    auto o = wait(r);
    ASSERT_EQ(o.status, Status::kOk) << o.message;
    EXPECT_DOUBLE_EQ(o.level, expected) << "in use " << in_use;
    EXPECT_DOUBLE_EQ(o.result.step_levels.back(), expected);
  }
  EXPECT_DOUBLE_EQ(f.scheduler->auto_level(), 0.75);
}

TEST(Scheduler, LevelRisesWhenAnotherBatchHoldsMemory) {
  auto config = Fixture::base_config();
  config.workers = 2;
  Fixture f(config);
  f.engine.hold = true;
  auto first = submit(*f.scheduler);  // level 0, reserves 4000 -> 5000 left
  wait_started(f.engine, 1);
  f.engine.external = 1000;
  auto second = submit(*f.scheduler, 64, 0, {}, 3, 2);  // 2 images: 8000 at 0, 4000 at 0.5
  wait_started(f.engine, 2);
  f.engine.hold = false;
  auto a = wait(first), b = wait(second);
  ASSERT_EQ(a.status, Status::kOk);
  ASSERT_EQ(b.status, Status::kOk);
  EXPECT_EQ(a.level, 0.0);
  EXPECT_DOUBLE_EQ(b.level, 0.5);
}

TEST(Scheduler, MaxLevelIsNeverExceededTheRequestWaitsInstead) {
  auto config = Fixture::base_config();
  config.workers = 2;
  Fixture f(config);
  f.engine.hold = true;
  auto first = submit(*f.scheduler, 64, 0, {}, 3, 2);  // 2 images at 0: 8000 of 9000
  wait_started(f.engine, 1);
  // Alone it would need level 0.75 now (1000 bytes); it accepts at most 0.25: it waits.
  auto second = submit(*f.scheduler, 64, 0, auto_max(0.3));
  std::this_thread::sleep_for(100ms);
  EXPECT_EQ(f.engine.started, 1);
  EXPECT_EQ(f.scheduler->queue_depth(), 1);
  f.engine.hold = false;
  auto a = wait(first), b = wait(second);
  ASSERT_EQ(a.status, Status::kOk);
  ASSERT_EQ(b.status, Status::kOk) << b.message;
  EXPECT_LE(b.level, 0.25);
  for (double l : b.result.step_levels) EXPECT_LE(l, 0.25);
}

TEST(Scheduler, AdmissionRejectsWhatCanNeverFit) {
  Fixture f;
  // 3 images at level 0 need 12000 > 9000; OFF cannot prune: RESOURCE_EXHAUSTED at once.
  PruningRequest off;
  off.mode = PruningRequest::Mode::kOff;
  auto r = submit(*f.scheduler, 64, 0, off, 3, 3);
  auto o = wait(r);
  EXPECT_EQ(o.status, Status::kResourceExhausted);
  EXPECT_NE(o.message.find("bytes"), std::string::npos);
  // AUTO with max_level 0: same.
  auto r2 = submit(*f.scheduler, 64, 0, auto_max(0.0), 3, 3);
  EXPECT_EQ(wait(r2).status, Status::kResourceExhausted);
  // AUTO allowed up to 0.75: 3000 bytes, fits.
  auto r3 = submit(*f.scheduler, 64, 0, {}, 3, 3);
  auto o3 = wait(r3);
  ASSERT_EQ(o3.status, Status::kOk) << o3.message;
  EXPECT_DOUBLE_EQ(o3.level, 0.25);            // 9000 bytes exactly
  EXPECT_EQ(f.engine.runs().size(), 1u + 8u);  // calibration made 8 runs
}

TEST(Scheduler, PerStepScheduleIsCostedAtItsLeastPrunedStep) {
  Fixture f;
  // The least pruned step sets the peak: levels {0, 0.75} cost as level 0 (3 images: 12000 >
  // 9000, never fits), {0.25, 0.75} as level 0.25 (9000 bytes, fits).
  PruningRequest steps;
  steps.mode = PruningRequest::Mode::kFixed;
  steps.schedule = pruning::PruningSchedule::steps({0.0, 0.75});
  auto r = submit(*f.scheduler, 64, 0, steps, 3, 3);
  EXPECT_EQ(wait(r).status, Status::kResourceExhausted);
  steps.schedule = pruning::PruningSchedule::steps({0.25, 0.75});
  auto r2 = submit(*f.scheduler, 64, 0, steps, 3, 3);
  auto o2 = wait(r2);
  ASSERT_EQ(o2.status, Status::kOk) << o2.message;
  EXPECT_DOUBLE_EQ(o2.level, 0.75);  // reported: the highest level that ran
}

TEST(Scheduler, FullQueueIsUnavailable) {
  auto config = Fixture::base_config();
  config.max_queue = 2;
  Fixture f(config);
  f.engine.hold = true;
  auto running = submit(*f.scheduler);
  wait_started(f.engine, 1);
  auto q1 = submit(*f.scheduler);
  auto q2 = submit(*f.scheduler);
  auto q3 = submit(*f.scheduler);
  auto o3 = wait(q3);
  EXPECT_EQ(o3.status, Status::kUnavailable);
  EXPECT_NE(o3.message.find("queue is full"), std::string::npos);
  f.engine.hold = false;
  EXPECT_EQ(wait(running).status, Status::kOk);
  EXPECT_EQ(wait(q1).status, Status::kOk);
  EXPECT_EQ(wait(q2).status, Status::kOk);
}

TEST(Scheduler, QueueOrderIsPriorityThenArrival) {
  Fixture f;
  f.engine.hold = true;
  auto running = submit(*f.scheduler, 64);
  wait_started(f.engine, 1);
  // Distinct sizes identify the runs.
  auto a = submit(*f.scheduler, 72, 0);
  auto b = submit(*f.scheduler, 80, 5);
  auto c = submit(*f.scheduler, 88, 0);
  auto d = submit(*f.scheduler, 96, 5);
  f.engine.hold = false;
  for (auto* s : {&running, &a, &b, &c, &d}) EXPECT_EQ(wait(*s).status, Status::kOk);
  const auto runs = f.engine.runs();
  std::vector<int64_t> order;
  for (size_t i = 8; i < runs.size(); ++i) order.push_back(runs[i].requests[0].width);
  EXPECT_EQ(order, (std::vector<int64_t>{64, 80, 96, 72, 88}));
}

TEST(Scheduler, CompatibleRequestsShareABatchWithinTheWindow) {
  auto config = Fixture::base_config();
  config.max_batch = 4;
  config.batch_window = 300ms;
  Fixture f(config, 100000);
  auto a = submit(*f.scheduler);
  auto b = submit(*f.scheduler);
  auto other_size = submit(*f.scheduler, 72);
  auto c = submit(*f.scheduler);
  for (auto* s : {&a, &b, &c}) {
    auto o = wait(*s);
    ASSERT_EQ(o.status, Status::kOk);
    EXPECT_EQ(o.batch_requests, 3);
  }
  EXPECT_EQ(wait(other_size).batch_requests, 1);
  const auto runs = f.engine.runs();
  ASSERT_EQ(runs.size(), 8u + 2u);
  EXPECT_EQ(runs[8].requests.size(), 3u);
  EXPECT_EQ(runs[9].requests.size(), 1u);
  EXPECT_EQ(runs[9].requests[0].width, 72);
}

TEST(Scheduler, FullBatchStartsWithoutWaitingForTheWindow) {
  auto config = Fixture::base_config();
  config.max_batch = 2;
  config.batch_window = 5s;
  Fixture f(config, 100000);
  const auto t0 = Clock::now();
  auto a = submit(*f.scheduler);
  auto b = submit(*f.scheduler);
  EXPECT_EQ(wait(a).batch_requests, 2);
  EXPECT_EQ(wait(b).status, Status::kOk);
  EXPECT_LT(Clock::now() - t0, 3s);
}

TEST(Scheduler, PressureRaisesTheLevelToBatchMore) {
  auto config = Fixture::base_config();
  config.max_batch = 4;
  config.batch_window = 300ms;
  Fixture f(config);
  // 4 queued images: 16000 at 0, 12000 at .25, 8000 at .5 (fits 9000): one batch at 0.5.
  std::vector<Submitted> s;
  for (int i = 0; i < 4; ++i) s.push_back(submit(*f.scheduler));
  for (auto& x : s) {
    auto o = wait(x);
    ASSERT_EQ(o.status, Status::kOk);
    EXPECT_DOUBLE_EQ(o.level, 0.5);
    EXPECT_EQ(o.batch_requests, 4);
  }
}

TEST(Scheduler, FixedAndOffAreHonouredAndNotMixedWithAuto) {
  auto config = Fixture::base_config();
  config.max_batch = 4;
  config.batch_window = 200ms;
  Fixture f(config, 100000);
  auto fx = submit(*f.scheduler, 64, 0, fixed(0.5));
  auto au = submit(*f.scheduler, 64, 0, {});
  auto fx2 = submit(*f.scheduler, 64, 0, fixed(0.5));
  auto o1 = wait(fx), o2 = wait(au), o3 = wait(fx2);
  ASSERT_EQ(o1.status, Status::kOk);
  EXPECT_DOUBLE_EQ(o1.level, 0.5);
  EXPECT_EQ(o1.batch_requests, 2);
  EXPECT_DOUBLE_EQ(o3.level, 0.5);
  EXPECT_EQ(o2.level, 0.0);
  EXPECT_EQ(o2.batch_requests, 1);
}

TEST(Scheduler, CancelledWhileQueuedNeverRuns) {
  Fixture f;
  f.engine.hold = true;
  auto running = submit(*f.scheduler);
  wait_started(f.engine, 1);
  auto queued = submit(*f.scheduler, 72);
  queued.job->cancelled = true;
  auto o = wait(queued);
  EXPECT_EQ(o.status, Status::kCancelled);
  f.engine.hold = false;
  EXPECT_EQ(wait(running).status, Status::kOk);
  for (const auto& r : f.engine.runs()) EXPECT_NE(r.requests[0].width, 72);
}

TEST(Scheduler, CancelMidGenerationDropsOnlyThatRequest) {
  auto config = Fixture::base_config();
  config.max_batch = 2;
  config.batch_window = 500ms;
  Fixture f(config, 100000);
  f.engine.step_time = 20ms;
  auto a = submit(*f.scheduler, 64, 0, {}, 20);
  auto b = submit(*f.scheduler, 64, 0, {}, 20);
  wait_started(f.engine, 1);
  std::this_thread::sleep_for(60ms);
  a.job->cancelled = true;
  auto oa = wait(a), ob = wait(b);
  EXPECT_EQ(oa.status, Status::kCancelled);
  EXPECT_NE(oa.message.find("step"), std::string::npos);
  ASSERT_EQ(ob.status, Status::kOk);
  EXPECT_EQ(ob.result.step_levels.size(), 20u);
  EXPECT_EQ(ob.batch_requests, 2);
}

TEST(Scheduler, DeadlineMidGenerationAndExpiredDeadlineNeverStarts) {
  Fixture f;
  f.engine.step_time = 20ms;
  // 50 steps of 20 ms: a deadline 100 ms away expires mid-run. (Set before submit: the control
  // thread reads it from then on, so writing it afterwards was a data race, found by TSan.)
  auto running = std::make_shared<Job>();
  running->params.width = running->params.height = 64;
  running->params.steps = 50;
  running->params.sampler = "euler";
  running->deadline = Clock::now() + 100ms;
  std::promise<JobOutcome> pr;
  running->on_done = [&pr](JobOutcome&& r) { pr.set_value(std::move(r)); };
  f.scheduler->submit(running);
  auto o = pr.get_future().get();
  EXPECT_EQ(o.status, Status::kDeadlineExceeded);
  EXPECT_NE(o.message.find("step"), std::string::npos);

  auto expired = std::make_shared<Job>();
  expired->params.width = expired->params.height = 72;
  expired->params.steps = 2;
  expired->deadline = Clock::now() - 1ms;
  std::promise<JobOutcome> p;
  expired->on_done = [&p](JobOutcome&& r) { p.set_value(std::move(r)); };
  const auto before = f.engine.started.load();
  f.scheduler->submit(expired);
  auto oe = p.get_future().get();
  EXPECT_EQ(oe.status, Status::kDeadlineExceeded);
  EXPECT_EQ(f.engine.started.load(), before);
}

TEST(Scheduler, HysteresisKeepsLevelsFromFlapping) {
  Fixture f;
  auto level_at = [&](int64_t in_use) {
    f.engine.external = in_use;
    auto r = submit(*f.scheduler);
    auto o = wait(r);
    EXPECT_EQ(o.status, Status::kOk);
    return o.level;
  };
  // Pressure alternating around the 0 / 0.25 boundary: without hysteresis 0.25, 0, 0.25, 0...
  std::vector<double> alternating;
  for (int i = 0; i < 6; ++i) alternating.push_back(level_at(i % 2 == 0 ? 7000 : 1000));
  EXPECT_EQ(alternating, std::vector<double>(6, 0.25));
  // Sustained pressure relief: one grid step down per 3 decisions.
  level_at(8000);  // 0.5
  std::vector<double> relief;
  for (int i = 0; i < 7; ++i) relief.push_back(level_at(1000));
  EXPECT_EQ(relief, (std::vector<double>{0.5, 0.5, 0.25, 0.25, 0.25, 0.0, 0.0}));
}

TEST(Scheduler, IdleServerLetsTheHeldAutoLevelDecay) {
  for (const bool decay : {true, false}) {
    SCOPED_TRACE(decay ? "idle decay on" : "idle decay off");
    auto config = Fixture::base_config();
    config.sweep_interval = 5ms;
    config.idle_decay = decay ? 60ms : 0ms;
    Fixture f(config);
    f.engine.external = 8000;  // pressure: AUTO runs at 0.5
    auto r = submit(*f.scheduler);
    ASSERT_DOUBLE_EQ(wait(r).level, 0.5);
    f.engine.external = 1000;  // pressure gone, and no more requests
    std::vector<double> seen{f.scheduler->auto_level()};
    const auto deadline = std::chrono::steady_clock::now() + 3s;
    while (std::chrono::steady_clock::now() < deadline && seen.back() > 0.0) {
      std::this_thread::sleep_for(2ms);
      if (f.scheduler->auto_level() != seen.back()) seen.push_back(f.scheduler->auto_level());
    }
    if (decay) {
      EXPECT_EQ(seen, (std::vector<double>{0.5, 0.25, 0.0}));  // one grid level per interval
    } else {
      EXPECT_EQ(seen, std::vector<double>{0.5});
    }
  }
}

TEST(Scheduler, OutOfMemoryRetriesAutoOnceAtAHigherLevel) {
  Fixture f(Fixture::base_config(), 100000);
  f.engine.oom_below_level = 0.25;
  auto a = submit(*f.scheduler);
  auto o = wait(a);
  ASSERT_EQ(o.status, Status::kOk) << o.message;
  EXPECT_DOUBLE_EQ(o.level, 0.25);
  EXPECT_TRUE(o.retried_after_oom);
  // FIXED at level 0 cannot be raised: RESOURCE_EXHAUSTED; the server keeps serving.
  auto b = submit(*f.scheduler, 64, 0, fixed(0.0));
  EXPECT_EQ(wait(b).status, Status::kResourceExhausted);
  // Retried once only.
  f.engine.oom_below_level = 0.6;
  auto c = submit(*f.scheduler, 72);
  auto oc = wait(c);
  EXPECT_EQ(oc.status, Status::kResourceExhausted);
  f.engine.oom_below_level = -1;
  auto d = submit(*f.scheduler, 80);
  EXPECT_EQ(wait(d).status, Status::kOk);
}

TEST(Scheduler, BudgetOverrunIsCountedAndTheCostRaised) {
  Fixture f;
  // The batch peaks above what calibration measured: 9500 above 1000 in a 10000-byte budget.
  f.engine.cost = [](int64_t, double) -> int64_t { return 9500; };
  auto r = submit(*f.scheduler);
  auto o = wait(r);
  ASSERT_EQ(o.status, Status::kOk) << o.message;
  EXPECT_EQ(f.metrics.budget_overruns(), 1u);
  EXPECT_GE(f.costs.estimate(1, 64, 64, o.level), 9500);
  // Unpruned, the next one can no longer fit: rejected rather than run over the budget.
  auto next = submit(*f.scheduler, 64, 0, fixed(0.0));
  EXPECT_EQ(wait(next).status, Status::kResourceExhausted);
  EXPECT_EQ(f.metrics.budget_overruns(), 1u);
}

TEST(Scheduler, DrainRejectsNewWorkAndFinishesRunning) {
  Fixture f;
  f.engine.hold = true;
  auto running = submit(*f.scheduler);
  wait_started(f.engine, 1);
  auto queued = submit(*f.scheduler, 72);
  f.scheduler->drain();
  auto rejected = submit(*f.scheduler);
  EXPECT_EQ(wait(rejected).status, Status::kUnavailable);
  EXPECT_FALSE(f.scheduler->wait_idle(50ms));
  f.engine.hold = false;
  EXPECT_TRUE(f.scheduler->wait_idle(5s));
  EXPECT_EQ(wait(running).status, Status::kOk);
  EXPECT_EQ(wait(queued).status, Status::kOk);
}

TEST(Scheduler, AbortAllStopsRunningAndQueued) {
  Fixture f;
  f.engine.step_time = 10ms;
  auto running = submit(*f.scheduler, 64, 0, {}, 200);
  wait_started(f.engine, 1);
  auto queued = submit(*f.scheduler, 72);
  f.scheduler->abort_all("shutting down");
  EXPECT_EQ(wait(running).status, Status::kUnavailable);
  EXPECT_EQ(wait(queued).status, Status::kUnavailable);
}

// An init image's run skips the steps before its strength's first step: their levels neither run
// nor set the memory peak the batch is costed at.
TEST(Scheduler, PeakLevelOfAnInitImageCountsTheStepsThatRun) {
  Job job;
  job.params.steps = 4;
  job.pruning.schedule = pruning::PruningSchedule::steps({0.0, 0.7, 0.35, 0.7});
  EXPECT_EQ(peak_level(job), 0.0);
  job.params.init_image = torch::zeros({64, 64, 3}, torch::kUInt8);
  job.params.strength = 0.75;  // steps 1..3
  EXPECT_EQ(first_step_of(job), 1);
  EXPECT_EQ(peak_level(job), 0.35);
  job.params.strength = 0.25;  // step 3 only
  EXPECT_EQ(peak_level(job), 0.7);
  job.pruning.schedule = pruning::PruningSchedule::steps({0.2});  // the last level repeats
  EXPECT_EQ(peak_level(job), 0.2);
}

}  // namespace
}  // namespace ldcp::server
