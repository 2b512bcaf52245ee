#include "model/runtime/memory_meter.h"

#include <algorithm>
#include <atomic>
#include <mutex>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace ldcp::runtime {
namespace {

// Replaces c10's CPU allocator with one that counts the bytes of live allocations. Each
// block carries its size in a 64-byte header (keeping c10's 64-byte alignment), so frees are
// counted exactly and raw_allocate/raw_deleter work as c10 expects (data == context).
class TrackingCpuAllocator final : public c10::Allocator {
 public:
  static constexpr size_t kHeader = 64;

  c10::DataPtr allocate(size_t bytes) override {
    void* data = allocate_raw_block(bytes);
    return {data, data, &Delete, c10::Device(c10::kCPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &Delete; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t current() const { return current_.load(std::memory_order_relaxed); }
  int64_t peak() const { return peak_.load(std::memory_order_relaxed); }
  void reset_peak() { peak_.store(current(), std::memory_order_relaxed); }

 private:
  void* allocate_raw_block(size_t bytes) {
    auto* block = static_cast<char*>(c10::alloc_cpu(bytes + kHeader));
    *reinterpret_cast<size_t*>(block) = bytes;
    add(static_cast<int64_t>(bytes));
    return block + kHeader;
  }

  static void Delete(void* data);

  void add(int64_t delta) {
    const int64_t now = current_.fetch_add(delta, std::memory_order_relaxed) + delta;
    int64_t peak = peak_.load(std::memory_order_relaxed);
    while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
  }

  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
};

TrackingCpuAllocator& cpu_allocator() {
  // Installed once, never freed: tensors allocated through it may outlive any meter.
  static TrackingCpuAllocator* allocator = [] {
#if defined(__GLIBC__)
    // Keep freed blocks up to glibc's largest threshold (32 MiB) in the heap for reuse, and do
    // not trim the heap's top on every free (release_free_cpu_memory does, between phases).
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
    auto* tracking = new TrackingCpuAllocator();
    // A high priority so that later registrations of lower priority do not replace it.
    c10::SetCPUAllocator(tracking, /*priority=*/100);
    return tracking;
  }();
  return *allocator;
}

void TrackingCpuAllocator::Delete(void* data) {
  if (data == nullptr) return;
  auto* block = static_cast<char*>(data) - kHeader;
  cpu_allocator().add(-static_cast<int64_t>(*reinterpret_cast<size_t*>(block)));
  c10::free_cpu(block);
}

constexpr auto kAggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);

}  // namespace

void release_free_cpu_memory() {
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

MemoryMeter::MemoryMeter(c10::Device device) : device_(device) {
  if (device_.is_cpu()) cpu_allocator();
}

MemoryStats MemoryMeter::stats() const {
  MemoryStats s;
  if (device_.is_cpu()) {
    const auto& a = cpu_allocator();
    s.allocated_bytes = s.reserved_bytes = a.current();
    s.peak_allocated_bytes = s.peak_reserved_bytes = a.peak();
    return s;
  }
  auto* allocator = c10::getDeviceAllocator(device_.type());
  const auto index = device_.has_index() ? device_.index() : c10::DeviceIndex{0};
  const auto stats = allocator->getDeviceStats(index);
  s.allocated_bytes = stats.allocated_bytes[kAggregate].current;
  s.peak_allocated_bytes = stats.allocated_bytes[kAggregate].peak;
  s.reserved_bytes = stats.reserved_bytes[kAggregate].current;
  s.peak_reserved_bytes = stats.reserved_bytes[kAggregate].peak;
  s.device_total_bytes = static_cast<int64_t>(allocator->getMemoryInfo(index).second);
  return s;
}

void MemoryMeter::reset_peak() {
  if (device_.is_cpu()) {
    cpu_allocator().reset_peak();
    return;
  }
  const auto index = device_.has_index() ? device_.index() : c10::DeviceIndex{0};
  c10::getDeviceAllocator(device_.type())->resetPeakStats(index);
}

}  // namespace ldcp::runtime
