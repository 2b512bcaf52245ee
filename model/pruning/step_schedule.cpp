#include "model/pruning/step_schedule.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

namespace ldcp::pruning {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();

std::string num(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// Linear interpolation of ys over ascending xs, clamped at both ends.
double interpolate(const std::vector<double>& xs, const std::vector<double>& ys, double x) {
  if (x <= xs.front()) return ys.front();
  if (x >= xs.back()) return ys.back();
  const auto hi = static_cast<size_t>(std::upper_bound(xs.begin(), xs.end(), x) - xs.begin());
  const size_t lo = hi - 1;
  const double t = (x - xs[lo]) / (xs[hi] - xs[lo]);
  return ys[lo] + t * (ys[hi] - ys[lo]);
}

bool is_level(double l) { return std::isfinite(l) && l >= 0.0 && l < 1.0; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Curves

double FlopsCurve::at(double level) const { return interpolate(levels, fractions, level); }

double FlopsCurve::level_for(double fraction) const {
  // Fractions decrease with the level: interpolate over the reversed curve.
  std::vector<double> xs(fractions.rbegin(), fractions.rend());
  std::vector<double> ys(levels.rbegin(), levels.rend());
  return interpolate(xs, ys, fraction);
}

void FlopsCurve::validate(const std::string& what) const {
  if (levels.size() != fractions.size() || levels.size() < 2 ||
      levels.size() > kMaxFlopsCurvePoints) {
    throw std::invalid_argument(what + ": levels and fractions must have the same length, 2 to " +
                                std::to_string(kMaxFlopsCurvePoints) + " points");
  }
  if (levels[0] != 0.0 || !(std::abs(fractions[0] - 1.0) <= 1e-9)) {
    throw std::invalid_argument(what + ": must start at level 0 with fraction 1");
  }
  for (size_t k = 1; k < levels.size(); ++k) {
    if (!is_level(levels[k]) || !(levels[k] > levels[k - 1])) {
      throw std::invalid_argument(what + ": levels must ascend within [0, 1), got " +
                                  num(levels[k]) + " after " + num(levels[k - 1]));
    }
    if (!(std::isfinite(fractions[k]) && fractions[k] > 0.0 && fractions[k] < fractions[k - 1])) {
      throw std::invalid_argument(what +
                                  ": fractions must fall with the level within (0, 1], got " +
                                  num(fractions[k]) + " after " + num(fractions[k - 1]));
    }
  }
}

double StepSensitivity::at(size_t step, double level) const {
  if (level <= 0.0) return 0.0;
  const auto& row = error[step];
  if (level <= levels.front()) return row.front() * level / levels.front();
  return interpolate(levels, row, level);
}

void StepSensitivity::validate(const std::string& what) const {
  if (levels.empty() || levels.size() > kMaxFlopsCurvePoints) {
    throw std::invalid_argument(what + ": 1 to " + std::to_string(kMaxFlopsCurvePoints) +
                                " measured levels needed");
  }
  for (size_t g = 0; g < levels.size(); ++g) {
    if (!is_level(levels[g]) || levels[g] <= 0.0 || (g > 0 && !(levels[g] > levels[g - 1]))) {
      throw std::invalid_argument(what + ": measured levels must ascend within (0, 1)");
    }
  }
  if (error.empty() || error.size() > kMaxScheduleSteps) {
    throw std::invalid_argument(what + ": 1 to " + std::to_string(kMaxScheduleSteps) +
                                " steps needed");
  }
  for (size_t i = 0; i < error.size(); ++i) {
    if (error[i].size() != levels.size()) {
      throw std::invalid_argument(what + ": step " + std::to_string(i) + " has " +
                                  std::to_string(error[i].size()) + " errors for " +
                                  std::to_string(levels.size()) + " levels");
    }
    for (double e : error[i]) {
      if (!(std::isfinite(e) && e >= 0.0)) {
        throw std::invalid_argument(what + ": step " + std::to_string(i) +
                                    ": errors must be finite and >= 0, got " + num(e));
      }
    }
  }
}

std::pair<double, double> feasible_budgets(const FlopsCurve& flops, double floor) {
  return {flops.at(flops.max_level()), flops.at(floor)};
}

double mean_flops_fraction(const FlopsCurve& flops, const std::vector<double>& levels) {
  if (levels.empty()) return 1.0;
  double sum = 0;
  for (double l : levels) sum += flops.at(l);
  return sum / static_cast<double>(levels.size());
}

double predicted_error(const StepSensitivity& sensitivity, const std::vector<double>& levels) {
  double sum = 0;
  for (size_t i = 0; i < levels.size() && i < sensitivity.num_steps(); ++i) {
    sum += sensitivity.at(i, levels[i]);
  }
  return sum;
}

double constant_level_for_budget(const FlopsCurve& flops, double budget) {
  if (!(budget >= flops.fractions.back() - 1e-9 && budget <= 1.0 + 1e-9)) {
    throw std::invalid_argument("budget " + num(budget) + " is outside [" +
                                num(flops.fractions.back()) +
                                ", 1], what the measured levels reach");
  }
  return flops.level_for(budget);
}

// ---------------------------------------------------------------------------------------------
// The optimiser

StepSchedule optimize_step_schedule(const StepSensitivity& sensitivity, const FlopsCurve& flops,
                                    double budget, double floor,
                                    const ScheduleOptimizerOptions& options) {
  sensitivity.validate("sensitivities");
  flops.validate("FLOPs curve");
  const double top = std::min(sensitivity.levels.back(), flops.max_level());
  if (!(std::isfinite(floor) && floor >= 0.0 && floor <= top)) {
    throw std::invalid_argument("floor " + num(floor) + " must be in [0, " + num(top) +
                                "] (the highest measured level)");
  }
  const auto [lowest, highest] = feasible_budgets(flops, floor);
  if (!(std::isfinite(budget) && budget >= lowest - 1e-9 && budget <= highest + 1e-9)) {
    throw std::invalid_argument("budget " + num(budget) + " is infeasible: with floor " +
                                num(floor) + " and levels up to " + num(top) +
                                " the mean U-Net FLOPs fraction can be in [" + num(lowest) + ", " +
                                num(highest) + "]");
  }
  budget = std::clamp(budget, lowest, highest);
  const size_t n = sensitivity.num_steps();
  const double nd = static_cast<double>(n);

  // Work in FLOPs saved per step, s = 1 - fraction (linear in the level): the constraint is
  // sum s_i = n (1 - budget), each s_i in [s_lo, s_hi].
  const double s_lo = 1.0 - flops.at(floor), s_hi = 1.0 - flops.at(top);
  const double target = nd * (1.0 - budget);
  auto level_of = [&](double saved) {
    return std::clamp(flops.level_for(1.0 - saved), floor, top);
  };
  auto cost_of = [&](size_t i, double saved) { return sensitivity.at(i, level_of(saved)); };

  std::vector<double> saved(n, s_lo);
  if (s_hi - s_lo > 1e-12) {
    int grid = std::min(options.grid_points, 10000);  // choices are stored as uint16
    if (grid <= 0) grid = std::clamp(static_cast<int>(std::sqrt(4e7) / nd), 16, 200);
    const double unit = (s_hi - s_lo) / grid;
    const auto max_total = static_cast<int64_t>(n) * grid;
    const double exact =
        std::clamp((target - nd * s_lo) / unit, 0.0, static_cast<double>(max_total));
    const auto total_lo =
        std::min<int64_t>(static_cast<int64_t>(std::floor(exact + 1e-9)), max_total);
    const auto total_hi = std::min<int64_t>(total_lo + 1, max_total);

    // DP over steps: best[j] = the least summed error with grid units j saved so far.
    std::vector<std::vector<double>> cost(n, std::vector<double>(grid + 1));
    for (size_t i = 0; i < n; ++i) {
      for (int k = 0; k <= grid; ++k) cost[i][k] = cost_of(i, s_lo + k * unit);
    }
    const auto width = static_cast<size_t>(total_hi + 1);
    std::vector<double> best(width, kInf), next(width);
    std::vector<uint16_t> choice(n * width, 0);
    best[0] = 0.0;
    for (size_t i = 0; i < n; ++i) {
      std::fill(next.begin(), next.end(), kInf);
      for (size_t j = 0; j < width; ++j) {
        if (best[j] == kInf) continue;
        const size_t k_max = std::min<size_t>(grid, width - 1 - j);
        for (size_t k = 0; k <= k_max; ++k) {
          const double c = best[j] + cost[i][k];
          if (c < next[j + k]) {
            next[j + k] = c;
            choice[i * width + j + k] = static_cast<uint16_t>(k);
          }
        }
      }
      best.swap(next);
    }

    // Each candidate total, backtracked, then the remainder (less than one grid unit) put on
    // the one step where it costs least; the cheaper of the two wins.
    double best_cost = kInf;
    for (int64_t total : {total_lo, total_hi}) {
      if (best[static_cast<size_t>(total)] == kInf) continue;
      std::vector<double> s(n);
      auto j = static_cast<size_t>(total);
      for (size_t i = n; i-- > 0;) {
        const int k = choice[i * width + j];
        s[i] = s_lo + k * unit;
        j -= static_cast<size_t>(k);
      }
      double remainder = target;
      for (double v : s) remainder -= v;
      size_t where = n;
      double extra = kInf;
      for (size_t i = 0; i < n; ++i) {
        const double moved = s[i] + remainder;
        if (moved < s_lo - 1e-12 || moved > s_hi + 1e-12) continue;
        const double delta = cost_of(i, moved) - cost_of(i, s[i]);
        if (delta < extra) {
          extra = delta;
          where = i;
        }
      }
      if (where < n) {
        s[where] = std::clamp(s[where] + remainder, s_lo, s_hi);
      } else {
        // No single step can take it (not expected): spread it over as many as needed.
        for (size_t i = 0; i < n && std::abs(remainder) > 1e-15; ++i) {
          const double moved = std::clamp(s[i] + remainder, s_lo, s_hi);
          remainder -= moved - s[i];
          s[i] = moved;
        }
      }
      double c = 0;
      for (size_t i = 0; i < n; ++i) c += cost_of(i, s[i]);
      if (c < best_cost) {
        best_cost = c;
        saved = s;
      }
    }
  }

  StepSchedule schedule;
  schedule.budget = budget;
  schedule.floor = floor;
  for (double s : saved) schedule.levels.push_back(level_of(s));
  schedule.flops = flops;
  schedule.flops_fraction = mean_flops_fraction(flops, schedule.levels);
  schedule.predicted_error = predicted_error(sensitivity, schedule.levels);
  schedule.constant_level = constant_level_for_budget(flops, budget);
  return schedule;
}

// ---------------------------------------------------------------------------------------------
// Other step counts and samplers

std::vector<double> levels_for_timesteps(const StepSchedule& schedule,
                                         const std::vector<double>& timesteps) {
  if (timesteps.empty()) return {};
  const auto& stored = schedule.timesteps;
  bool same = timesteps.size() == stored.size();
  for (size_t i = 0; same && i < stored.size(); ++i) {
    same = std::abs(timesteps[i] - stored[i]) <= 1e-6 * std::max(1.0, std::abs(stored[i]));
  }
  if (same) return schedule.levels;

  // Level as a function of the timestep: ascending timesteps, duplicates (PNDM repeats one)
  // averaged.
  std::map<double, std::pair<double, int>> by_timestep;
  for (size_t i = 0; i < stored.size(); ++i) {
    auto& [sum, count] = by_timestep[stored[i]];
    sum += schedule.levels[i];
    ++count;
  }
  std::vector<double> ts, ls;
  for (const auto& [t, sum_count] : by_timestep) {
    ts.push_back(t);
    ls.push_back(sum_count.first / sum_count.second);
  }
  std::vector<double> base;
  for (double t : timesteps) base.push_back(interpolate(ts, ls, t));

  // One common shift keeps the shape and restores the mean FLOPs; the clamps keep the floor
  // (peak memory) and the measured range. The mean is continuous and non-increasing in the
  // shift, so bisection finds it.
  const double top = schedule.flops.max_level();
  auto shifted = [&](double delta) {
    std::vector<double> out;
    for (double l : base) out.push_back(std::clamp(l + delta, schedule.floor, top));
    return out;
  };
  auto mean_at = [&](double delta) { return mean_flops_fraction(schedule.flops, shifted(delta)); };
  if (std::abs(mean_at(0.0) - schedule.budget) <= 1e-9) return shifted(0.0);
  double lo = -1.0, hi = 1.0;  // mean_at(lo) >= budget >= mean_at(hi)
  for (int iteration = 0; iteration < 100; ++iteration) {
    const double mid = 0.5 * (lo + hi);
    (mean_at(mid) > schedule.budget ? lo : hi) = mid;
  }
  return shifted(0.5 * (lo + hi));
}

// ---------------------------------------------------------------------------------------------
// Gates-file metadata

std::string step_schedules_to_json(const std::vector<StepSchedule>& schedules) {
  nlohmann::json list = nlohmann::json::array();
  for (const auto& s : schedules) {
    list.push_back({{"budget", s.budget},
                    {"floor", s.floor},
                    {"sampler", s.sampler},
                    {"steps", s.steps},
                    {"timesteps", s.timesteps},
                    {"levels", s.levels},
                    {"flops_fraction", s.flops_fraction},
                    {"flops_curve", {{"levels", s.flops.levels}, {"fractions", s.flops.fractions}}},
                    {"predicted_error", s.predicted_error},
                    {"constant_level", s.constant_level}});
  }
  return list.dump();
}

namespace {

// Nesting depth of JSON text (outside strings): bounded before parsing, so that hostile input
// cannot make the parser or the destructor recurse deeply.
size_t json_depth(const std::string& text) {
  size_t depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return deepest;
}

// Reads one entry's fields, each error naming the entry and field.
class EntryReader {
 public:
  EntryReader(const nlohmann::json& entry, std::string where)
      : entry_(entry), where_(std::move(where)) {}

  [[noreturn]] void fail(const std::string& field, const std::string& message) const {
    throw std::invalid_argument(where_ + (field.empty() ? "" : "." + field) + ": " + message);
  }

  const nlohmann::json& field(const std::string& name) const {
    auto it = entry_.find(name);
    if (it == entry_.end()) fail(name, "missing");
    return *it;
  }
  double number(const nlohmann::json& value, const std::string& name) const {
    if (!value.is_number()) fail(name, "must be a number");
    const double v = value.get<double>();
    if (!std::isfinite(v)) fail(name, "must be finite");
    return v;
  }
  double number(const std::string& name) const { return number(field(name), name); }
  std::vector<double> numbers(const nlohmann::json& value, const std::string& name) const {
    if (!value.is_array()) fail(name, "must be a list of numbers");
    if (value.empty() || value.size() > kMaxScheduleSteps) {
      fail(name, "must hold 1 to " + std::to_string(kMaxScheduleSteps) + " numbers, got " +
                     std::to_string(value.size()));
    }
    std::vector<double> out;
    for (size_t i = 0; i < value.size(); ++i) {
      out.push_back(number(value[i], name + "[" + std::to_string(i) + "]"));
    }
    return out;
  }
  std::vector<double> numbers(const std::string& name) const { return numbers(field(name), name); }

 private:
  const nlohmann::json& entry_;
  std::string where_;
};

StepSchedule read_schedule(const nlohmann::json& entry, const std::string& where) {
  EntryReader read(entry, where);
  if (!entry.is_object()) read.fail("", "must be an object");
  StepSchedule s;
  s.budget = read.number("budget");
  if (!(s.budget > 0.0 && s.budget <= 1.0))
    read.fail("budget", "must be in (0, 1], got " + num(s.budget));
  s.floor = read.number("floor");
  if (!is_level(s.floor)) read.fail("floor", "must be in [0, 1), got " + num(s.floor));
  const auto& sampler = read.field("sampler");
  if (!sampler.is_string()) read.fail("sampler", "must be a string");
  s.sampler = sampler.get<std::string>();
  if (s.sampler.empty() || s.sampler.size() > 32 ||
      !std::all_of(s.sampler.begin(), s.sampler.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
      })) {
    read.fail("sampler", "must be a sampler name, got \"" + s.sampler.substr(0, 32) + "\"");
  }
  const auto& steps = read.field("steps");
  if (!steps.is_number_integer() || steps.get<int64_t>() < 1 ||
      steps.get<int64_t>() > static_cast<int64_t>(kMaxScheduleSteps)) {
    read.fail("steps", "must be an integer in [1, " + std::to_string(kMaxScheduleSteps) + "]");
  }
  s.steps = steps.get<int64_t>();
  s.timesteps = read.numbers("timesteps");
  s.levels = read.numbers("levels");
  if (s.levels.size() != s.timesteps.size()) {
    read.fail("levels", "has " + std::to_string(s.levels.size()) + " entries for " +
                            std::to_string(s.timesteps.size()) + " timesteps");
  }
  for (double t : s.timesteps) {
    if (std::abs(t) > 1e6) read.fail("timesteps", "must be within [-1e6, 1e6], got " + num(t));
  }
  const auto& curve = read.field("flops_curve");
  if (!curve.is_object()) read.fail("flops_curve", "must be an object");
  EntryReader read_curve(curve, where + ".flops_curve");
  s.flops.levels = read_curve.numbers("levels");
  s.flops.fractions = read_curve.numbers("fractions");
  s.flops.validate(where + ".flops_curve");
  for (size_t i = 0; i < s.levels.size(); ++i) {
    const double l = s.levels[i];
    if (!is_level(l) || l < s.floor - 1e-9 || l > s.flops.max_level() + 1e-9) {
      read.fail("levels[" + std::to_string(i) + "]", "must be in [floor " + num(s.floor) + ", " +
                                                         num(s.flops.max_level()) +
                                                         "] within [0, 1), got " + num(l));
    }
  }
  s.flops_fraction = read.number("flops_fraction");
  const auto [lowest, highest] = feasible_budgets(s.flops, std::min(s.floor, s.flops.max_level()));
  if (s.floor > s.flops.max_level() || s.budget < lowest - 1e-6 || s.budget > highest + 1e-6) {
    read.fail("budget", num(s.budget) + " is outside what the floor and curve allow [" +
                            num(lowest) + ", " + num(highest) + "]");
  }
  const double mean = mean_flops_fraction(s.flops, s.levels);
  if (std::abs(mean - s.budget) > 1e-3) {
    read.fail("levels",
              "their mean FLOPs fraction " + num(mean) + " does not match budget " + num(s.budget));
  }
  if (std::abs(s.flops_fraction - s.budget) > 1e-3) {
    read.fail("flops_fraction", num(s.flops_fraction) + " does not match budget " + num(s.budget));
  }
  if (entry.contains("predicted_error")) s.predicted_error = read.number("predicted_error");
  if (entry.contains("constant_level")) s.constant_level = read.number("constant_level");
  return s;
}

}  // namespace

std::vector<StepSchedule> step_schedules_from_json(const std::string& text,
                                                   const std::string& file) {
  const std::string where = "gates file " + file + ": metadata \"" + kStepSchedulesKey + "\"";
  if (text.size() > kMaxStepSchedulesJsonBytes) {
    throw std::invalid_argument(where + " is " + std::to_string(text.size()) +
                                " bytes, more than the " +
                                std::to_string(kMaxStepSchedulesJsonBytes) + " allowed");
  }
  if (json_depth(text) > 8) throw std::invalid_argument(where + ": nested too deeply");
  const auto root = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) {
    throw std::invalid_argument(where + " is not valid JSON (starts \"" + text.substr(0, 40) +
                                "\")");
  }
  if (!root.is_array()) throw std::invalid_argument(where + " must be a JSON list of schedules");
  if (root.size() > kMaxStepSchedules) {
    throw std::invalid_argument(where + " holds " + std::to_string(root.size()) +
                                " schedules, more than the " + std::to_string(kMaxStepSchedules) +
                                " allowed");
  }
  std::vector<StepSchedule> schedules;
  for (size_t i = 0; i < root.size(); ++i) {
    const auto entry_where = where + "[" + std::to_string(i) + "]";
    auto s = read_schedule(root[i], entry_where);
    for (const auto& other : schedules) {
      if (std::abs(other.budget - s.budget) <= 1e-6) {
        throw std::invalid_argument(entry_where + ": a second schedule for budget " +
                                    num(s.budget));
      }
    }
    schedules.push_back(std::move(s));
  }
  return schedules;
}

std::vector<StepSchedule> step_schedules_from_metadata(
    const std::map<std::string, std::string>& metadata, const std::string& file) {
  auto it = metadata.find(kStepSchedulesKey);
  if (it == metadata.end()) return {};
  return step_schedules_from_json(it->second, file);
}

const StepSchedule& find_step_schedule(const std::vector<StepSchedule>& schedules, double budget,
                                       const std::string& what) {
  if (schedules.empty()) {
    throw std::invalid_argument(
        what + ": the gates file has no learned step schedules (ldcp tune-schedule adds them)");
  }
  std::string stored;
  for (const auto& s : schedules) {
    if (std::abs(s.budget - budget) <= 1e-6) return s;
    stored += (stored.empty() ? "" : ", ") + num(s.budget);
  }
  throw std::invalid_argument(what + ": no learned step schedule for budget " + num(budget) +
                              " (stored: " + stored + ")");
}

}  // namespace ldcp::pruning
