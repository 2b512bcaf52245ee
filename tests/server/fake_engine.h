#pragma once
// A fake engine for the scheduler's unit tests: memory cost per batch and step timing under test
// control, measured memory = external (test-set) + the cost of the running batches.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>

#include "server/engine.h"

namespace ldcp::server::testing {

class FakeEngine : public Engine {
 public:
  // Bytes a batch of `images` images at `level` peaks at, above the weights.
  std::function<int64_t(int64_t images, double level)> cost = [](int64_t n, double l) {
    return static_cast<int64_t>(static_cast<double>(n) * 4000.0 * (1.0 - l));
  };
  std::chrono::milliseconds step_time{2};
  // When set: the step time at a level (pruning makes steps faster), instead of step_time.
  std::function<std::chrono::milliseconds(double level)> step_time_at;
  std::atomic<bool> hold{false};            // running batches wait before each step while set
  std::atomic<int64_t> external{1000};      // measured bytes not from batches (weights, others)
  std::atomic<double> oom_below_level{-1};  // run() throws OutOfMemory below this level
  // When set, run() throws std::runtime_error with this message (e.g. one with a backtrace).
  std::string fail_with;
  // Peaks as the real meter reports them with --workers > 1: the process's peak over the run
  // (every batch running at the time), not this batch's own.
  bool process_wide_peaks = false;

  struct Run {
    std::vector<pipelines::GenerationParams> requests;
    double level = 0;
  };
  std::vector<Run> runs() const {
    std::lock_guard lock(mu_);
    return runs_;
  }
  std::atomic<int> started{0};

  std::string model_name() const override { return "fake"; }
  int64_t native_resolution() const override { return 64; }
  void validate(const pipelines::GenerationParams& p) const override {
    if (p.steps < 1) throw std::invalid_argument("steps must be >= 1");
  }
  bool batchable(const pipelines::GenerationParams& a,
                 const pipelines::GenerationParams& b) const override {
    return a.width == b.width && a.height == b.height && a.steps == b.steps &&
           a.sampler == b.sampler && a.pruning == b.pruning;
  }

  std::vector<pipelines::GenerationResult> run(
      const std::vector<pipelines::GenerationParams>& requests,
      const pipelines::StableDiffusionPipeline::BatchStepCallback& callback) override {
    const double level = requests[0].pruning.max_level();
    int64_t images = 0;
    for (const auto& r : requests) images += r.num_images;
    {
      std::lock_guard lock(mu_);
      runs_.push_back({requests, level});
    }
    ++started;
    if (level < oom_below_level) throw OutOfMemory("fake: out of memory");
    if (!fail_with.empty()) throw std::runtime_error(fail_with);
    const int64_t bytes = cost(images, level);
    int64_t peak_running = (running_ += bytes);
    std::vector<pipelines::GenerationResult> out(requests.size());
    std::vector<bool> active(requests.size(), true);
    const int64_t steps = requests[0].steps;
    at::Tensor latents = at::zeros({1, 4, 8, 8});
    for (int64_t s = 0; s < steps; ++s) {
      while (hold) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      std::this_thread::sleep_for(step_time_at ? step_time_at(level) : step_time);
      peak_running = std::max<int64_t>(peak_running, running_);
      for (size_t i = 0; i < requests.size(); ++i) {
        if (!active[i]) continue;
        const double t = 1000.0 - static_cast<double>(s);
        out[i].step_levels.push_back(requests[i].pruning.level_at(s, t));
        out[i].timesteps.push_back(t);
        pipelines::StepInfo info{s, steps, t, &latents};
        if (callback && !callback(i, info)) {
          active[i] = false;
          out[i].stopped = true;
        }
      }
    }
    running_ -= bytes;
    for (size_t i = 0; i < requests.size(); ++i) {
      if (!active[i]) continue;
      out[i].images = at::full({requests[i].num_images, 8, 8, 3}, 0.5);
      const int64_t measured = process_wide_peaks ? peak_running : bytes;
      out[i].peak_memory_bytes = external + measured;
      out[i].peak_memory_above_weights_bytes = measured;
      out[i].pruned_flops_fraction = level;
    }
    return out;
  }

  runtime::MemoryStats memory() const override {
    runtime::MemoryStats s;
    s.allocated_bytes = external + running_;
    s.reserved_bytes = s.allocated_bytes;
    return s;
  }

 private:
  mutable std::mutex mu_;
  std::vector<Run> runs_;
  std::atomic<int64_t> running_{0};
};

}  // namespace ldcp::server::testing
