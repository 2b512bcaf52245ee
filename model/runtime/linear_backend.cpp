#include "model/runtime/linear_backend.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/randn.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <stdexcept>

#include "model/runtime/dtype.h"

namespace ldcp::runtime {
namespace {

// One slot per floating dtype the pipeline runs in.
int slot(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kFloat:
      return 0;
    case c10::kBFloat16:
      return 1;
    case c10::kHalf:
      return 2;
    default:
      return -1;
  }
}

std::array<std::atomic<int>, 3> chosen{};  // 0: ATen (LinearBackend::kAten), 1: oneDNN

at::Tensor onednn_linear(const at::Tensor& input, const at::Tensor& weight,
                         const at::Tensor& bias) {
  // mkldnn::_linear_pointwise(Tensor X, Tensor W, Tensor? B, str attr, Scalar?[] scalars,
  // str? algorithm): no C++ function is generated for it, so it is called through the
  // dispatcher, boxed (a microsecond against a GEMM's milliseconds).
  static const c10::OperatorHandle op =
      c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(input);
  stack.emplace_back(weight);
  stack.emplace_back(bias.defined() ? c10::IValue(bias) : c10::IValue());
  stack.emplace_back(std::string("none"));
  stack.emplace_back(c10::List<std::optional<c10::Scalar>>());
  stack.emplace_back(c10::IValue());
  op.callBoxed(&stack);
  return stack.back().toTensor();
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

}  // namespace

std::string linear_backend_name(LinearBackend backend) {
  return backend == LinearBackend::kOneDnn ? "onednn" : "aten";
}

std::optional<LinearBackend> linear_backend_from_name(std::string_view name) {
  if (name == "aten") return LinearBackend::kAten;
  if (name == "onednn") return LinearBackend::kOneDnn;
  return std::nullopt;
}

bool onednn_linear_available(c10::ScalarType dtype) {
  static std::mutex mutex;
  static std::map<c10::ScalarType, bool> known;
  std::lock_guard<std::mutex> lock(mutex);
  if (auto it = known.find(dtype); it != known.end()) return it->second;
  bool available = false;
  if (slot(dtype) >= 0) {
    try {
      c10::NoGradGuard no_grad;
      const auto options = at::TensorOptions().dtype(dtype);
      onednn_linear(at::randn({8, 64}, options), at::randn({16, 64}, options), at::Tensor());
      available = true;
    } catch (const std::exception&) {
      available = false;  // e.g. "could not create a primitive descriptor" (no bf16 ISA)
    }
  }
  known[dtype] = available;
  return available;
}

void set_linear_backend(c10::ScalarType dtype, LinearBackend backend) {
  const int s = slot(dtype);
  if (s < 0) throw std::invalid_argument("no linear backend for dtype " + dtype_name(dtype));
  if (backend == LinearBackend::kOneDnn && !onednn_linear_available(dtype)) {
    throw std::invalid_argument("oneDNN's linear does not run " + dtype_name(dtype) +
                                " on this CPU");
  }
  chosen[s].store(backend == LinearBackend::kOneDnn ? 1 : 0, std::memory_order_relaxed);
}

LinearBackend linear_backend(c10::ScalarType dtype) {
  const int s = slot(dtype);
  return s >= 0 && chosen[s].load(std::memory_order_relaxed) == 1 ? LinearBackend::kOneDnn
                                                                  : LinearBackend::kAten;
}

at::Tensor linear(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias) {
  // oneDNN's op has no derivative: anything autograd records (gate training) takes ATen.
  const bool records_grad =
      c10::GradMode::is_enabled() &&
      (input.requires_grad() || weight.requires_grad() || (bias.defined() && bias.requires_grad()));
  if (input.is_cpu() && weight.is_contiguous() && !records_grad &&
      linear_backend(input.scalar_type()) == LinearBackend::kOneDnn) {
    return onednn_linear(input, weight, bias);
  }
  return at::linear(input, weight,
                    bias.defined() ? std::optional<at::Tensor>(bias) : std::optional<at::Tensor>());
}

LinearChoice configure_linear_backend(std::string_view requested, c10::ScalarType dtype,
                                      const std::vector<LinearShape>& shapes, int rounds,
                                      const std::string& option) {
  LinearChoice choice;
  if (requested != "auto") {
    const auto named = linear_backend_from_name(requested);
    if (!named) {
      throw std::invalid_argument(option + " must be auto, aten or onednn, got \"" +
                                  std::string(requested.substr(0, 32)) + "\"");
    }
    if (*named == LinearBackend::kOneDnn && !onednn_linear_available(dtype)) {
      throw std::invalid_argument(option + " onednn: oneDNN's linear does not run " +
                                  dtype_name(dtype) + " on this CPU");
    }
    choice.backend = *named;
    choice.reason = "asked for";
    set_linear_backend(dtype, choice.backend);
    return choice;
  }
  if (!onednn_linear_available(dtype)) {
    choice.reason = "auto: oneDNN has no " + dtype_name(dtype) + " linear on this CPU";
    set_linear_backend(dtype, LinearBackend::kAten);
    return choice;
  }
  c10::NoGradGuard no_grad;
  const auto options = at::TensorOptions().dtype(dtype);
  struct Operands {
    at::Tensor x, w, b;
  };
  std::vector<Operands> operands;
  for (const auto& s : shapes) {
    operands.push_back({at::randn({s.m, s.k}, options), at::randn({s.n, s.k}, options),
                        at::randn({s.n}, options)});
  }
  auto pass = [&](bool use_onednn) {
    const auto start = std::chrono::steady_clock::now();
    for (const auto& o : operands) {
      use_onednn ? onednn_linear(o.x, o.w, o.b) : at::linear(o.x, o.w, o.b);
    }
    return seconds_since(start);
  };
  pass(false);  // warm-up: first-call allocations, oneDNN's primitive cache
  pass(true);
  std::vector<double> aten, onednn;
  for (int r = 0; r < std::max(1, rounds); ++r) {
    aten.push_back(pass(false));
    onednn.push_back(pass(true));
  }
  std::sort(aten.begin(), aten.end());
  std::sort(onednn.begin(), onednn.end());
  choice.aten_seconds = aten[aten.size() / 2];
  choice.onednn_seconds = onednn[onednn.size() / 2];
  choice.backend =
      choice.onednn_seconds < choice.aten_seconds ? LinearBackend::kOneDnn : LinearBackend::kAten;
  char ratio[64];
  std::snprintf(ratio, sizeof ratio, "%.2f", choice.onednn_seconds / choice.aten_seconds);
  choice.reason = "auto: oneDNN took " + std::string(ratio) + "x ATen's time on the U-Net's " +
                  dtype_name(dtype) + " linears";
  set_linear_backend(dtype, choice.backend);
  return choice;
}

}  // namespace ldcp::runtime
