#include <gtest/gtest.h>

#include "server/calibration.h"
#include "server/config.h"
#include "server/cost_model.h"
#include "server/memory_budget.h"

namespace ldcp::server {
namespace {

TEST(CostModel, InterpolatesImagesAndSizes) {
  CostModel m(0.0);
  m.add_measurement(1, 64, 64, 0.0, 1000);
  m.add_measurement(2, 64, 64, 0.0, 1800);
  m.add_measurement(1, 64, 64, 0.5, 600);
  m.add_measurement(2, 64, 64, 0.5, 1000);
  EXPECT_EQ(m.estimate(1, 64, 64, 0.0), 1000);
  EXPECT_EQ(m.estimate(3, 64, 64, 0.0), 2600);   // 200 + 800 per image
  EXPECT_EQ(m.estimate(1, 64, 64, 0.25), 1000);  // between levels: the level below
  EXPECT_EQ(m.estimate(1, 64, 64, 0.9), 600);    // above the top level: its cost
  EXPECT_EQ(m.estimate(1, 128, 64, 0.0), 2000);  // twice the pixels
  CostModel margin(0.1);
  margin.add_measurement(1, 64, 64, 0.0, 1000);
  EXPECT_EQ(margin.estimate(1, 64, 64, 0.0), 1100);
  EXPECT_EQ(margin.estimate(2, 64, 64, 0.0), 2200);  // proportional with one count
}

TEST(CostModel, ALevelCalibrationDidNotMeasureCostsTheLevelBelowUntilObserved) {
  CostModel m(0.0);
  for (double level : {0.35, 0.7}) {
    m.add_measurement(3, 64, 64, level, level < 0.5 ? 3000 : 2000);
  }
  // Interpolation would say 2857 at 0.40; the served batch below measured 2950: an overrun.
  EXPECT_EQ(m.estimate(3, 64, 64, 0.40), 3000);
  m.observe(3, 64, 64, 0.40, 2950);  // an exact entry, down a quarter from what it was costed at
  EXPECT_EQ(m.estimate(3, 64, 64, 0.40), 2988);
  EXPECT_EQ(m.estimate(3, 64, 64, 0.35), 3000);  // the calibrated levels are untouched
  EXPECT_EQ(m.estimate(3, 64, 64, 0.50), 3000);
  m.observe(3, 64, 64, 0.40, 3300);  // underestimated: raised at once
  EXPECT_EQ(m.estimate(3, 64, 64, 0.40), 3300);
}

TEST(CostModel, NeverRisesWithTheLevel) {
  CostModel m(0.0);
  m.add_measurement(1, 64, 64, 0.0, 1000);
  m.add_measurement(1, 64, 64, 0.5, 1200);  // noisy measurement above level 0's
  EXPECT_LE(m.estimate(1, 64, 64, 0.5), m.estimate(1, 64, 64, 0.0));
}

TEST(CostModel, RefinesFromObservations) {
  CostModel m(0.0);
  m.add_measurement(1, 64, 64, 0.0, 1000);
  m.observe(1, 64, 64, 0.0, 1500);  // underestimated: raised at once
  EXPECT_EQ(m.estimate(1, 64, 64, 0.0), 1500);
  m.observe(1, 64, 64, 0.0, 1100);  // overestimated: a quarter of the way down
  EXPECT_EQ(m.estimate(1, 64, 64, 0.0), 1400);
  m.observe_oom(1, 64, 64, 0.0, 2000);
  EXPECT_GE(m.estimate(1, 64, 64, 0.0), 2500);
  EXPECT_THROW(CostModel().estimate(1, 8, 8, 0), std::logic_error);
}

TEST(CostModel, ObservationsAtOtherSizesRefineTheNearestMeasuredSize) {
  CostModel m(0.0);
  m.add_measurement(1, 64, 64, 0.0, 1000);
  m.add_measurement(1, 64, 64, 0.5, 500);
  m.observe(1, 128, 64, 0.0, 3000);  // 1500 per 64x64
  EXPECT_EQ(m.estimate(1, 64, 64, 0.0), 1500);
  EXPECT_EQ(m.estimate(1, 128, 64, 0.0), 3000);
  EXPECT_EQ(m.estimate(1, 128, 64, 0.5), 1000);  // other levels keep their measurements
}

TEST(CostModel, GuidedAndUnguidedCostsAreKeptApart) {
  CostModel m(0.0);
  m.add_measurement(1, 64, 64, 0.0, 1000);  // calibration: guided
  // Unguided costs the guided estimate until observed...
  EXPECT_EQ(m.estimate(1, 64, 64, 0.0, false), 1000);
  m.observe(1, 64, 64, 0.0, 500, false);
  EXPECT_EQ(m.estimate(1, 64, 64, 0.0, false), 875);  // a quarter of the way down
  EXPECT_EQ(m.estimate(1, 64, 64, 0.0, true), 1000);  // ...and never lowers the guided cost
  m.observe(1, 64, 64, 0.0, 1600, false);             // underestimated: raised at once
  EXPECT_EQ(m.estimate(1, 64, 64, 0.0, false), 1600);
  EXPECT_EQ(m.estimate(2, 64, 64, 0.0, false), 2000);  // not observed: the guided estimate
}

TEST(CostModel, AnObservationAboveTheExtrapolationRaisesItAtOnce) {
  CostModel m(0.0);
  m.add_measurement(1, 64, 64, 0.7, 1000);
  m.add_measurement(2, 64, 64, 0.7, 1500);
  EXPECT_EQ(m.estimate(4, 64, 64, 0.7), 2500);  // linear: what the overrun came from
  m.observe(4, 64, 64, 0.7, 3100);
  EXPECT_EQ(m.estimate(4, 64, 64, 0.7), 3100);
  EXPECT_GE(m.estimate(4, 64, 64, 0.35), 3100);  // a milder level never costs less
}

TEST(Calibration, MeasuresEveryBatchSizeUpToMaxBatch) {
  EXPECT_EQ(calibration_batch_sizes(4), (std::vector<int64_t>{1, 2, 3, 4}));
  EXPECT_EQ(calibration_batch_sizes(0), (std::vector<int64_t>{1}));
}

TEST(MemoryBudget, OnCudaTheBatchPeakIncludesTheReservedPeak) {
  runtime::MemoryStats stats;
  stats.device_total_bytes = 10000;  // a device that reports its total: CUDA
  stats.peak_reserved_bytes = 9500;  // fragmentation above the allocated peak
  MemoryBudget cuda(9000, 0, [&] { return stats; });
  EXPECT_EQ(cuda.batch_peak_bytes(8000), 9500);
  EXPECT_EQ(cuda.batch_peak_bytes(9700), 9700);
  runtime::MemoryStats cpu;
  cpu.peak_reserved_bytes = 9500;
  MemoryBudget on_cpu(9000, 0, [&] { return cpu; });
  EXPECT_EQ(on_cpu.batch_peak_bytes(8000), 8000);
}

TEST(MemoryBudget, FromDeviceLessHeadroomAndFreeBytes) {
  runtime::MemoryStats stats;
  stats.allocated_bytes = 3000;
  stats.device_total_bytes = 10000;
  MemoryBudget b(0, 1000, [&] { return stats; });
  EXPECT_EQ(b.budget_bytes(), 9000);
  b.set_baseline(2000);
  EXPECT_EQ(b.free_bytes(0), 6000);     // measured 3000 in use
  EXPECT_EQ(b.free_bytes(2000), 5000);  // baseline + reserved 4000 > measured
  EXPECT_EQ(b.capacity_bytes(), 7000);
  runtime::MemoryStats cpu;
  EXPECT_THROW(MemoryBudget(0, 0, [&] { return cpu; }), std::invalid_argument);
  EXPECT_EQ(MemoryBudget(5000, 0, [&] { return cpu; }).budget_bytes(), 5000);
}

TEST(Config, ParsesBytesLevelsAndSizes) {
  EXPECT_EQ(parse_bytes("8GiB"), 8LL << 30);
  EXPECT_EQ(parse_bytes("512MiB"), 512LL << 20);
  EXPECT_EQ(parse_bytes("1.5GB"), 1500000000LL);
  EXPECT_EQ(parse_bytes("123"), 123);
  EXPECT_THROW(parse_bytes("12 parsecs"), std::invalid_argument);
  EXPECT_THROW(parse_bytes("x"), std::invalid_argument);
  EXPECT_EQ(parse_levels("0,0.5", "--levels"), (std::vector<double>{0.0, 0.5}));
  EXPECT_THROW(parse_levels("0,1", "--levels"), std::invalid_argument);
  EXPECT_THROW(parse_levels("0,nan", "--levels"), std::invalid_argument);
  const auto sizes = parse_sizes("256x256,512x768");
  ASSERT_EQ(sizes.size(), 2u);
  EXPECT_EQ(sizes[1], (std::pair<int64_t, int64_t>{512, 768}));
  EXPECT_THROW(parse_sizes("256"), std::invalid_argument);
}

}  // namespace
}  // namespace ldcp::server
