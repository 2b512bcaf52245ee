// libtorch's CUDA backend loaded on demand (model/runtime/device.h, LDCP_LAZY_CUDA): a CPU
// process never maps libtorch_cuda.so, naming a CUDA device loads it, and ATen then uses the
// real CUDA hooks. Its own executable, so that no other test has touched CUDA first.

#include <fstream>
#include <stdexcept>
#include <string>

#include <ATen/detail/CUDAHooksInterface.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>

#include "model/runtime/device.h"

namespace ldcp::runtime {
namespace {

bool mapped(const std::string& library) {
  std::ifstream maps("/proc/self/maps");
  for (std::string line; std::getline(maps, line);) {
    if (line.find("/" + library) != std::string::npos) return true;
  }
  return false;
}

std::string error_of(const std::string& name) {
  try {
    parse_device(name, "--device");
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(CudaBackend, LoadedOnlyWhenACudaDeviceIsNamed) {
#if LDCP_CUDA_BACKEND_LAZY
  EXPECT_FALSE(mapped("libtorch_cuda.so"));
  EXPECT_FALSE(mapped("libcublasLt.so.13"));
  EXPECT_FALSE(cuda_backend_loaded());
  EXPECT_TRUE(parse_device("cpu").is_cpu());
  EXPECT_FALSE(mapped("libtorch_cuda.so")) << "a CPU device must not load the CUDA backend";
#endif
#if LDCP_TORCH_HAS_CUDA
  ASSERT_EQ(load_cuda_backend(), "");
  EXPECT_TRUE(mapped("libtorch_cuda.so"));
  EXPECT_TRUE(cuda_backend_loaded());
  EXPECT_EQ(load_cuda_backend(), "");  // once loaded, a no-op
  // ATen's CUDA hooks are the backend's, not the stub that throws without it.
  EXPECT_GT(at::detail::getCUDAHooks().versionCUDART(), 0);
  if (torch::cuda::is_available()) {
    EXPECT_TRUE(parse_device("cuda").is_cuda());
    EXPECT_EQ(parse_device("cuda:0").index(), 0);
  } else {
    EXPECT_NE(error_of("cuda").find("--device \"cuda\": CUDA is not available"), std::string::npos)
        << error_of("cuda");
  }
#else
  EXPECT_NE(load_cuda_backend().find("no CUDA backend"), std::string::npos);
  EXPECT_NE(error_of("cuda").find("no CUDA backend"), std::string::npos);
#endif
}

TEST(CudaBackend, OtherDeviceNamesAreRefusedNamingTheOption) {
  for (const std::string bad : {"gpu", "cuda:x", "mps", "", "cpu:0:1"}) {
    const auto error = error_of(bad);
    EXPECT_NE(error.find("--device must be cpu, cuda or cuda:N"), std::string::npos) << bad;
    EXPECT_THROW(device_from_name(bad), std::invalid_argument) << bad;
  }
  // The syntax alone: no device needed.
  EXPECT_TRUE(device_from_name("cuda:1").is_cuda());
  EXPECT_EQ(device_from_name("cuda:1").index(), 1);
  // A long value is quoted by a short prefix only.
  const auto error = error_of(std::string(1000, 'x'));
  EXPECT_LT(error.size(), 100u);
  EXPECT_NE(error.find("xxx...\""), std::string::npos) << error;
  try {
    parse_device("gpu", "LDCP_TEST_DEVICE");
    ADD_FAILURE() << "gpu accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind("LDCP_TEST_DEVICE must be", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace ldcp::runtime
