#include "server/grpc_listener_watch.h"

#include <atomic>
#include <mutex>

#include <grpc/support/log.h>

#include "server/logging.h"

namespace ldcp::server {
namespace {

std::mutex hook_mu;
std::function<void(const std::string&)> hook;  // guarded by hook_mu
std::atomic<bool> reported{false};

void log_from_grpc(gpr_log_func_args* args) {
  std::string message = args->message ? args->message : "";
  const std::string line = std::string("grpc: ") + (args->file ? args->file : "?") + ":" +
                           std::to_string(args->line) + " " + message;
  switch (args->severity) {
    case GPR_LOG_SEVERITY_DEBUG:
      log_debug(line);
      break;
    case GPR_LOG_SEVERITY_INFO:
      log_info(line);
      break;
    default:
      log_error(line);
  }
  if (is_listener_stopped_message(message) && !reported.exchange(true)) {
    std::function<void(const std::string&)> f;
    {
      std::lock_guard lock(hook_mu);
      f = hook;
    }
    if (f) f(message);
  }
}

}  // namespace

bool is_listener_stopped_message(const std::string& message) {
  // 1.51: "Failed accept4: Too many open files"; later versions: "Closing acceptor. Failed
  // accept4: ..." (they retry EMFILE themselves and log "File descriptor limit reached").
  return message.find("Failed accept4") != std::string::npos;
}

void watch_grpc_listeners(std::function<void(const std::string&)> on_stopped) {
  {
    std::lock_guard lock(hook_mu);
    hook = std::move(on_stopped);
  }
  gpr_set_log_function(log_from_grpc);
}

}  // namespace ldcp::server
