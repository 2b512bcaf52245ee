#include "model/runtime/dtype.h"

#include <stdexcept>

#include <ATen/cpu/Utils.h>

namespace ldcp::runtime {

std::optional<c10::ScalarType> dtype_from_name(std::string_view name) {
  if (name == "fp32" || name == "float32") return c10::kFloat;
  if (name == "fp16" || name == "float16") return c10::kHalf;
  if (name == "bf16" || name == "bfloat16") return c10::kBFloat16;
  return std::nullopt;
}

std::string dtype_name(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kHalf:
      return "fp16";
    case c10::kBFloat16:
      return "bf16";
    default:
      return "fp32";
  }
}

std::string cpu_native_bf16_feature() {
  const auto caps = at::cpu::get_cpu_capabilities();
  for (const char* feature : {"amx_bf16", "avx512_bf16"}) {
    auto it = caps.find(feature);
    if (it != caps.end() && it->second.isBool() && it->second.toBool()) return feature;
  }
  return "";
}

DtypeChoice resolve_dtype(std::string_view requested, const c10::Device& device,
                          const std::string& cpu_bf16_feature, const std::string& option) {
  DtypeChoice choice;
  if (auto named = dtype_from_name(requested)) {
    choice.dtype = *named;
    choice.reason = "asked for";
  } else if (requested == "auto") {
    if (device.is_cuda()) {
      choice.dtype = c10::kHalf;
      choice.reason = "auto: CUDA";
    } else if (!cpu_bf16_feature.empty()) {
      choice.dtype = c10::kBFloat16;
      choice.reason = "auto: the CPU has " + cpu_bf16_feature;
    } else {
      choice.dtype = c10::kFloat;
      choice.reason = "auto: the CPU has no native bf16 arithmetic";
    }
  } else {
    throw std::invalid_argument(option + " must be auto, fp32, fp16 or bf16, got \"" +
                                std::string(requested.substr(0, 16)) + "\"");
  }
  choice.name = dtype_name(choice.dtype);
  return choice;
}

}  // namespace ldcp::runtime
