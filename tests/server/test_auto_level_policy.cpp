// AUTO's level choice (auto_level_policy.h) through the scheduler and a fake engine whose step
// time falls with the level: the least pruning that keeps up with the arrivals.

#include "server/auto_level_policy.h"

#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include "tests/server/scheduler_fixture.h"

namespace ldcp::server {
namespace {

using namespace std::chrono_literals;
using namespace testing;

// The least pruning that keeps up: memory is plentiful, pruning only makes steps faster.
// Steps of 60 / 25 / 8 ms at levels 0 / 0.35 / 0.7 and 2 steps per request: ~8, 20 and ~62
// images/s (wide gaps: the machine running the tests may be busy).
struct ThroughputFixture {
  explicit ThroughputFixture(const std::function<void(SchedulerConfig&)>& tweak = {})
      : budget(1 << 30, 0, [this] { return engine.memory(); }), costs(0.0) {
    engine.step_time_at = [](double level) {
      return level >= 0.7 ? 8ms : level >= 0.35 ? 25ms : 60ms;
    };
    CalibrationPlan plan;
    plan.sizes = {{64, 64}};
    plan.levels = {0.0, 0.35, 0.7};
    plan.batch_sizes = {1};
    plan.steps = 1;
    std::vector<CalibrationRun> runs;
    calibrate(engine, costs, plan, &runs);
    budget.set_baseline(1000);
    SchedulerConfig c = Fixture::base_config();
    c.levels = {0.0, 0.35, 0.7};
    c.max_level = 0.7;
    c.max_queue = 256;
    c.auto_policy.rate_window = 2000ms;
    c.auto_policy.rate_min_arrivals = 0;  // the window alone: these cases switch rates in seconds
    c.auto_policy.drain_seconds = 2;
    if (tweak) tweak(c);
    scheduler = std::make_unique<RequestScheduler>(engine, budget, costs, &metrics, c);
    for (const auto& run : runs) {
      scheduler->auto_policy().record_batch(run.level, run.images, run.steps, run.seconds,
                                            run.fixed_seconds, run.pixels);
    }
  }
  // Requests at a steady rate for `duration`; the outcomes in arrival order.
  std::vector<JobOutcome> load(double per_second, std::chrono::milliseconds duration) {
    std::vector<Submitted> sent;
    const auto interval = std::chrono::duration_cast<Clock::duration>(
        std::chrono::duration<double>(1.0 / per_second));
    const auto start = Clock::now();
    for (auto next = start; next < start + duration; next += interval) {
      std::this_thread::sleep_until(next);
      sent.push_back(submit(*scheduler, 64, 0, {}, 2));
    }
    std::vector<JobOutcome> out;
    for (auto& s : sent) {
      EXPECT_EQ(s.done.wait_for(30s), std::future_status::ready);
      out.push_back(s.done.get());
    }
    return out;
  }
  // `clients` closed-loop clients (each resubmits as soon as it is answered) for `duration`, the
  // i-th starting i x `stagger` later; the outcomes in completion order.
  std::vector<JobOutcome> closed_loop(int clients, std::chrono::milliseconds duration,
                                      std::chrono::milliseconds stagger = 0ms) {
    std::mutex mu;
    std::vector<JobOutcome> out;
    const auto end = Clock::now() + duration;
    std::vector<std::thread> threads;
    for (int i = 0; i < clients; ++i) {
      threads.emplace_back([&, i] {
        std::this_thread::sleep_for(i * stagger);
        while (Clock::now() < end) {
          auto s = submit(*scheduler, 64, 0, {}, 2);
          if (s.done.wait_for(30s) != std::future_status::ready) return;
          std::lock_guard lock(mu);
          out.push_back(s.done.get());
        }
      });
    }
    for (auto& t : threads) t.join();
    return out;
  }
  // The median level of the last third (after the start-up transient).
  static double settled_level(const std::vector<JobOutcome>& outcomes) {
    std::vector<double> levels;
    for (size_t i = outcomes.size() * 2 / 3; i < outcomes.size(); ++i) {
      levels.push_back(outcomes[i].level);
    }
    std::sort(levels.begin(), levels.end());
    return levels.empty() ? -1 : levels[levels.size() / 2];
  }

  FakeEngine engine;
  MemoryBudget budget;
  CostModel costs;
  Metrics metrics;
  std::unique_ptr<RequestScheduler> scheduler;
};

TEST(AutoLevelPolicy, ArrivalRateIsZeroForALoneRequestAndTheRateOfASteadyStream) {
  AutoLevelConfig config;
  config.rate_window = 2000ms;
  config.rate_min_arrivals = 0;
  AutoLevelPolicy policy(config);
  const auto t0 = AutoLevelPolicy::Clock::now();
  EXPECT_EQ(policy.arrival_rate(t0), 0.0);
  policy.record_arrival(1, t0);
  EXPECT_EQ(policy.arrival_rate(t0), 0.0);  // an idle server's first request is not load
  EXPECT_EQ(policy.arrival_rate(t0 + 500ms), 0.0);
  for (int i = 1; i <= 10; ++i) policy.record_arrival(1, t0 + i * 100ms);  // 10 per second
  EXPECT_NEAR(policy.arrival_rate(t0 + 1000ms), 10.0, 1e-9);
  // The window forgets: one second later only the last arrivals count.
  EXPECT_NEAR(policy.arrival_rate(t0 + 2900ms), 1.0 / 2.0, 1e-9);  // one after t0+0.9 s
}

// At a low rate the window stretches back over the last rate_min_arrivals arrivals: a clump of
// three (Poisson draws clump) no longer reads as a rate well above the stream's.
TEST(AutoLevelPolicy, ALowRateIsMeasuredOverTheLastArrivalsNotTheWindowAlone) {
  const auto t0 = AutoLevelPolicy::Clock::now();
  auto feed = [&](AutoLevelPolicy& policy) {
    for (int i = 0; i < 16; ++i) policy.record_arrival(1, t0 + i * 4s);  // 0.25/s, t = 0..60 s
    for (auto t : {64500ms, 65000ms, 65500ms}) policy.record_arrival(1, t0 + t);
  };
  AutoLevelConfig window_only;
  window_only.rate_window = 10s;
  window_only.rate_min_arrivals = 0;
  AutoLevelPolicy short_window(window_only);
  feed(short_window);
  // t = 56, 60 and the clump: 4 images after the oldest, over 10 s.
  EXPECT_NEAR(short_window.arrival_rate(t0 + 66s), 0.4, 1e-9);
  AutoLevelConfig stretched = window_only;
  stretched.rate_min_arrivals = 16;
  AutoLevelPolicy last_arrivals(stretched);
  feed(last_arrivals);
  // The 16th latest arrival is at t = 12 s: 15 images after it, over 54 s.
  EXPECT_NEAR(last_arrivals.arrival_rate(t0 + 66s), 15.0 / 54.0, 1e-9);
  // Bounded by rate_max_window: at most the last 20 s.
  stretched.rate_max_window = 20s;
  AutoLevelPolicy bounded(stretched);
  feed(bounded);
  EXPECT_NEAR(bounded.arrival_rate(t0 + 66s), 6.0 / 18.0, 1e-9);  // t = 48 .. 65.5
}

TEST(AutoLevelPolicy, IdleQueueRunsAtLevelZero) {
  ThroughputFixture f;
  auto r = submit(*f.scheduler, 64, 0, {}, 2);
  auto o = wait(r);
  ASSERT_EQ(o.status, Status::kOk) << o.message;
  EXPECT_EQ(o.level, 0.0);
  EXPECT_STREQ(o.level_reason, "none");
}

TEST(AutoLevelPolicy, ARateThatLevel035CanServeSettlesAtOrBelow035) {
  ThroughputFixture f;
  const auto outcomes = f.load(12, 3000ms);  // level 0 serves ~8/s, 0.35 20/s
  for (const auto& o : outcomes) ASSERT_EQ(o.status, Status::kOk) << o.message;
  EXPECT_LE(ThroughputFixture::settled_level(outcomes), 0.35);
  EXPECT_GT(ThroughputFixture::settled_level(outcomes), 0.0);  // level 0 would fall behind
}

TEST(AutoLevelPolicy, ARateOnlyLevel07CanServeGoesTo07) {
  ThroughputFixture f;
  const auto outcomes = f.load(35, 3000ms);  // 0.35 serves 20/s, 0.7 ~62/s
  for (const auto& o : outcomes) ASSERT_EQ(o.status, Status::kOk) << o.message;
  EXPECT_DOUBLE_EQ(ThroughputFixture::settled_level(outcomes), 0.7);
  EXPECT_STRNE(outcomes.back().level_reason, "memory");
}

// After a burst the level held for throughput comes down as soon as the queue is empty, not one
// grid step per hysteresis_decisions decisions (which held 0.7 -> 0.35 -> 0 over six batches).
TEST(AutoLevelPolicy, AfterABurstTheLevelFallsToThePolicysChoiceOnceTheQueueEmpties) {
  ThroughputFixture f;
  std::vector<Submitted> burst;
  for (int i = 0; i < 40; ++i) burst.push_back(submit(*f.scheduler, 64, 0, {}, 2));
  double highest = 0;
  for (auto& s : burst) {
    const auto o = wait(s);
    ASSERT_EQ(o.status, Status::kOk) << o.message;
    highest = std::max(highest, o.level);
  }
  EXPECT_GT(highest, 0.0);              // the burst was served pruned
  std::this_thread::sleep_for(2200ms);  // past the 2 s rate window: no arrivals in it
  auto lone = submit(*f.scheduler, 64, 0, {}, 2);
  const auto o = wait(lone);
  ASSERT_EQ(o.status, Status::kOk) << o.message;
  EXPECT_EQ(o.level, 0.0);
}

// A level between two calibrated ones is as fast as their times interpolated, not as slow as the
// one below: a small shortfall at level 0 costs a mild level, not the next calibrated one.
TEST(AutoLevelPolicy, AnUncalibratedLevelBetweenTwoMeasuredOnesInterpolatesTheirTimes) {
  const auto t0 = AutoLevelPolicy::Clock::now();
  AutoLevelConfig config;
  config.rate_window = 200s;
  config.rate_min_arrivals = 0;
  AutoLevelPolicy policy(config);
  policy.record_batch(0.0, 1, 1, 10.0);  // 0.1 images/s
  policy.record_batch(0.7, 1, 1, 4.0);   // 0.25 images/s
  EXPECT_NEAR(*policy.throughput(0.35, 1, 1), 1.0 / 7.0, 1e-9);
  EXPECT_NEAR(*policy.throughput(0.0, 1, 1), 0.1, 1e-9);
  EXPECT_NEAR(*policy.throughput(0.9, 1, 1), 0.25, 1e-9);  // above: the highest measured
  for (int i = 0; i <= 12; ++i) {  // 0.12 images/s: level 0 falls behind, 0.35 keeps up
    policy.record_arrival(1, t0 + std::chrono::milliseconds(i * 8333));
  }
  const auto now = t0 + std::chrono::milliseconds(12 * 8333);
  const std::vector<AutoLevelPolicy::Option> fitting = {{1, 1, 0.0}, {1, 1, 0.35}, {1, 1, 0.7}};
  const auto choice = policy.choose(fitting, 0.7, 1, /*queued_images=*/1, now);
  ASSERT_TRUE(choice);
  EXPECT_EQ(choice->option.level, 0.35);
  EXPECT_EQ(choice->reason, LevelReason::kThroughput);
}

// A slow model (20 s an image at level 0, as SD1.5 on a CPU): one request queued behind the
// batch does not force pruning when level 0 keeps up with the arrivals; the queue then has
// drain_batches of level 0's batches to empty, not drain_seconds (10 s, half a batch). A long
// queue still does.
TEST(AutoLevelPolicy, ASlowModelsShortQueueDrainsWithinFourBatchesUnpruned) {
  const auto t0 = AutoLevelPolicy::Clock::now();
  auto make = [&](double drain_batches) {
    AutoLevelConfig config;
    config.rate_window = 200s;
    config.drain_seconds = 10;
    config.drain_batches = drain_batches;
    auto policy = std::make_unique<AutoLevelPolicy>(config);
    policy->record_batch(0.0, 1, 1, 20.0);  // 0.05 images/s
    policy->record_batch(0.7, 1, 1, 8.0);   // 0.125 images/s
    for (int i = 0; i <= 5; ++i) {          // 0.03 images/s: 0.6x level 0's throughput
      policy->record_arrival(1, t0 + std::chrono::milliseconds(i * 33333));
    }
    return policy;
  };
  const std::vector<AutoLevelPolicy::Option> fitting = {{1, 1, 0.0}, {1, 1, 0.7}};
  const auto now = t0 + std::chrono::milliseconds(5 * 33333);

  const auto short_queue = make(4)->choose(fitting, 0.7, 1, /*queued_images=*/2, now);
  ASSERT_TRUE(short_queue);
  EXPECT_EQ(short_queue->option.level, 0.0);
  EXPECT_EQ(short_queue->reason, LevelReason::kNone);
  EXPECT_NEAR(short_queue->required_rate, 0.03 + 1.0 / 80, 1e-3);  // 4 batches of 20 s

  // Draining in drain_seconds alone (the old rule) prunes for that one request.
  const auto seconds_only = make(0)->choose(fitting, 0.7, 1, 2, now);
  ASSERT_TRUE(seconds_only);
  EXPECT_EQ(seconds_only->option.level, 0.7);
  EXPECT_EQ(seconds_only->reason, LevelReason::kThroughput);

  // Ten queued images are a real backlog: the most pruning allowed.
  const auto long_queue = make(4)->choose(fitting, 0.7, 1, 10, now);
  ASSERT_TRUE(long_queue);
  EXPECT_EQ(long_queue->option.level, 0.7);
  EXPECT_EQ(long_queue->reason, LevelReason::kRequestCap);
}

// Saturation config for the fake engine's ~120 ms batches: 4 batches or 0.5 s of unbroken work.
void quick_saturation(SchedulerConfig& c) {
  c.auto_policy.saturation_seconds = 0.5;
  c.auto_policy.saturation_batches = 4;
  c.auto_policy.saturation_gap_fraction = 0.25;  // 30 ms: a busy test machine's resubmissions
}

// Four closed-loop clients: the arrival rate is whatever the level serves, so by the rate alone
// every level keeps up (AUTO stayed at 0.40 on the sd15 demo, 1.12x OFF). The engine never
// pauses while requests wait: AUTO climbs to the fastest level and stays there. The server's
// rate window and drain horizon (under the fixture's short ones the queue term alone prunes),
// and clients that join one by one, as on a server that was serving one of them: by the rate
// alone AUTO stays where the first client had it (0.35 in this case).
TEST(AutoLevelPolicy, ClosedLoopClientsSaturateTheEngineAndAutoClimbsToTheFastestLevel) {
  ThroughputFixture f([](SchedulerConfig& c) {
    c.auto_policy = AutoLevelConfig{};
    quick_saturation(c);
  });
  const auto outcomes = f.closed_loop(4, 4000ms, 300ms);
  ASSERT_GT(outcomes.size(), 24u);
  for (const auto& o : outcomes) ASSERT_EQ(o.status, Status::kOk) << o.message;
  EXPECT_DOUBLE_EQ(ThroughputFixture::settled_level(outcomes), 0.7);
  // Nothing keeps up with a closed loop: settled batches ran at the request cap (on a busy
  // machine a slow resubmission can end a busy period, and the rate then keeps 0.7 as
  // "throughput" until the next one is saturated).
  size_t capped = 0;
  for (size_t i = outcomes.size() * 2 / 3; i < outcomes.size(); ++i) {
    capped += std::string(outcomes[i].level_reason) == "request_cap";
  }
  EXPECT_GT(capped, 0u);
}

// One client that sends its next request when answered keeps the engine busy too, but nothing
// waits in the queue: no pruning.
TEST(AutoLevelPolicy, ASequentialClientIsNotSaturationAndRunsUnpruned) {
  ThroughputFixture f(quick_saturation);
  const auto outcomes = f.closed_loop(1, 2000ms);
  ASSERT_GT(outcomes.size(), 8u);
  for (const auto& o : outcomes) {
    ASSERT_EQ(o.status, Status::kOk) << o.message;
    EXPECT_EQ(o.level, 0.0);
  }
}

// An open loop at half of level 0's throughput leaves pauses between busy periods: unpruned.
TEST(AutoLevelPolicy, AnOpenLoopLevelZeroServesWithPausesStaysUnprunedUnderTheSaturationRule) {
  ThroughputFixture f(quick_saturation);
  const auto outcomes = f.load(4, 3000ms);  // level 0 serves ~8/s
  for (const auto& o : outcomes) ASSERT_EQ(o.status, Status::kOk) << o.message;
  EXPECT_EQ(ThroughputFixture::settled_level(outcomes), 0.0);
}

// Four closed-loop clients that one batch serves together (memory for all four at level 0):
// nobody waits in the queue for another batch, but the engine never pauses and every client
// waits for the others' images. Saturated too: AUTO climbs to 0.7.
TEST(AutoLevelPolicy, ClosedLoopClientsServedInOneBatchSaturateTheEngineToo) {
  ThroughputFixture f([](SchedulerConfig& c) {
    c.auto_policy = AutoLevelConfig{};
    quick_saturation(c);
    c.max_batch = 4;
    c.batch_window = 20ms;  // the four resubmissions join one batch
  });
  const auto outcomes = f.closed_loop(4, 4000ms);
  ASSERT_GT(outcomes.size(), 24u);
  for (const auto& o : outcomes) ASSERT_EQ(o.status, Status::kOk) << o.message;
  EXPECT_DOUBLE_EQ(ThroughputFixture::settled_level(outcomes), 0.7);
}

// saturated(): an unbroken busy period of saturation_batches batches (or saturation_seconds)
// while requests contend (the oldest waited half a batch, or several are queued).
TEST(AutoLevelPolicy, SaturationIsAnUnbrokenBusyPeriodWhileRequestsWait) {
  using std::chrono::milliseconds;
  const auto t0 = AutoLevelPolicy::Clock::now();
  AutoLevelConfig config;
  config.saturation_seconds = 5;
  config.saturation_batches = 4;
  config.saturation_gap = 500ms;
  AutoLevelPolicy policy(config);
  EXPECT_FALSE(policy.saturated(t0, false, 10));  // nothing ran yet
  // Batches of 2 s, 100 ms apart (a closed loop's resubmission): 8 s of work by t0 + 8.3 s.
  for (int i = 0; i < 4; ++i) {
    policy.record_busy(t0 + milliseconds(i * 2100), t0 + milliseconds(i * 2100 + 2000), 0.0);
  }
  const auto now = t0 + milliseconds(4 * 2100 - 100 + 10);
  EXPECT_TRUE(policy.saturated(now, false, 2.0));
  EXPECT_FALSE(policy.saturated(now, false, 0.5));       // the head barely waited: nobody queues
  EXPECT_TRUE(policy.saturated(now, false, 0.5, 4));     // unless several clients contend
  EXPECT_FALSE(policy.saturated(now + 1s, false, 2.0));  // a pause: the period ended
  EXPECT_TRUE(policy.saturated(now + 1s, true, 2.0));    // unless a batch is still running
  // After a pause longer than saturation_gap a new period starts: 2 batches are not enough.
  const auto later = now + 5s;
  policy.record_busy(later, later + 2s, 0.0);
  policy.record_busy(later + 2050ms, later + 4050ms, 0.0);
  EXPECT_FALSE(policy.saturated(later + 4100ms, false, 2.0));
  policy.record_busy(later + 4100ms, later + 6100ms, 0.0);
  policy.record_busy(later + 6150ms, later + 8150ms, 0.0);
  EXPECT_TRUE(policy.saturated(later + 8200ms, false, 2.0));
}

// Under saturation AUTO steps from the last batch's level to the next measurably faster one,
// whatever the arrival rate says, and at the top stays there (the request cap).
TEST(AutoLevelPolicy, UnderSaturationAutoStepsUpOneMeasurablyFasterLevelPerDecision) {
  const auto t0 = AutoLevelPolicy::Clock::now();
  AutoLevelConfig config;
  config.rate_window = 200s;
  config.rate_min_arrivals = 0;
  AutoLevelPolicy policy(config);
  policy.record_batch(0.0, 1, 1, 10.0);  // 0.1 images/s
  policy.record_batch(0.35, 1, 1, 9.8);  // 2% faster: not worth a level
  policy.record_batch(0.5, 1, 1, 8.0);
  policy.record_batch(0.7, 1, 1, 6.0);
  const std::vector<AutoLevelPolicy::Option> fitting = {
      {1, 1, 0.0}, {1, 1, 0.35}, {1, 1, 0.5}, {1, 1, 0.7}};
  // A closed loop's rate: exactly level 0's throughput, so by the rate level 0 keeps up.
  for (int i = 0; i <= 10; ++i) policy.record_arrival(1, t0 + std::chrono::seconds(i * 10));
  const auto now = t0 + 100s;
  const auto by_rate = policy.choose(fitting, 0.7, 1, /*queued_images=*/2, now);
  ASSERT_TRUE(by_rate);
  EXPECT_EQ(by_rate->option.level, 0.0);

  policy.record_busy(now - 10s, now, 0.0);
  auto step = policy.choose(fitting, 0.7, 1, 3, now, 0, false, /*saturated=*/true);
  ASSERT_TRUE(step);
  EXPECT_EQ(step->option.level, 0.5);  // 0.35 is within 5% of level 0: skipped
  EXPECT_EQ(step->reason, LevelReason::kThroughput);
  policy.record_busy(now, now + 8s, 0.5);
  step = policy.choose(fitting, 0.7, 1, 3, now + 8s, 0, false, true);
  ASSERT_TRUE(step);
  EXPECT_EQ(step->option.level, 0.7);
  EXPECT_EQ(step->reason, LevelReason::kRequestCap);
  policy.record_busy(now + 8s, now + 14s, 0.7);
  step = policy.choose(fitting, 0.7, 1, 3, now + 14s, 0, false, true);
  ASSERT_TRUE(step);
  EXPECT_EQ(step->option.level, 0.7);
}

}  // namespace
}  // namespace ldcp::server
