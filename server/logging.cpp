#include "server/logging.h"

#include <algorithm>
#include <cctype>
#include <cstdarg>
#include <cstdio>
#include <memory>

#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <nlohmann/json.hpp>

namespace ldcp::server {
namespace {

bool g_json = false;
constexpr size_t kMaxLoggedIdBytes = 128;
constexpr size_t kMaxLoggedMessageBytes = 1024;
std::shared_ptr<spdlog::logger> g_requests;

// %* : the message as the body of a JSON string.
class JsonMessageFlag : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg& msg, const std::tm&,
              spdlog::memory_buf_t& dest) override {
    const std::string quoted = nlohmann::json(std::string(msg.payload.data(), msg.payload.size()))
                                   .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    dest.append(quoted.data() + 1, quoted.data() + quoted.size() - 1);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<JsonMessageFlag>();
  }
};

// A string as a JSON string (quotes included): control characters, non-ASCII as \uXXXX, invalid
// UTF-8 replaced (nlohmann would throw on it).
std::string json_quoted(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', true, nlohmann::json::error_handler_t::replace);
}

// At most `max` bytes of `s`, cut at a UTF-8 character boundary, marked when cut.
std::string bounded(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  return s.substr(0, n) + "...(" + std::to_string(s.size()) + " bytes)";
}

// A request id in a text line: bare when it is a plain token, JSON-quoted otherwise, so that
// spaces, '=' or control characters in it cannot forge other fields.
std::string text_id(const std::string& id) {
  const bool plain = !id.empty() && id.size() <= kMaxLoggedIdBytes &&
                     std::all_of(id.begin(), id.end(), [](char ch) {
                       return std::isalnum(static_cast<unsigned char>(ch)) || ch == '.' ||
                              ch == '_' || ch == ':' || ch == '/' || ch == '-';
                     });
  return plain ? id : json_quoted(bounded(id, kMaxLoggedIdBytes));
}

}  // namespace

void setup_logging(const std::string& level, const std::string& format) {
  g_json = format == "json";
  // One sink each: a sink owns its formatter. The stderr sinks share spdlog's console mutex, so
  // lines do not interleave.
  auto main =
      std::make_shared<spdlog::logger>("ldcp", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  g_requests = std::make_shared<spdlog::logger>("request",
                                                std::make_shared<spdlog::sinks::stderr_sink_mt>());
  if (g_json) {
    auto f = std::make_unique<spdlog::pattern_formatter>();
    f->add_flag<JsonMessageFlag>('*').set_pattern(
        R"({"time":"%Y-%m-%dT%H:%M:%S.%e%z","level":"%l","msg":"%*"})");
    main->set_formatter(std::move(f));
    // Request lines are JSON objects already.
    g_requests->set_pattern("%v");
  } else {
    main->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ %v");
    g_requests->set_pattern("%Y-%m-%d %H:%M:%S.%e %^%l%$ request %v");
  }
  const auto lvl = spdlog::level::from_str(level);
  main->set_level(lvl);
  g_requests->set_level(lvl);
  main->flush_on(spdlog::level::trace);
  g_requests->flush_on(spdlog::level::trace);
  spdlog::set_default_logger(main);
}

void log_request(const RequestLogLine& l) {
  if (!g_requests) setup_logging("info", "text");
  const auto severity = l.status == "OK" ? spdlog::level::info : spdlog::level::warn;
  if (g_json) {
    nlohmann::json j = {{"event", "request"},
                        {"level", spdlog::level::to_string_view(severity).data()},
                        {"id", bounded(l.id, kMaxLoggedIdBytes)},
                        {"method", l.method},
                        {"status", l.status},
                        {"width", l.width},
                        {"height", l.height},
                        {"steps", l.steps},
                        {"images", l.images},
                        {"batch", l.batch},
                        {"pruning_level", l.level},
                        {"pruning_ratio", l.pruning_ratio},
                        {"queue_seconds", l.queue_s},
                        {"text_encoding_seconds", l.text_encoding_s},
                        {"denoising_seconds", l.denoising_s},
                        {"decoding_seconds", l.decoding_s},
                        {"total_seconds", l.total_s},
                        {"peak_memory_bytes", l.peak_memory_bytes},
                        {"oom_retry", l.retried_after_oom}};
    if (!l.level_reason.empty()) j["level_reason"] = l.level_reason;
    if (!l.client.empty()) j["client"] = l.client;
    if (!l.message.empty()) j["message"] = bounded(l.message, kMaxLoggedMessageBytes);
    g_requests->log(severity, "{}",
                    j.dump(-1, ' ', true, nlohmann::json::error_handler_t::replace));
    return;
  }
  g_requests->log(
      severity,
      "id={} method={} status={} size={}x{} steps={} images={} batch={} level={:.2f} "
      "pruning_ratio={:.3f} queue_s={:.3f} encode_s={:.3f} denoise_s={:.3f} "
      "decode_s={:.3f} total_s={:.3f} peak_memory_bytes={}{}{}{}{}",
      text_id(l.id), l.method, l.status, l.width, l.height, l.steps, l.images, l.batch, l.level,
      l.pruning_ratio, l.queue_s, l.text_encoding_s, l.denoising_s, l.decoding_s, l.total_s,
      l.peak_memory_bytes, l.level_reason.empty() ? "" : " level_reason=" + l.level_reason,
      l.retried_after_oom ? " oom_retry=1" : "", l.client.empty() ? "" : " client=" + l.client,
      l.message.empty() ? ""
                        : " message=" + json_quoted(bounded(l.message, kMaxLoggedMessageBytes)));
}

void log_debug(const std::string& m) { spdlog::debug("{}", m); }
void log_info(const std::string& m) { spdlog::info("{}", m); }
void log_warn(const std::string& m) { spdlog::warn("{}", m); }
void log_error(const std::string& m) { spdlog::error("{}", m); }

std::string strf(const char* format, ...) {
  va_list args;
  va_start(args, format);
  va_list copy;
  va_copy(copy, args);
  const int n = std::vsnprintf(nullptr, 0, format, copy);
  va_end(copy);
  std::string out(n > 0 ? static_cast<size_t>(n) : 0, '\0');
  if (n > 0) std::vsnprintf(out.data(), out.size() + 1, format, args);
  va_end(args);
  return out;
}

}  // namespace ldcp::server
