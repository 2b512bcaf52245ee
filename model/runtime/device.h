#pragma once
// Devices by name, and libtorch's CUDA backend loaded on demand.
//
// A CUDA build of libtorch registers its CUDA kernels, allocator and hooks from
// libtorch_cuda.so's static initialisers. The project links without it (LDCP_LAZY_CUDA in
// CMakeLists.txt: ~250 MiB of resident pages that a CPU run never uses) and loads it here, the
// first time a CUDA device is named, before anything asks ATen about CUDA (ATen keeps the first
// answer of its CUDA hooks for the life of the process).

#include <string>
#include <string_view>

#include <c10/core/Device.h>

namespace ldcp::runtime {

// "cpu", "cuda" or "cuda:N". A CUDA device first loads the CUDA backend, then must be
// available. Throws std::invalid_argument naming `option` and quoting a short prefix of `name`.
c10::Device parse_device(std::string_view name, std::string_view option = "--device");

// The name's syntax only (the same errors), for checking options before the device is used.
c10::Device device_from_name(std::string_view name, std::string_view option = "--device");

// The rest of parse_device for a device already named: a CUDA device loads the CUDA backend,
// then must be available (std::invalid_argument naming `option` otherwise).
void require_device(const c10::Device& device, std::string_view option = "--device");

// Loads libtorch_cuda.so from libtorch's own directory (a no-op once loaded, or when the
// executable was linked with it). Returns "" on success, else why not (e.g. a CPU-only
// libtorch). Safe to call from several threads.
std::string load_cuda_backend();

// Whether libtorch's CUDA backend is in this process (loaded or linked).
bool cuda_backend_loaded();

}  // namespace ldcp::runtime
