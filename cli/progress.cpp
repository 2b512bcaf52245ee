#include "cli/progress.h"

#include <cmath>

#include <unistd.h>

namespace ldcp::cli {

std::string format_rate(std::optional<double> steps_per_second) {
  char text[32];
  if (!steps_per_second || !std::isfinite(*steps_per_second) || *steps_per_second <= 0) {
    return "? it/s";
  }
  if (*steps_per_second >= 1.0) {
    std::snprintf(text, sizeof text, "%.2f it/s", *steps_per_second);
  } else {
    std::snprintf(text, sizeof text, "%.2f s/it", 1.0 / *steps_per_second);
  }
  return text;
}

Progress::Progress(std::string label, int64_t total, std::FILE* out)
    : label_(std::move(label)),
      total_(total),
      out_(out),
      terminal_(::isatty(::fileno(out)) != 0),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t done, const std::string& detail,
                      std::optional<double> elapsed_seconds) {
  const double elapsed = elapsed_seconds.value_or(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  std::optional<double> rate;
  if (done > 0 && elapsed > 0) rate = static_cast<double>(done) / elapsed;
  std::string eta = "?";
  if (rate) eta = std::to_string(static_cast<long long>(std::ceil((total_ - done) / *rate))) + "s";
  std::string tail = format_rate(rate) + " ETA " + eta;
  if (!detail.empty()) tail += " " + detail;
  if (terminal_) {
    constexpr int kWidth = 30;
    const int filled = total_ > 0 ? static_cast<int>(kWidth * done / total_) : kWidth;
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(out_, "\r%s [%s] %lld/%lld %s\033[K", label_.c_str(), bar.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total_), tail.c_str());
  } else {
    std::fprintf(out_, "%s %lld/%lld %s\n", label_.c_str(), static_cast<long long>(done),
                 static_cast<long long>(total_), tail.c_str());
  }
  std::fflush(out_);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (terminal_) std::fputc('\n', out_);
  std::fflush(out_);
}

}  // namespace ldcp::cli
