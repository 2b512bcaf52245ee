#pragma once
// A watchdog for gRPC's own listeners. In gRPC 1.51 (Debian 12's) a listener that fails accept4()
// with anything but EINTR or EAGAIN ends for good (tcp_server_posix.cc: "Failed accept4: ...",
// then the port's read callback is never armed again): one EMFILE, when the process runs out of
// file descriptors under many connections, leaves a port that the kernel still completes
// handshakes on but that gRPC never serves again (tests/server/grpc_emfile_test.py shows it;
// gRPC 1.56 retries instead). The listener cannot be restarted inside a running grpc::Server,
// so the watchdog reports it and the server drains and exits with kListenerStoppedExit for its
// supervisor (Kubernetes, Docker's restart policy) to start it again.
//
// gRPC says so only in its log, so this routes gRPC's log lines (gpr_log) through the server's
// log (logging.h) and watches them. GRPC_VERBOSITY=NONE would hide the line; the default (ERROR)
// keeps it.

#include <functional>
#include <string>

namespace ldcp::server {

// The exit status after a listener stopped (EX_TEMPFAIL of sysexits.h: try again).
inline constexpr int kListenerStoppedExit = 75;

// Installs the log function; `on_stopped(message)` runs on the gRPC thread that logged it, once,
// and must only hand the work on (post to an io_context): gRPC may hold its locks there.
void watch_grpc_listeners(std::function<void(const std::string&)> on_stopped);

// Whether a gRPC log message says that a listener stopped accepting (for the tests).
bool is_listener_stopped_message(const std::string& message);

}  // namespace ldcp::server
