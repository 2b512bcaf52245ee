#pragma once
// The LoRA side branch at a layer's call site: y = base(x) + up(down(x)), the scale folded into
// `up`. The networks (model/models, model/clip) call add_lora() after each Linear and Conv2d;
// it adds the branch of the adapters active on the calling thread, and returns `base` as it is
// when none are (one thread-local read). Adapters are per batch and per thread, so requests
// with other LoRAs (or none), on other threads, never see them and the base weights are never
// written. Light on purpose: included by the layers' sources.

#include <cstdint>
#include <unordered_map>
#include <vector>

#include <ATen/core/Tensor.h>

namespace ldcp::lora {

// One layer's LoRA factors, several files' concatenated along the rank (sum_i s_i up_i down_i
// = [s_1 up_1 .. s_n up_n] [down_1; ..; down_n]), in the layer's current channel order (the
// pruning gates' reordering applied to up's rows and down's columns), dtype and device.
struct LoraBranch {
  at::Tensor down;  // [rank, in] or, for a convolution, [rank, in, kh, kw]
  at::Tensor up;    // [out, rank] or [out, rank, 1, 1], times the scale
  bool conv = false;
  std::vector<int64_t> stride{1, 1}, padding{0, 0}, dilation{1, 1};  // the layer's (conv)
};

// The branches of one batch, by layer (the LinearImpl* or Conv2dImpl* the call site holds).
struct ActiveAdapters {
  std::unordered_map<const void*, LoraBranch> branches;
};

// The adapters of the calling thread's forward passes (nullptr: none).
const ActiveAdapters* active_adapters();

// Makes `adapters` the calling thread's for its lifetime (nullptr: none), then restores.
class ScopedAdapters {
 public:
  explicit ScopedAdapters(const ActiveAdapters* adapters);
  ~ScopedAdapters();
  ScopedAdapters(const ScopedAdapters&) = delete;
  ScopedAdapters& operator=(const ScopedAdapters&) = delete;

 private:
  const ActiveAdapters* previous_;
};

// `base`, the output of `layer` on `input`, plus the active branch of `layer` if there is one.
// A pruned layer computes only some of its channels: output rows [out_begin, out_begin +
// out_count) (out_count < 0: all) from its first `in_count` input channels (< 0: all); the
// branch then uses the same rows of up and columns of down.
at::Tensor add_lora(const void* layer, const at::Tensor& input, const at::Tensor& base,
                    int64_t out_begin = 0, int64_t out_count = -1, int64_t in_count = -1);

}  // namespace ldcp::lora
