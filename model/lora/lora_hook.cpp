#include "model/lora/lora_hook.h"

#include <ATen/ops/conv2d.h>
#include <ATen/ops/linear.h>

namespace ldcp::lora {
namespace {
thread_local const ActiveAdapters* current = nullptr;
}  // namespace

const ActiveAdapters* active_adapters() { return current; }

ScopedAdapters::ScopedAdapters(const ActiveAdapters* adapters) : previous_(current) {
  current = adapters;
}

ScopedAdapters::~ScopedAdapters() { current = previous_; }

at::Tensor add_lora(const void* layer, const at::Tensor& input, const at::Tensor& base,
                    int64_t out_begin, int64_t out_count, int64_t in_count) {
  if (!current) return base;
  const auto it = current->branches.find(layer);
  if (it == current->branches.end()) return base;
  const auto& b = it->second;
  const auto down = in_count < 0 ? b.down : b.down.narrow(1, 0, in_count);
  const auto up = out_count < 0 ? b.up : b.up.narrow(0, out_begin, out_count);
  if (!b.conv) return base + at::linear(at::linear(input, down), up);
  const auto hidden = at::conv2d(input, down, {}, b.stride, b.padding, b.dilation);
  return base + at::conv2d(hidden, up);
}

}  // namespace ldcp::lora
