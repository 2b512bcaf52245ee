// Step-aware pruning schedules on synthetic sensitivities: the optimiser meets the FLOPs budget,
// keeps the floor, prunes the insensitive steps more and is no worse than a brute-force search;
// infeasible budgets are refused; the gates-file JSON round-trips and malformed metadata is
// rejected with the file and key named; re-mapping onto other timesteps keeps the budget.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/pruning/step_schedule.h"

namespace ldcp::pruning {
namespace {

// FLOPs fraction 1 - 0.6 L (60 % of the U-Net gated), measured at the grid.
FlopsCurve linear_curve() { return {{0.0, 0.25, 0.5, 0.75}, {1.0, 0.85, 0.7, 0.55}}; }

// Steps 0..n/2-1 are `ratio` times as sensitive as the rest; error grows like L^2.
StepSensitivity two_regimes(size_t n, double ratio) {
  StepSensitivity s;
  s.levels = {0.25, 0.5, 0.75};
  for (size_t i = 0; i < n; ++i) {
    const double weight = i < n / 2 ? ratio : 1.0;
    std::vector<double> row;
    for (double l : s.levels) row.push_back(weight * l * l);
    s.error.push_back(row);
  }
  return s;
}

double mean_of(const std::vector<double>& v, size_t begin, size_t end) {
  double sum = 0;
  for (size_t i = begin; i < end; ++i) sum += v[i];
  return sum / static_cast<double>(end - begin);
}

void expect_message(const std::function<void()>& call, const std::vector<std::string>& parts) {
  try {
    call();
    ADD_FAILURE() << "no exception; expected one mentioning " << parts.front();
  } catch (const std::invalid_argument& e) {
    for (const auto& part : parts) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos)
          << "\"" << e.what() << "\" does not mention \"" << part << "\"";
    }
  }
}

TEST(StepScheduleOptimizer, MeetsTheBudgetAboveTheFloor) {
  const auto curve = linear_curve();
  const auto sensitivity = two_regimes(20, 10.0);
  for (double budget : {0.55, 0.6, 0.7, 0.8, 0.85}) {
    const auto s = optimize_step_schedule(sensitivity, curve, budget, 0.25);
    ASSERT_EQ(s.levels.size(), 20u);
    const double mean = mean_flops_fraction(curve, s.levels);
    ASSERT_NEAR(mean, budget, 0.01 * budget) << "budget " << budget;  // the 1 %
    EXPECT_NEAR(mean, budget, 1e-9) << "budget " << budget;           // in fact exact
    EXPECT_NEAR(s.flops_fraction, budget, 1e-9);
    for (double l : s.levels) {
      EXPECT_GE(l, 0.25 - 1e-12);
      EXPECT_LE(l, 0.75 + 1e-12);
    }
    EXPECT_NEAR(s.constant_level, (1.0 - budget) / 0.6, 1e-9);
  }
}

TEST(StepScheduleOptimizer, PrunesInsensitiveStepsMore) {
  const auto curve = linear_curve();
  const auto sensitivity = two_regimes(20, 10.0);
  const auto s = optimize_step_schedule(sensitivity, curve, 0.7, 0.25);
  EXPECT_LT(mean_of(s.levels, 0, 10) + 0.1, mean_of(s.levels, 10, 20));
  // Better than the constant level with the same FLOPs, which it can also express.
  const std::vector<double> constant(20, s.constant_level);
  EXPECT_LT(s.predicted_error, 0.9 * predicted_error(sensitivity, constant));
  // Equal sensitivities: nothing to gain over a constant level (convex errors).
  const auto flat = optimize_step_schedule(two_regimes(20, 1.0), curve, 0.7, 0.0);
  const double constant_error = predicted_error(two_regimes(20, 1.0), constant);
  EXPECT_NEAR(flat.predicted_error, constant_error, 0.01 * constant_error);
}

TEST(StepScheduleOptimizer, NoWorseThanBruteForceOnNonConvexErrors) {
  // Three steps, errors that are not convex in the level, a curve that is not one line.
  StepSensitivity s;
  s.levels = {0.2, 0.4, 0.6, 0.8};
  s.error = {{0.5, 0.6, 3.0, 3.5}, {0.1, 2.0, 2.1, 2.2}, {1.0, 1.1, 1.2, 5.0}};
  FlopsCurve curve{{0.0, 0.2, 0.4, 0.6, 0.8}, {1.0, 0.9, 0.78, 0.7, 0.6}};
  const double budget = 0.76, floor = 0.1;
  const auto best = optimize_step_schedule(s, curve, budget, floor);
  EXPECT_NEAR(mean_flops_fraction(curve, best.levels), budget, 1e-9);
  double brute = std::numeric_limits<double>::infinity();
  for (double a = floor; a <= 0.8 + 1e-12; a += 0.002) {
    for (double b = floor; b <= 0.8 + 1e-12; b += 0.002) {
      const double third = 3 * budget - curve.at(a) - curve.at(b);
      if (third < curve.at(0.8) - 1e-12 || third > curve.at(floor) + 1e-12) continue;
      brute = std::min(brute, predicted_error(s, {a, b, curve.level_for(third)}));
    }
  }
  EXPECT_LE(best.predicted_error, brute + 1e-2) << "brute force found " << brute;
}

TEST(StepScheduleOptimizer, RejectsInfeasibleBudgets) {
  const auto curve = linear_curve();
  const auto sensitivity = two_regimes(8, 3.0);
  for (double budget : {0.5, 0.9, 0.0, std::nan("")}) {
    expect_message([&] { optimize_step_schedule(sensitivity, curve, budget, 0.25); },
                   {"infeasible", "[0.55, 0.85]"});
  }
  expect_message([&] { optimize_step_schedule(sensitivity, curve, 0.7, 0.8); }, {"floor 0.8"});
  // Floor at the top level: exactly one budget is possible.
  const auto all_top = optimize_step_schedule(sensitivity, curve, 0.55, 0.75);
  for (double l : all_top.levels) EXPECT_DOUBLE_EQ(l, 0.75);
}

StepSchedule example_schedule(double budget) {
  auto s = optimize_step_schedule(two_regimes(10, 5.0), linear_curve(), budget, 0.25);
  s.sampler = "pndm";
  s.steps = 10;
  for (int i = 0; i < 10; ++i) s.timesteps.push_back(901 - 100 * i);
  return s;
}

TEST(StepScheduleMetadata, RoundTrips) {
  const std::vector<StepSchedule> schedules = {example_schedule(0.6), example_schedule(0.8)};
  const auto text = step_schedules_to_json(schedules);
  const auto back = step_schedules_from_metadata({{kStepSchedulesKey, text}}, "g.safetensors");
  ASSERT_EQ(back.size(), 2u);
  for (size_t k = 0; k < 2; ++k) {
    EXPECT_EQ(back[k].budget, schedules[k].budget);
    EXPECT_EQ(back[k].floor, schedules[k].floor);
    EXPECT_EQ(back[k].sampler, "pndm");
    EXPECT_EQ(back[k].steps, 10);
    EXPECT_EQ(back[k].timesteps, schedules[k].timesteps);
    EXPECT_EQ(back[k].levels, schedules[k].levels);
    EXPECT_EQ(back[k].flops.levels, schedules[k].flops.levels);
    EXPECT_EQ(back[k].flops.fractions, schedules[k].flops.fractions);
    EXPECT_EQ(back[k].predicted_error, schedules[k].predicted_error);
  }
  EXPECT_TRUE(step_schedules_from_metadata({{"source", "learned"}}, "g").empty());
  EXPECT_EQ(&find_step_schedule(back, 0.8 + 5e-7, "--pruning-budget 0.8"), &back[1]);
  expect_message([&] { find_step_schedule(back, 0.7, "--pruning-budget 0.7"); },
                 {"--pruning-budget 0.7", "stored: 0.6, 0.8"});
  expect_message([&] { find_step_schedule({}, 0.7, "pruning.flops_budget"); },
                 {"pruning.flops_budget", "no learned step schedules"});
}

TEST(StepScheduleMetadata, RejectsMalformedEntries) {
  const auto good = nlohmann::json::parse(step_schedules_to_json({example_schedule(0.7)}));
  auto with = [&](const std::function<void(nlohmann::json&)>& edit) {
    auto j = good;
    edit(j);
    return j.dump();
  };
  const std::map<std::string, std::vector<std::string>> cases = {
      {"not json {", {"not valid JSON"}},
      {"{\"budget\": 0.7}", {"must be a JSON list"}},
      {with([](auto& j) { j[0].erase("budget"); }), {"[0].budget", "missing"}},
      {with([](auto& j) { j[0]["budget"] = "0.7"; }), {"[0].budget", "must be a number"}},
      {with([](auto& j) { j[0]["budget"] = 1.5; }), {"[0].budget", "(0, 1]"}},
      {with([](auto& j) { j[0]["levels"][3] = 1.5; }), {"[0].levels[3]", "[0, 1)"}},
      {with([](auto& j) { j[0]["levels"][3] = 0.1; }), {"[0].levels[3]", "floor 0.25"}},
      {with([](auto& j) { j[0]["levels"].erase(0); }), {"[0].levels", "9 entries for 10"}},
      {with([](auto& j) { j[0]["levels"] = nlohmann::json::array(); }), {"[0].levels", "1 to"}},
      {with([](auto& j) { j[0]["timesteps"][0] = 1e300; }), {"[0].timesteps"}},
      {with([](auto& j) { j[0]["steps"] = 0; }), {"[0].steps"}},
      {with([](auto& j) { j[0]["sampler"] = std::string(500, 'x') + "\n"; }),
       {"[0].sampler", "\"" + std::string(32, 'x') + "\""}},
      {with([](auto& j) { j[0]["flops_curve"]["fractions"][2] = 0.9; }),
       {"[0].flops_curve", "fall with the level"}},
      {with([](auto& j) { j[0]["flops_fraction"] = 0.5; }),
       {"[0].flops_fraction", "does not match"}},
      {with([](auto& j) { j[0]["budget"] = 0.71; }), {"[0].levels", "does not match"}},
      {with([](auto& j) { j.push_back(j[0]); }), {"[1]", "a second schedule for budget 0.7"}},
      {with([](auto& j) {
         for (int i = 0; i < 70; ++i) j.push_back(j[0]);
       }),
       {"71 schedules", "64 allowed"}},
      {std::string(100, '[') + std::string(100, ']'), {"nested too deeply"}},
      {std::string(5 << 20, ' '), {"bytes, more than"}},
  };
  for (const auto& [text, parts] : cases) {
    SCOPED_TRACE(text.substr(0, 120));
    auto all = parts;
    all.push_back("gates file bad.safetensors");
    all.push_back("\"step_schedules\"");
    expect_message([&] { step_schedules_from_json(text, "bad.safetensors"); }, all);
  }
}

TEST(StepScheduleRemap, KeepsTheBudgetOnOtherTimesteps) {
  const auto s = example_schedule(0.7);
  EXPECT_EQ(levels_for_timesteps(s, s.timesteps), s.levels);  // as tuned: unchanged
  auto spaced = [](int n, double first) {
    std::vector<double> t;
    for (int i = 0; i < n; ++i) t.push_back(first - first * i / n);
    return t;
  };
  for (const auto& timesteps :
       {spaced(25, 999), spaced(4, 999), spaced(1, 500), spaced(50, 980),
        std::vector<double>{999, 950, 950, 900, 850, 800},   // PNDM repeats one
        std::vector<double>{998.5, 990.1, 700.25, 12.5}}) {  // Euler-type fractional ones
    const auto levels = levels_for_timesteps(s, timesteps);
    ASSERT_EQ(levels.size(), timesteps.size());
    EXPECT_NEAR(mean_flops_fraction(s.flops, levels), 0.7, 1e-9) << timesteps.size() << " steps";
    for (double l : levels) {
      EXPECT_GE(l, s.floor - 1e-12);
      EXPECT_LE(l, 0.75 + 1e-12);
    }
  }
  // The shape is kept: the sensitive early (high-timestep) steps stay less pruned.
  const auto dense = levels_for_timesteps(s, spaced(40, 950));
  EXPECT_LT(mean_of(dense, 0, 20), mean_of(dense, 20, 40));
  // Duplicate stored timesteps (PNDM) are averaged, not a division by zero.
  auto pndm = s;
  pndm.timesteps[2] = pndm.timesteps[1];
  for (double l : levels_for_timesteps(pndm, spaced(7, 990))) EXPECT_TRUE(std::isfinite(l));
}

}  // namespace
}  // namespace ldcp::pruning
