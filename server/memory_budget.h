#pragma once
// The memory the server may use on its device, and how much of it is free now. Usage comes from
// the allocator's statistics (MemoryMeter), never from estimates; the costs of batches that have
// started but not yet reached their peak are reserved on top of the idle baseline so that two
// admissions in quick succession cannot both count the same free bytes.

#include <cstdint>
#include <functional>
#include <mutex>

#include "model/runtime/memory_meter.h"

namespace ldcp::server {

class MemoryBudget {
 public:
  using StatsFn = std::function<runtime::MemoryStats()>;

  // budget_bytes > 0: that many bytes. Otherwise the device's memory less headroom_bytes (CUDA);
  // on a device that reports no total (CPU) a positive budget is required (throws otherwise).
  MemoryBudget(int64_t budget_bytes, int64_t headroom_bytes, StatsFn stats);

  int64_t budget_bytes() const { return budget_; }
  // Measured bytes allocated on the device now (weights, caches, running batches).
  int64_t in_use_bytes() const;
  // The measured usage with nothing running (weights and persistent buffers); set once the
  // model is loaded and calibrated.
  void set_baseline(int64_t bytes);
  void set_baseline_from_measurement() { set_baseline(in_use_bytes()); }
  int64_t baseline_bytes() const;
  // Bytes still available for new batches when `reserved_bytes` are promised to running ones.
  int64_t free_bytes(int64_t reserved_bytes) const;
  // The measured peak of a batch that just finished, the number compared with the budget: its
  // allocated peak, and on CUDA (a device that reports its total) also the caching allocator's
  // reserved peak, which includes fragmentation that allocated bytes do not show. The run resets
  // the device's peak statistics when it starts, so the reserved peak is the batch's own.
  int64_t batch_peak_bytes(int64_t peak_allocated_bytes) const;
  // The most a single batch can ever get (nothing else running).
  int64_t capacity_bytes() const { return budget_ - baseline_bytes(); }

 private:
  int64_t budget_ = 0;
  StatsFn stats_;
  mutable std::mutex mu_;
  int64_t baseline_ = 0;
};

}  // namespace ldcp::server
