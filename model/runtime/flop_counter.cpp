#include "model/runtime/flop_counter.h"

#include <ATen/core/ivalue.h>
#include <ATen/record_function.h>

namespace ldcp::runtime {
namespace {

// The counter active on this thread, and how deep we are inside an operator already counted
// (its decomposition, e.g. attention's math fallback into bmm, must not count twice).
thread_local std::map<std::string, int64_t>* active_counts = nullptr;
thread_local int counted_depth = 0;

struct CountedContext : at::ObserverContext {};

int64_t numel(c10::IntArrayRef sizes) {
  int64_t n = 1;
  for (auto s : sizes) n *= s;
  return n;
}

// aten::convolution(input, weight, bias, stride, padding, dilation, transposed, output_padding,
// groups)
int64_t convolution_macs(c10::ArrayRef<const c10::IValue> in) {
  const auto input = in[0].toTensor().sizes();
  const auto weight = in[1].toTensor().sizes();
  const auto stride = in[3].toIntVector();
  const auto padding = in[4].toIntVector();
  const auto dilation = in[5].toIntVector();
  const bool transposed = in[6].toBool();
  const int64_t spatial_dims = static_cast<int64_t>(weight.size()) - 2;
  if (transposed) {
    // weight [in, out / groups, k...]: every input element is scattered through the kernel.
    return numel(input) * numel(weight.slice(1));
  }
  int64_t out_positions = 1;
  for (int64_t d = 0; d < spatial_dims; ++d) {
    const auto s = stride.size() == 1 ? stride[0] : stride[d];
    const auto p = padding.size() == 1 ? padding[0] : padding[d];
    const auto dl = dilation.size() == 1 ? dilation[0] : dilation[d];
    out_positions *= (input[2 + d] + 2 * p - dl * (weight[2 + d] - 1) - 1) / s + 1;
  }
  // Each output element: (in_channels / groups) x kernel MACs.
  return input[0] * weight[0] * out_positions * numel(weight.slice(1));
}

int64_t operator_macs(const std::string& name, c10::ArrayRef<const c10::IValue> in) {
  if (name == "aten::convolution") return convolution_macs(in);
  if (name == "aten::mm") {
    const auto a = in[0].toTensor().sizes(), b = in[1].toTensor().sizes();
    return a[0] * a[1] * b[1];
  }
  if (name == "aten::addmm") {
    const auto a = in[1].toTensor().sizes(), b = in[2].toTensor().sizes();
    return a[0] * a[1] * b[1];
  }
  if (name == "mkldnn::_linear_pointwise") {
    // x [..., k], W [n, k] (runtime/linear_backend.h's oneDNN path).
    return numel(in[0].toTensor().sizes()) * in[1].toTensor().size(0);
  }
  if (name == "aten::bmm") {
    const auto a = in[0].toTensor().sizes(), b = in[1].toTensor().sizes();
    return a[0] * a[1] * a[2] * b[2];
  }
  if (name == "aten::baddbmm") {
    const auto a = in[1].toTensor().sizes(), b = in[2].toTensor().sizes();
    return a[0] * a[1] * a[2] * b[2];
  }
  if (name == "aten::scaled_dot_product_attention") {
    // q [..., L, E], k [..., S, E], v [..., S, Ev]: QK^T and AV.
    const auto q = in[0].toTensor().sizes(), k = in[1].toTensor().sizes();
    const auto v = in[2].toTensor().sizes();
    const int64_t batch = numel(q.slice(0, q.size() - 2));
    const int64_t l = q[q.size() - 2], e = q.back(), s = k[k.size() - 2], ev = v.back();
    return batch * l * s * (e + ev);
  }
  return -1;  // not a counted operator
}

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
  if (active_counts == nullptr) return nullptr;
  const std::string name = fn.name();
  const auto inputs = fn.inputs();
  int64_t macs = -1;
  try {
    macs = operator_macs(name, inputs);
  } catch (const std::exception&) {
    macs = -1;  // an overload with other arguments: not counted
  }
  if (macs < 0) return nullptr;
  if (counted_depth++ == 0) (*active_counts)[name] += macs;
  return std::make_unique<CountedContext>();
}

void on_end(const at::RecordFunction&, at::ObserverContext* context) {
  if (context != nullptr) --counted_depth;
}

}  // namespace

struct FlopCounter::State {
  std::map<std::string, int64_t> counts;
  std::map<std::string, int64_t>* previous = nullptr;
  at::CallbackHandle handle = 0;
};

FlopCounter::FlopCounter() : state_(std::make_unique<State>()) {
  state_->previous = active_counts;
  active_counts = &state_->counts;
  state_->handle =
      at::addThreadLocalCallback(at::RecordFunctionCallback(&on_start, &on_end).needsInputs(true));
}

FlopCounter::~FlopCounter() {
  at::removeCallback(state_->handle);
  active_counts = state_->previous;
}

int64_t FlopCounter::macs() const {
  int64_t total = 0;
  for (const auto& [name, macs] : state_->counts) total += macs;
  return total;
}

std::map<std::string, int64_t> FlopCounter::macs_by_operator() const { return state_->counts; }

void FlopCounter::reset() { state_->counts.clear(); }

}  // namespace ldcp::runtime
