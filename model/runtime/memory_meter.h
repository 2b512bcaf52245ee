#pragma once
// Measured (never estimated) tensor memory of one device: on CUDA from the caching allocator's
// statistics (allocated and reserved, current and peak); on the CPU from a tracking allocator
// registered with c10 that counts the bytes of every live CPU tensor.

#include <cstdint>

#include <c10/core/Device.h>

namespace ldcp::runtime {

struct MemoryStats {
  int64_t allocated_bytes = 0;       // live tensor bytes now
  int64_t peak_allocated_bytes = 0;  // max of allocated_bytes since the last reset_peak()
  int64_t reserved_bytes = 0;        // CUDA: held by the caching allocator; CPU: = allocated
  int64_t peak_reserved_bytes = 0;
  int64_t device_total_bytes = 0;  // CUDA: the device's memory; CPU: 0 (unknown / not a limit)
};

// CPU tensor memory comes from glibc's heap, which the tracking allocator configures to keep
// freed blocks of up to 32 MiB for reuse: without that every large activation is a fresh
// mapping, and the page faults that fill it cost ~9 % of an SD1.5 U-Net step on the CPU.
// Returns that kept memory to the system (malloc_trim): call between phases, so that one
// phase's freed blocks do not add to the next one's resident peak. No-op without glibc.
void release_free_cpu_memory();

class MemoryMeter {
 public:
  // CPU: installs the tracking allocator on first use (process-wide, idempotent).
  explicit MemoryMeter(c10::Device device);
  MemoryStats stats() const;
  // Starts a new peak window at the current usage.
  void reset_peak();
  c10::Device device() const { return device_; }

 private:
  c10::Device device_;
};

}  // namespace ldcp::runtime
