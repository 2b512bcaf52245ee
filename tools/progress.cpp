#include "tools/progress.h"

#include <cmath>

#include <unistd.h>

namespace ldcp::tools {

Progress::Progress(std::string label, int64_t total, std::FILE* out)
    : label_(std::move(label)),
      total_(total),
      out_(out),
      terminal_(::isatty(::fileno(out)) != 0),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t done, const std::string& detail) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - done) / rate : 0.0;
  if (terminal_) {
    constexpr int kWidth = 30;
    const int filled = total_ > 0 ? static_cast<int>(kWidth * done / total_) : kWidth;
    std::string bar(filled, '#');
    bar.resize(kWidth, '.');
    std::fprintf(out_, "\r%s [%s] %lld/%lld %.2f it/s ETA %.0fs %s\033[K", label_.c_str(),
                 bar.c_str(), static_cast<long long>(done), static_cast<long long>(total_), rate,
                 std::ceil(eta), detail.c_str());
  } else {
    std::fprintf(out_, "%s %lld/%lld %.2f it/s ETA %.0fs %s\n", label_.c_str(),
                 static_cast<long long>(done), static_cast<long long>(total_), rate, std::ceil(eta),
                 detail.c_str());
  }
  std::fflush(out_);
}

void Progress::finish() {
  if (finished_) return;
  finished_ = true;
  if (terminal_) std::fputc('\n', out_);
  std::fflush(out_);
}

}  // namespace ldcp::tools
