// --dtype auto (model/runtime/dtype.h): the dtype chosen for each device kind, named dtypes
// forced as they are, and the error for anything else.

#include <gtest/gtest.h>

#include "model/runtime/dtype.h"

namespace ldcp::runtime {
namespace {

TEST(Dtype, AutoPicksTheFastestNativeDtypePerDeviceKind) {
  const c10::Device cpu(c10::kCPU), cuda(c10::kCUDA, 0);
  auto on_cuda = resolve_dtype("auto", cuda, "", "--dtype");
  EXPECT_EQ(on_cuda.dtype, c10::kHalf);
  EXPECT_EQ(on_cuda.name, "fp16");
  EXPECT_EQ(on_cuda.reason, "auto: CUDA");
  auto bf16_cpu = resolve_dtype("auto", cpu, "avx512_bf16", "--dtype");
  EXPECT_EQ(bf16_cpu.dtype, c10::kBFloat16);
  EXPECT_EQ(bf16_cpu.reason, "auto: the CPU has avx512_bf16");
  EXPECT_EQ(resolve_dtype("auto", cpu, "amx_bf16", "--dtype").dtype, c10::kBFloat16);
  auto plain_cpu = resolve_dtype("auto", cpu, "", "--dtype");
  EXPECT_EQ(plain_cpu.dtype, c10::kFloat);
  EXPECT_EQ(plain_cpu.name, "fp32");
  EXPECT_NE(plain_cpu.reason.find("no native bf16"), std::string::npos);
  // This machine: whatever cpuinfo says decides.
  const auto here = resolve_dtype("auto", cpu);
  EXPECT_EQ(here.dtype, cpu_native_bf16_feature().empty() ? c10::kFloat : c10::kBFloat16);
}

TEST(Dtype, NamedDtypesAreForcedOnEveryDevice) {
  for (const c10::Device device : {c10::Device(c10::kCPU), c10::Device(c10::kCUDA, 0)}) {
    EXPECT_EQ(resolve_dtype("fp32", device, "avx512_bf16", "--dtype").dtype, c10::kFloat);
    EXPECT_EQ(resolve_dtype("float16", device, "", "--dtype").dtype, c10::kHalf);
    auto bf16 = resolve_dtype("bf16", device, "", "--dtype");
    EXPECT_EQ(bf16.dtype, c10::kBFloat16);
    EXPECT_EQ(bf16.reason, "asked for");
  }
}

TEST(Dtype, AnythingElseIsRefusedNamingTheOptionAndQuotingAShortPrefix) {
  try {
    resolve_dtype(std::string(1000, 'x'), c10::Device(c10::kCPU), "", "LDCP_DTYPE");
    FAIL() << "accepted";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("LDCP_DTYPE must be auto, fp32, fp16 or bf16", 0), 0u) << what;
    EXPECT_LT(what.size(), 100u);
  }
  EXPECT_FALSE(dtype_from_name("auto"));
  EXPECT_EQ(dtype_name(c10::kBFloat16), "bf16");
}

}  // namespace
}  // namespace ldcp::runtime
