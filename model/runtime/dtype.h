#pragma once
// The compute dtype of a run: named (fp32, fp16, bf16) or "auto", which picks the fastest dtype
// the device runs natively: fp16 on CUDA, bf16 on a CPU with native bf16 arithmetic
// (avx512_bf16 or AMX-BF16, as ATen's cpuinfo reports them: oneDNN's bf16 kernels need one of
// them, and without them bf16 is emulated and slower than fp32), fp32 otherwise.

#include <optional>
#include <string>
#include <string_view>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

namespace ldcp::runtime {

struct DtypeChoice {
  c10::ScalarType dtype = c10::kFloat;
  std::string name;    // "fp32", "fp16", "bf16"
  std::string reason;  // e.g. "auto: the CPU has avx512_bf16"; "asked for" when named
};

// "fp32"/"float32", "fp16"/"float16", "bf16"/"bfloat16"; none otherwise ("auto" included).
std::optional<c10::ScalarType> dtype_from_name(std::string_view name);
std::string dtype_name(c10::ScalarType dtype);

// Whether this CPU has native bf16 arithmetic, and which feature says so ("" when not).
std::string cpu_native_bf16_feature();

// `requested`: a name above or "auto". `cpu_bf16_feature` is cpu_native_bf16_feature() (a
// parameter so that each device kind's choice can be tested on any machine). Throws
// std::invalid_argument naming `option` for anything else.
DtypeChoice resolve_dtype(std::string_view requested, const c10::Device& device,
                          const std::string& cpu_bf16_feature, const std::string& option);
inline DtypeChoice resolve_dtype(std::string_view requested, const c10::Device& device,
                                 const std::string& option = "--dtype") {
  return resolve_dtype(requested, device, cpu_native_bf16_feature(), option);
}

}  // namespace ldcp::runtime
