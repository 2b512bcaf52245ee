#include "server/auto_level_policy.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace ldcp::server {
namespace {

int64_t milli(double level) { return static_cast<int64_t>(std::llround(level * 1000.0)); }

}  // namespace

const char* level_reason_name(LevelReason reason) {
  switch (reason) {
    case LevelReason::kNone:
      return "none";
    case LevelReason::kMemory:
      return "memory";
    case LevelReason::kThroughput:
      return "throughput";
    case LevelReason::kRequestCap:
      return "request_cap";
  }
  return "none";
}

void AutoLevelPolicy::record_arrival(int64_t images, Clock::time_point now) {
  std::lock_guard lock(mu_);
  arrivals_.emplace_back(now, std::max<int64_t>(1, images));
  const auto keep = std::max(config_.rate_window, config_.rate_max_window);
  while (!arrivals_.empty() && now - arrivals_.front().first > keep) arrivals_.pop_front();
}

void AutoLevelPolicy::record_batch(double level, int64_t images, int64_t steps, double seconds,
                                   double fixed_seconds, int64_t pixels) {
  if (images <= 0 || steps <= 0 || !(seconds > 0)) return;
  const double fixed = std::clamp(fixed_seconds, 0.0, seconds);
  const Timing t{(seconds - fixed) / static_cast<double>(steps), fixed};
  std::lock_guard lock(mu_);
  auto& by_images = seconds_per_image_step_[std::max<int64_t>(0, pixels)][milli(level)];
  auto it = by_images.find(images);
  if (it == by_images.end()) {
    by_images.emplace(images, t);
  } else {
    // Follows the load the machine is under now.
    it->second.per_step += 0.5 * (t.per_step - it->second.per_step);
    it->second.fixed += 0.5 * (t.fixed - it->second.fixed);
  }
}

AutoLevelPolicy::Clock::duration AutoLevelPolicy::gap(double batch_seconds) const {
  return std::min<Clock::duration>(
      config_.saturation_gap,
      std::chrono::duration_cast<Clock::duration>(
          std::chrono::duration<double>(config_.saturation_gap_fraction * batch_seconds)));
}

void AutoLevelPolicy::record_busy(Clock::time_point start, Clock::time_point end, double level) {
  if (end < start) return;
  std::lock_guard lock(mu_);
  // Batches end out of order with several workers: a period goes on while the next batch
  // started before, or within gap() after, the period's latest end.
  const double seconds = std::chrono::duration<double>(end - start).count();
  if (!busy_start_ || start > busy_end_ + gap(seconds)) {
    busy_start_ = start;
    busy_end_ = end;
  } else {
    busy_start_ = std::min(*busy_start_, start);
    busy_end_ = std::max(busy_end_, end);
  }
  last_batch_seconds_ = seconds;
  last_level_ = level;
}

bool AutoLevelPolicy::saturated(Clock::time_point now, bool running, double head_wait_seconds,
                                int64_t waiting_requests) const {
  std::lock_guard lock(mu_);
  if (!busy_start_ || !(last_batch_seconds_ > 0)) return false;
  if (!running && now > busy_end_ + gap(last_batch_seconds_)) return false;  // it ended
  if (head_wait_seconds < 0.5 * last_batch_seconds_ && waiting_requests < 2) return false;
  const double busy = std::chrono::duration<double>(now - *busy_start_).count();
  return busy >=
         std::max(config_.saturation_seconds, config_.saturation_batches * last_batch_seconds_);
}

double AutoLevelPolicy::arrival_rate(Clock::time_point now) const {
  std::lock_guard lock(mu_);
  // The images that arrived after the oldest arrival in the window, over the time since it:
  // the usual estimate of a Poisson rate from its arrivals, and 0 for a lone request (an idle
  // server's first request is not load; a burst shows in the queue term of choose()).
  // The window: rate_window, stretched back to the rate_min_arrivals-th latest arrival.
  auto window = std::chrono::duration_cast<Clock::duration>(config_.rate_window);
  const auto count = static_cast<int64_t>(arrivals_.size());
  if (config_.rate_min_arrivals > 0 && count > 0) {
    const auto& t =
        arrivals_[static_cast<size_t>(std::max<int64_t>(0, count - config_.rate_min_arrivals))]
            .first;
    window = std::max(window, std::min<Clock::duration>(now - t, config_.rate_max_window));
  }
  std::optional<Clock::time_point> oldest;
  int64_t images = 0;
  for (const auto& [t, n] : arrivals_) {
    if (now - t > window) continue;
    if (!oldest) {
      oldest = t;
      continue;
    }
    images += n;
  }
  if (!oldest || images == 0) return 0;
  const double span = std::chrono::duration<double>(now - *oldest).count();
  return static_cast<double>(images) / std::max(0.05, span);
}

std::optional<double> AutoLevelPolicy::throughput(double level, int64_t images, int64_t steps,
                                                  int64_t pixels) const {
  std::lock_guard lock(mu_);
  if (seconds_per_image_step_.empty()) return std::nullopt;
  // The nearest measured size (ties: the larger, the slower one).
  auto sit = seconds_per_image_step_.begin();
  for (auto it = seconds_per_image_step_.begin(); it != seconds_per_image_step_.end(); ++it) {
    if (std::llabs(it->first - pixels) <= std::llabs(sit->first - pixels)) sit = it;
  }
  const double scale = sit->first > 0 && pixels > 0
                           ? static_cast<double>(pixels) / static_cast<double>(sit->first)
                           : 1.0;
  const auto& by_level = sit->second;
  auto lit = by_level.upper_bound(milli(level));
  if (lit == by_level.begin()) return std::nullopt;
  const auto above = lit;
  --lit;  // the highest measured level at or below `level`
  const auto& by_images = lit->second;
  auto iit = by_images.upper_bound(images);
  if (iit != by_images.begin()) --iit;  // the largest measured batch at or below, else smallest
  Timing t = iit->second;
  // Between two measured levels, the same batch's time interpolated linearly in the level: a
  // level's FLOPs fall linearly with it, and without this a grid level between calibrated ones
  // is as slow as the one below, so AUTO would skip from 0 to the next calibrated level for a
  // small shortfall (on the sd15 demo: to 0.35 where 0.1 keeps up).
  if (above != by_level.end() && lit->first != milli(level)) {
    if (const auto up = above->second.find(iit->first); up != above->second.end()) {
      const double f = static_cast<double>(milli(level) - lit->first) /
                       static_cast<double>(above->first - lit->first);
      t.per_step += f * (up->second.per_step - t.per_step);
      t.fixed += f * (up->second.fixed - t.fixed);
    }
  }
  const double batch_seconds =
      scale * (t.fixed + t.per_step * static_cast<double>(std::max<int64_t>(1, steps)));
  if (!(batch_seconds > 0)) return std::nullopt;
  return static_cast<double>(iit->first) / batch_seconds;  // images/s of the measured batch
}

std::optional<AutoLevelPolicy::Choice> AutoLevelPolicy::choose(
    const std::vector<Option>& fitting, double top_allowed, int64_t steps, int64_t queued_images,
    Clock::time_point now, int64_t pixels, bool engine_idle, bool saturated) const {
  if (fitting.empty()) return std::nullopt;
  std::vector<Option> options = fitting;
  // By level, then the larger batch first (at one level a larger batch costs no quality).
  std::sort(options.begin(), options.end(), [](const Option& a, const Option& b) {
    if (a.level != b.level) return a.level < b.level;
    return a.images > b.images;
  });
  const double lowest = options.front().level;
  const auto lowest_reason = lowest > 0 ? LevelReason::kMemory : LevelReason::kNone;
  Choice choice;
  if (saturated) return climb(options, top_allowed, steps, pixels);
  const double arriving = arrival_rate(now);
  // What an option must serve: the arrivals, plus the queue it leaves behind drained in time
  // (`rate`: the option's measured throughput, whose batch time may lengthen the horizon).
  auto required = [&](const Option& o, std::optional<double> rate = std::nullopt) {
    double horizon = std::max(0.1, config_.drain_seconds);
    if (rate && *rate > 0) {
      horizon = std::max(horizon, config_.drain_batches * static_cast<double>(o.images) / *rate);
    }
    return arriving + static_cast<double>(std::max<int64_t>(0, queued_images - o.images)) / horizon;
  };
  choice.required_rate = required(options.front());
  if (choice.required_rate <= 0) {
    choice.option = options.front();
    choice.reason = lowest_reason;
    return choice;
  }
  bool measured;
  {
    std::lock_guard lock(mu_);
    measured = !seconds_per_image_step_.empty();
  }
  std::optional<Option> fastest;
  double fastest_rate = -1;
  bool any_known = false;
  for (const auto& o : options) {
    if (engine_idle && queued_images <= o.images) {
      choice.option = o;
      choice.required_rate = 0;
      choice.reason = o.level <= lowest ? lowest_reason : LevelReason::kThroughput;
      return choice;
    }
    const auto rate = throughput(o.level, o.images, steps, pixels);
    if (!rate) {
      // Only higher levels were measured: try this milder one (its batches will measure it)
      // rather than prune on the strength of another level's speed.
      if (measured) {
        choice.option = o;
        choice.reason = o.level <= lowest ? lowest_reason : LevelReason::kThroughput;
        return choice;
      }
      continue;
    }
    any_known = true;
    // 10% tolerance: measured throughput is noisy, and a closed loop's arrival rate can approach
    // it without the level falling behind; prune no more than it must.
    if (*rate >= 0.9 * required(o, rate)) {
      choice.option = o;
      choice.required_rate = required(o, rate);
      choice.reason = o.level <= lowest ? lowest_reason : LevelReason::kThroughput;
      return choice;
    }
    if (*rate > fastest_rate * 1.02) {  // a higher level only for a real gain
      fastest_rate = *rate;
      fastest = o;
    }
  }
  if (!any_known) {
    // Nothing measured yet: the largest batch that fits, at its lowest fitting level.
    choice.option =
        *std::max_element(options.begin(), options.end(), [](const Option& a, const Option& b) {
          if (a.images != b.images) return a.images < b.images;
          return a.level > b.level;
        });
    choice.reason = choice.option.level <= lowest ? lowest_reason : LevelReason::kMemory;
    return choice;
  }
  choice.option = *fastest;
  if (choice.option.level >= top_allowed - 1e-9) {
    choice.reason = LevelReason::kRequestCap;
  } else {
    choice.reason = choice.option.level <= lowest ? lowest_reason : LevelReason::kThroughput;
  }
  return choice;
}

AutoLevelPolicy::Choice AutoLevelPolicy::climb(const std::vector<Option>& options,
                                               double top_allowed, int64_t steps,
                                               int64_t pixels) const {
  double current;
  {
    std::lock_guard lock(mu_);
    current = last_level_;
  }
  // What the current level serves at best among the options that fit now.
  double base = 0;
  std::vector<std::optional<double>> rates;
  for (const auto& o : options) {
    rates.push_back(throughput(o.level, o.images, steps, pixels));
    if (o.level <= current + 1e-9 && rates.back()) base = std::max(base, *rates.back());
  }
  Choice choice;
  std::optional<size_t> pick;
  for (size_t i = 0; i < options.size() && !pick; ++i) {
    if (options[i].level > current + 1e-9 && rates[i] && *rates[i] >= kSaturationStep * base) {
      pick = i;
    }
  }
  if (!pick) {  // nothing measurably faster above: the fastest (a higher level only for a gain)
    double best = -1;
    for (size_t i = 0; i < options.size(); ++i) {
      const double r = rates[i].value_or(0);
      if (!pick || r > best * 1.02) {
        best = r;
        pick = i;
      }
    }
  }
  choice.option = options[*pick];
  choice.required_rate = kSaturationStep * base;
  if (choice.option.level <= 0) {
    choice.reason = LevelReason::kNone;
  } else if (choice.option.level >= top_allowed - 1e-9) {
    choice.reason = LevelReason::kRequestCap;
  } else {
    choice.reason = choice.option.level <= options.front().level ? LevelReason::kMemory
                                                                 : LevelReason::kThroughput;
  }
  return choice;
}

}  // namespace ldcp::server
