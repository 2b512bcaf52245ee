#pragma once
// Step progress for long runs: a redrawn bar (step, it/s, ETA) on a terminal, plain lines
// otherwise (logs, CI, pipes).

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <optional>
#include <string>

namespace ldcp::cli {

class Progress {
 public:
  Progress(std::string label, int64_t total, std::FILE* out = stderr);
  // `elapsed_seconds`: the time the `done` steps took by the clock of whoever ran them (a
  // server's progress events carry it); without it, the time since construction. The rate
  // is done / elapsed; with neither a clock nor a step to go on it prints "?" (a bar made on
  // the first event would otherwise divide one step by microseconds).
  void update(int64_t done, const std::string& detail = {},
              std::optional<double> elapsed_seconds = std::nullopt);
  // The total once it is known better (a sampler may run more timesteps than steps asked for).
  void set_total(int64_t total) { total_ = total; }
  void finish();

 private:
  std::string label_;
  int64_t total_;
  std::FILE* out_;
  bool terminal_;
  std::chrono::steady_clock::time_point start_;
  bool finished_ = false;
};

// "1.23 it/s" for a rate above one step a second, else "4.56 s/it" (an SD1.5 step on a CPU
// takes seconds: "0.18 it/s" reads worse); "? it/s" when there is no rate yet.
std::string format_rate(std::optional<double> steps_per_second);

}  // namespace ldcp::cli
