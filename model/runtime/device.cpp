#include "model/runtime/device.h"

#include <dlfcn.h>
#include <link.h>

#include <filesystem>
#include <mutex>
#include <stdexcept>

#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/cuda.h>

namespace ldcp::runtime {
namespace {

constexpr const char* kCudaBackend = "libtorch_cuda.so";

std::string quoted_prefix(std::string_view value) {
  constexpr size_t kMax = 32;
  std::string out(value.substr(0, kMax));
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) c = '?';
  }
  return "\"" + out + (value.size() > kMax ? "...\"" : "\"");
}

// The directory of the libtorch this process runs: that of the loaded libtorch_cpu.so (found
// by its soname, so that a non-PIE executable's PLT addresses cannot mislead it).
std::filesystem::path libtorch_dir() {
  void* handle = dlopen("libtorch_cpu.so", RTLD_LAZY | RTLD_NOLOAD);
  if (handle == nullptr) return {};
  link_map* map = nullptr;
  std::filesystem::path dir;
  if (dlinfo(handle, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_name != nullptr) {
    dir = std::filesystem::path(map->l_name).parent_path();
  }
  dlclose(handle);
  return dir;
}

}  // namespace

bool cuda_backend_loaded() {
  // The CUDA device guard is registered by the backend's static initialisers.
  return c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA);
}

std::string load_cuda_backend() {
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  if (cuda_backend_loaded()) return "";
  const auto dir = libtorch_dir();
  const auto path = dir.empty() ? std::filesystem::path(kCudaBackend) : dir / kCudaBackend;
  if (!std::filesystem::exists(path)) {
    return "this libtorch has no CUDA backend (no " + path.string() + "): a CPU-only build";
  }
  // RTLD_GLOBAL: the backend's symbols serve the CUDA libraries it loads after it. Never
  // closed: its registrations live as long as the process.
  if (dlopen(path.c_str(), RTLD_NOW | RTLD_GLOBAL) == nullptr) {
    const char* why = dlerror();
    return "cannot load " + path.string() + ": " + (why != nullptr ? why : "unknown error");
  }
  if (!cuda_backend_loaded()) return path.string() + " loaded but registered no CUDA device";
  return "";
}

c10::Device device_from_name(std::string_view name, std::string_view option) {
  const std::string what =
      std::string(option) + " must be cpu, cuda or cuda:N, got " + quoted_prefix(name);
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(std::string(name));
  } catch (const std::exception&) {
    throw std::invalid_argument(what);
  }
  if (!device.is_cpu() && !device.is_cuda()) throw std::invalid_argument(what);
  return device;
}

void require_device(const c10::Device& device, std::string_view option) {
  if (!device.is_cuda()) return;
  const std::string what = std::string(option) + " " + quoted_prefix(device.str()) + ": ";
  if (const auto error = load_cuda_backend(); !error.empty()) {
    throw std::invalid_argument(what + error);
  }
  if (!torch::cuda::is_available()) {
    throw std::invalid_argument(what + "CUDA is not available on this machine");
  }
}

c10::Device parse_device(std::string_view name, std::string_view option) {
  const auto device = device_from_name(name, option);
  require_device(device, option);
  return device;
}

}  // namespace ldcp::runtime
