#pragma once
// Logging through spdlog: text or JSON lines on stderr, and the one line logged per request.
// spdlog (Debian's, built on the system fmt) is only included by logging.cpp: libtorch ships
// its own, newer fmt headers, so translation units that see torch's include path must not
// include spdlog. Everything else logs through the functions below.

#include <cstdint>
#include <string>

namespace ldcp::server {

// format: "text" or "json"; level: spdlog's names (trace ... off).
void setup_logging(const std::string& level, const std::string& format);

struct RequestLogLine {
  std::string id, method, status, message;
  int64_t width = 0, height = 0, steps = 0, images = 0, batch = 0;
  double level = 0, pruning_ratio = 0;
  double queue_s = 0, text_encoding_s = 0, denoising_s = 0, decoding_s = 0, total_s = 0;
  int64_t peak_memory_bytes = 0;
  bool retried_after_oom = false;
  std::string level_reason;  // AUTO: memory, throughput, request_cap or none; else empty
  // With --auth-tokens-file: the caller's name, or "unauthenticated"; else empty.
  std::string client;
};

void log_request(const RequestLogLine& line);

void log_debug(const std::string& message);
void log_info(const std::string& message);
void log_warn(const std::string& message);
void log_error(const std::string& message);

// printf-style formatting into a std::string.
std::string strf(const char* format, ...) __attribute__((format(printf, 1, 2)));

}  // namespace ldcp::server
