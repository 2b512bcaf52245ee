#pragma once
// Counts the multiply-accumulates of the matrix work that actually runs on the calling thread
// (convolutions, matrix products, attention), from the shapes of each operator call as the
// dispatcher sees it. Element-wise work (norms, activations) is not counted, as is usual for
// FLOP figures of diffusion U-Nets. FLOPs = 2 x MACs.

#include <cstdint>
#include <map>
#include <memory>
#include <string>

namespace ldcp::runtime {

class FlopCounter {
 public:
  FlopCounter();  // starts counting on this thread
  ~FlopCounter();  // stops
  FlopCounter(const FlopCounter&) = delete;
  FlopCounter& operator=(const FlopCounter&) = delete;

  int64_t macs() const;
  int64_t flops() const { return 2 * macs(); }
  // MACs per counted operator name ("aten::convolution", "aten::addmm", ...).
  std::map<std::string, int64_t> macs_by_operator() const;
  void reset();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ldcp::runtime
