#include "server/cost_model.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <set>
#include <stdexcept>

namespace ldcp::server {
namespace {

int64_t milli(double level) { return static_cast<int64_t>(std::llround(level * 1000.0)); }

// Bytes for `images` from the measured (images -> bytes) points of one size and level.
double fit(const std::map<int64_t, double>& pts, int64_t images) {
  if (pts.size() == 1) {
    const auto& [n, b] = *pts.begin();
    return b * static_cast<double>(images) / static_cast<double>(n);
  }
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (const auto& [n, b] : pts) {
    sx += n;
    sy += b;
    sxx += static_cast<double>(n) * n;
    sxy += n * b;
  }
  const double k = static_cast<double>(pts.size());
  const double slope = std::max(0.0, (k * sxy - sx * sy) / (k * sxx - sx * sx));
  const double intercept = (sy - slope * sx) / k;
  double v = intercept + slope * static_cast<double>(images);
  // Never below the largest measurement at or under this image count.
  for (const auto& [n, b] : pts) {
    if (n <= images) v = std::max(v, b);
  }
  return v;
}

}  // namespace

void CostModel::add_measurement(int64_t images, int64_t width, int64_t height, double level,
                                int64_t bytes, bool guided) {
  if (!guided) {
    observe(images, width, height, level, bytes, false);
    return;
  }
  std::lock_guard lock(mu_);
  points_[{width * height, milli(level)}][images] =
      static_cast<double>(std::max<int64_t>(0, bytes));
}

int64_t CostModel::nearest_size_unlocked(int64_t pixels) const {
  // The nearest measured size (ties: the larger, which is the conservative one).
  int64_t best = -1;
  for (const auto& [key, pts] : points_) {
    const int64_t s = std::get<0>(key);
    if (best < 0 || std::llabs(s - pixels) <= std::llabs(best - pixels)) best = s;
  }
  return best;
}

void CostModel::observe(int64_t images, int64_t width, int64_t height, double level, int64_t bytes,
                        bool guided) {
  std::lock_guard lock(mu_);
  // Observations refine the measured sizes only (scaled by pixels), so that one request at an
  // unusual size cannot create a sparse size of its own that overrides the calibration.
  const int64_t pixels = width * height;
  const int64_t size = points_.empty() ? pixels : nearest_size_unlocked(pixels);
  const double b = static_cast<double>(std::max<int64_t>(0, bytes)) * static_cast<double>(size) /
                   static_cast<double>(pixels);
  const int64_t lm = milli(level);
  auto calibrated = points_.find({size, lm});
  if (guided && (points_.empty() || calibrated != points_.end())) {
    auto& slot = points_[{size, lm}];
    auto it = slot.find(images);
    if (it == slot.end() || b > it->second) {
      slot[images] = b;
    } else {
      it->second += 0.25 * (b - it->second);
    }
    return;
  }
  // An unguided batch, or a level calibration did not measure: an exact entry of its own, that
  // starts from what the batch was costed at, so that the first observation moves the cost the
  // same way as a calibrated one (up at once, down a quarter) and never lowers another key.
  const auto key = std::make_tuple(size, lm, images, guided);
  auto it = observed_.find(key);
  if (it == observed_.end()) {
    it = observed_.emplace(key, base_estimate_unlocked(size, lm, images, guided)).first;
  }
  if (b > it->second) {
    it->second = b;
  } else {
    it->second += 0.25 * (b - it->second);
  }
}

void CostModel::observe_oom(int64_t images, int64_t width, int64_t height, double level,
                            int64_t available_bytes, bool guided) {
  const double at_least = 1.25 * static_cast<double>(std::max<int64_t>(1, available_bytes));
  int64_t current = 0;
  {
    std::lock_guard lock(mu_);
    if (!points_.empty()) current = estimate_unlocked(images, width, height, level, guided);
  }
  observe(images, width, height, level,
          static_cast<int64_t>(std::max(at_least, static_cast<double>(current))), guided);
}

bool CostModel::empty() const {
  std::lock_guard lock(mu_);
  return points_.empty();
}

int64_t CostModel::estimate_at(int64_t pixels, int64_t level_milli, int64_t images) const {
  // Levels measured at this size, ascending; pruning never costs more, so the cost is made
  // non-increasing in the level.
  std::vector<std::pair<int64_t, double>> by_level;
  for (const auto& [key, pts] : points_) {
    if (std::get<0>(key) == pixels) by_level.emplace_back(std::get<1>(key), fit(pts, images));
  }
  for (size_t i = 1; i < by_level.size(); ++i) {
    by_level[i].second = std::min(by_level[i].second, by_level[i - 1].second);
  }
  // The highest measured level at or below: a bound, where interpolating between two levels
  // would be a guess (memory does not fall linearly with the level; a guess below the truth is
  // an out-of-memory error on a GPU). Below the lowest measured level, that level's cost.
  double bytes = by_level.front().second;
  for (const auto& [l, c] : by_level) {
    if (l <= level_milli) bytes = c;
  }
  return std::llround(bytes);
}

double CostModel::base_estimate_unlocked(int64_t size, int64_t level_milli, int64_t images,
                                         bool guided) const {
  if (auto it = observed_.find({size, level_milli, images, true}); it != observed_.end()) {
    if (guided) return it->second;
  }
  if (!guided) {
    if (auto it = observed_.find({size, level_milli, images, false}); it != observed_.end()) {
      return it->second;
    }
    return base_estimate_unlocked(size, level_milli, images, true);
  }
  return static_cast<double>(estimate_at(size, level_milli, images));
}

int64_t CostModel::estimate_unlocked(int64_t images, int64_t width, int64_t height, double level,
                                     bool guided) const {
  if (points_.empty()) throw std::logic_error("the memory cost model has no measurements");
  const int64_t pixels = width * height;
  const int64_t best = nearest_size_unlocked(pixels);
  double bytes = base_estimate_unlocked(best, milli(level), images, guided);
  bytes *= static_cast<double>(pixels) / static_cast<double>(best);
  return std::llround(bytes * (1.0 + margin_));
}

int64_t CostModel::estimate(int64_t images, int64_t width, int64_t height, double level,
                            bool guided) const {
  std::lock_guard lock(mu_);
  return estimate_unlocked(images, width, height, level, guided);
}

std::vector<std::string> CostModel::describe() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  for (const auto& [key, pts] : points_) {
    for (const auto& [n, b] : pts) {
      char line[160];
      std::snprintf(line, sizeof line, "%lld image(s) x %lld px @ level %.3f: %.0f bytes",
                    static_cast<long long>(n), static_cast<long long>(std::get<0>(key)),
                    std::get<1>(key) / 1000.0, b);
      out.emplace_back(line);
    }
  }
  return out;
}

}  // namespace ldcp::server
