#pragma once
// The backend of the U-Net's linear layers on the CPU: ATen's linear (MKL/OpenBLAS sgemm in
// fp32; its own bf16/fp16 GEMMs) or oneDNN's inner product (mkldnn::_linear_pointwise, the op
// PyTorch's inductor emits for CPU linears). Which one is faster depends on the CPU, the dtype
// and the shapes (bench/linear_bench.py measures them side by side), so "auto" times both on
// the U-Net's own shapes when the pipeline loads and keeps the faster one, per dtype.
//
// The choice is process-wide (one per dtype), read on every call: layers call runtime::linear
// instead of F::linear. CUDA tensors always take ATen (cuBLAS).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>

namespace ldcp::runtime {

enum class LinearBackend { kAten, kOneDnn };

std::string linear_backend_name(LinearBackend backend);  // "aten", "onednn"
// "aten" or "onednn"; none otherwise ("auto" included).
std::optional<LinearBackend> linear_backend_from_name(std::string_view name);

// Whether oneDNN has an inner product for `dtype` on this CPU (e.g. none for bf16 without
// avx512_bf16 or AMX): tried once on a small product, then cached.
bool onednn_linear_available(c10::ScalarType dtype);

// The backend CPU linears in `dtype` take (default: ATen). Setting oneDNN where it is not
// available throws std::invalid_argument.
void set_linear_backend(c10::ScalarType dtype, LinearBackend backend);
LinearBackend linear_backend(c10::ScalarType dtype);

// y = x W^T + b, as F::linear. oneDNN when x is a CPU tensor of a dtype set to it, W is
// contiguous (oneDNN's inner product wants a dense weight: a narrowed one, as the pruned
// feed-forward's output columns, is refused or hundreds of times slower) and autograd records
// nothing (the op has no derivative); ATen otherwise.
at::Tensor linear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias = {});

// One linear: [m, k] x [k, n].
struct LinearShape {
  int64_t m = 0, k = 0, n = 0;
};

struct LinearChoice {
  LinearBackend backend = LinearBackend::kAten;
  double aten_seconds = 0, onednn_seconds = 0;  // per pass over the shapes; 0 when not timed
  std::string reason;  // e.g. "auto: oneDNN 0.81x ATen's time on the U-Net's shapes"
};

// `requested`: "auto", "aten" or "onednn" (std::invalid_argument naming `option` otherwise).
// "auto" times both backends on `shapes` in `dtype` (alternating, the median of `rounds`
// rounds) and takes the faster; ATen when oneDNN is not available. Sets the choice for `dtype`
// (set_linear_backend) and returns it.
LinearChoice configure_linear_backend(std::string_view requested, c10::ScalarType dtype,
                                      const std::vector<LinearShape>& shapes, int rounds = 3,
                                      const std::string& option = "--linear-backend");

}  // namespace ldcp::runtime
