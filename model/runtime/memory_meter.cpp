#include "model/runtime/memory_meter.h"

#include <algorithm>
#include <atomic>
#include <mutex>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/CachingDeviceAllocator.h>

namespace ldcp::runtime {
namespace {

// Wraps c10's CPU allocator and counts the bytes of live allocations. Each allocation carries a
// small context (the inner DataPtr and its size) so that frees are counted exactly.
class TrackingCpuAllocator final : public c10::Allocator {
 public:
  explicit TrackingCpuAllocator(c10::Allocator* inner) : inner_(inner) {}

  c10::DataPtr allocate(size_t bytes) override {
    auto* context = new Context{inner_->allocate(bytes), bytes, this};
    add(static_cast<int64_t>(bytes));
    void* data = context->inner.get();
    return {data, context, &Delete, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  int64_t current() const { return current_.load(std::memory_order_relaxed); }
  int64_t peak() const { return peak_.load(std::memory_order_relaxed); }
  void reset_peak() { peak_.store(current(), std::memory_order_relaxed); }

 private:
  struct Context {
    c10::DataPtr inner;
    size_t bytes;
    TrackingCpuAllocator* owner;
  };

  static void Delete(void* raw) {
    auto* context = static_cast<Context*>(raw);
    context->owner->add(-static_cast<int64_t>(context->bytes));
    delete context;  // frees through the inner DataPtr's deleter
  }

  void add(int64_t delta) {
    const int64_t now = current_.fetch_add(delta, std::memory_order_relaxed) + delta;
    int64_t peak = peak_.load(std::memory_order_relaxed);
    while (now > peak && !peak_.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
    }
  }

  c10::Allocator* inner_;
  std::atomic<int64_t> current_{0};
  std::atomic<int64_t> peak_{0};
};

TrackingCpuAllocator& cpu_allocator() {
  // Installed once, never freed: tensors allocated through it may outlive any meter.
  static TrackingCpuAllocator* allocator = [] {
    auto* tracking = new TrackingCpuAllocator(c10::GetDefaultCPUAllocator());
    // A high priority so that later registrations of lower priority do not replace it.
    c10::SetCPUAllocator(tracking, /*priority=*/100);
    return tracking;
  }();
  return *allocator;
}

constexpr auto kAggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);

}  // namespace

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
