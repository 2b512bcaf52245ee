#pragma once
// Step progress for long runs: a redrawn bar (step, it/s, ETA) on a terminal, plain lines
// otherwise (logs, CI, pipes).

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace ldcp::tools {

class Progress {
 public:
  Progress(std::string label, int64_t total, std::FILE* out = stderr);
  void update(int64_t done, const std::string& detail = {});
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

}  // namespace ldcp::tools
