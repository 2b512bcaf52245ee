#include "tests/common/test_util.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <sstream>

#include <unistd.h>

#include <ATen/ATen.h>

namespace ldcp::testing {
namespace {

std::filesystem::path env_path(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') {
    throw std::runtime_error(std::string(name) + " is not set: run the tests through ctest");
  }
  return value;
}

}  // namespace

std::filesystem::path parity_dir() { return env_path("LDCP_PARITY_DIR"); }

std::filesystem::path parity_model(const std::string& name) {
  return parity_dir() / "models" / name;
}

std::filesystem::path source_dir() { return env_path("LDCP_SOURCE_DIR"); }

std::filesystem::path temp_dir(const std::string& tag) {
  static std::atomic<int> counter{0};
  auto dir = std::filesystem::temp_directory_path() /
             ("ldcp-test-" + tag + "-" + std::to_string(::getpid()) + "-" +
              std::to_string(counter++));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

::testing::AssertionResult AllClose(const at::Tensor& actual, const at::Tensor& expected,
                                    double rel_tol) {
  if (!actual.defined() || !expected.defined()) {
    return ::testing::AssertionFailure() << "undefined tensor";
  }
  if (actual.sizes() != expected.sizes()) {
    return ::testing::AssertionFailure()
           << "shape " << actual.sizes() << " != expected " << expected.sizes();
  }
  auto a = actual.detach().to(at::kCPU, at::kDouble);
  auto e = expected.detach().to(at::kCPU, at::kDouble);
  if (a.numel() == 0) return ::testing::AssertionSuccess();
  const double scale = std::max(1.0, e.abs().max().item<double>());
  auto diff = (a - e).abs();
  if (!diff.isfinite().all().item<bool>()) {
    return ::testing::AssertionFailure() << "non-finite values in the difference";
  }
  const double max_diff = diff.max().item<double>();
  if (max_diff <= rel_tol * scale) return ::testing::AssertionSuccess();
  const int64_t where = diff.flatten().argmax().item<int64_t>();
  std::ostringstream out;
  out << "max |diff| = " << max_diff << " > " << rel_tol << " x " << scale << " at flat index "
      << where << " (actual " << a.flatten()[where].item<double>() << ", expected "
      << e.flatten()[where].item<double>() << "); mean |diff| = " << diff.mean().item<double>();
  return ::testing::AssertionFailure() << out.str();
}

}  // namespace ldcp::testing
