#include "server/memory_budget.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace ldcp::server {

MemoryBudget::MemoryBudget(int64_t budget_bytes, int64_t headroom_bytes, StatsFn stats)
    : stats_(std::move(stats)) {
  if (budget_bytes > 0) {
    budget_ = budget_bytes;
  } else {
    const int64_t total = stats_ ? stats_().device_total_bytes : 0;
    if (total <= 0) {
      throw std::invalid_argument(
          "--memory-budget is required on a device that reports no total memory (CPU)");
    }
    budget_ = total - headroom_bytes;
    if (budget_ <= 0) {
      throw std::invalid_argument("--memory-headroom (" + std::to_string(headroom_bytes) +
                                  " bytes) leaves no memory of the device's " +
                                  std::to_string(total));
    }
  }
}

int64_t MemoryBudget::in_use_bytes() const { return stats_ ? stats_().allocated_bytes : 0; }

int64_t MemoryBudget::batch_peak_bytes(int64_t peak_allocated_bytes) const {
  if (!stats_) return peak_allocated_bytes;
  const auto s = stats_();
  // CPU: reserved is allocated (a tracking allocator), nothing more to learn.
  if (s.device_total_bytes <= 0) return peak_allocated_bytes;
  return std::max(peak_allocated_bytes, s.peak_reserved_bytes);
}

void MemoryBudget::set_baseline(int64_t bytes) {
  std::lock_guard lock(mu_);
  baseline_ = bytes;
}

int64_t MemoryBudget::baseline_bytes() const {
  std::lock_guard lock(mu_);
  return baseline_;
}

int64_t MemoryBudget::free_bytes(int64_t reserved_bytes) const {
  const int64_t used = std::max(in_use_bytes(), baseline_bytes() + reserved_bytes);
  return budget_ - used;
}

}  // namespace ldcp::server
