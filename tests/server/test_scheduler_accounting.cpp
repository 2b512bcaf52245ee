// What the scheduler learns from a batch and what it tells the client when one fails: peaks of
// overlapping batches (--workers > 1) never teach the cost model, and a libtorch error's
// backtrace never reaches the client.

#include "tests/server/scheduler_fixture.h"

namespace ldcp::server {
namespace {

using namespace std::chrono_literals;
using namespace testing;

TEST(SchedulerAccounting, OverlappingBatchesDoNotTeachTheCostModel) {
  auto config = Fixture::base_config();
  config.workers = 2;
  Fixture f(config, 1 << 20);  // memory is plentiful: both batches run at level 0 at once
  f.engine.process_wide_peaks = true;
  const int64_t before = f.costs.estimate(1, 64, 64, 0.0);
  f.engine.hold = true;
  auto first = submit(*f.scheduler, 64, 0, fixed(0.0));
  wait_started(f.engine, 1);
  auto second = submit(*f.scheduler, 64, 0, fixed(0.0));
  wait_started(f.engine, 2);
  f.engine.hold = false;
  auto a = wait(first), b = wait(second);
  ASSERT_EQ(a.status, Status::kOk) << a.message;
  ASSERT_EQ(b.status, Status::kOk) << b.message;
  // Each reports the process's peak (both batches: 8000 bytes), not its own 4000.
  EXPECT_EQ(
      std::max(a.result.peak_memory_above_weights_bytes, b.result.peak_memory_above_weights_bytes),
      8000);
  EXPECT_EQ(f.costs.estimate(1, 64, 64, 0.0), before);
  // A batch that ran alone does refine it.
  f.engine.cost = [](int64_t n, double) { return n * 5000; };
  auto alone = submit(*f.scheduler, 64, 0, fixed(0.0));
  ASSERT_EQ(wait(alone).status, Status::kOk);
  EXPECT_EQ(f.costs.estimate(1, 64, 64, 0.0), 5000);
}

TEST(SchedulerAccounting, AnInternalErrorTellsTheClientNoBacktrace) {
  Fixture f;
  f.engine.fail_with =
      "Expected all tensors to be on the same device\nException raised from "
      "check at /opt/pytorch/aten/src/ATen/native/TensorShape.cpp:42 (most recent call first):\n"
      "frame #0: c10::Error::Error(...) + 0x9c (0x7f3a2c1b0d4c in /usr/lib/libc10.so)";
  auto r = submit(*f.scheduler);
  auto o = wait(r);
  EXPECT_EQ(o.status, Status::kInternal);
  EXPECT_EQ(o.message.find("frame"), std::string::npos) << o.message;
  EXPECT_EQ(o.message.find("/opt/"), std::string::npos) << o.message;
  EXPECT_EQ(o.message.find("0x"), std::string::npos) << o.message;
  EXPECT_NE(o.message.find("server log"), std::string::npos) << o.message;
}

TEST(SchedulerAccounting, ACompletionThatThrowsDoesNotStopTheScheduler) {
  Fixture f;
  auto job = std::make_shared<Job>();
  job->params.width = job->params.height = 64;
  job->params.steps = 1;
  job->params.sampler = "euler";
  std::promise<void> called;
  job->on_done = [&called](JobOutcome&&) {
    called.set_value();
    throw std::runtime_error("the metrics registry is gone");
  };
  f.scheduler->submit(job);
  ASSERT_EQ(called.get_future().wait_for(10s), std::future_status::ready);
  // The next request is still served.
  auto next = submit(*f.scheduler);
  EXPECT_EQ(wait(next).status, Status::kOk);
}

}  // namespace
}  // namespace ldcp::server
