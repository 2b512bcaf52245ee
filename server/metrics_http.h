#pragma once
// The HTTP endpoint for Prometheus scrapes, on Boost.Beast (one thread of its own): GET or HEAD
// /metrics returns the registry in the text exposition format, other paths 404, other methods
// 405. Hardened for a port anyone on the network may reach:
// - at most `max_connections` connections; at the cap a new connection evicts the oldest one
//   that is still waiting for its request (idle or slow), so idle sockets cannot lock scrapes
//   out; when every connection is busy writing, accepting pauses until one ends;
// - each request's headers must arrive within `timeout` (and each response be written within
//   it); keep-alive connections idle longer are closed;
// - headers larger than `max_header_bytes`: 431 and the connection is closed; request bodies
//   are refused (GET needs none);
// - accept errors never end the accept loop: out of file descriptors (EMFILE, ENFILE) or memory
//   it backs off (100 ms) and retries, so /metrics answers again once descriptors are free;
// - optional HTTP basic authentication (401 without valid credentials, metrics_basic_auth.h);
// - optional HTTPS (metrics_tls.h): the TLS handshake, too, must finish within `timeout`;
// - gzip for scrapers that accept it (http_gzip.h): a scrape is several times smaller;
// - the basic-auth file and the TLS certificate and key are re-read every `refresh`
//   (watched_files.h): new users and a new certificate apply to new requests and connections; a
//   file that is unreadable or does not parse (a certificate whose key is not yet written) is
//   logged and the previous users or certificate stay.
//
// Beast rather than prometheus-cpp's civetweb Exposer, which cannot start in this process:
// Debian's civetweb creates its threads with a fixed 100 KiB stack (USE_STACK_SIZE=102400,
// pthread_attr_setstacksize), and glibc refuses a stack smaller than the static TLS of the loaded
// libraries, which libtorch and its CUDA libraries raise to about 180 KiB (libcublasLt alone
// 92 KiB); pthread_attr_setstacksize fails with EINVAL, no thread starts and mg_start returns
// null ("null context when constructing CivetServer"). A standalone program without libtorch
// starts the same Exposer fine. civetweb's stack size is fixed at its compile time, so the fix is
// not to use it; Beast's limits above are this file's code, tested in
// tests/server/metrics_endpoint_test.py.

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include <prometheus/registry.h>

namespace ldcp::server {

struct MetricsHttpOptions {
  int64_t max_connections = 32;
  std::chrono::milliseconds timeout{10000};
  int64_t max_header_bytes = 8192;
  std::string basic_auth_file;               // empty: no authentication
  std::string tls_cert, tls_key;             // PEM; both empty: plain HTTP
  bool gzip = true;                          // when the request's Accept-Encoding allows it
  std::chrono::milliseconds refresh{10000};  // 0: the files are read at start-up only
};

class MetricsHttpServer {
 public:
  // address: "host:port" (port 0: any free port). Throws std::runtime_error naming the option
  // when it cannot bind or the basic-auth or TLS files cannot be read or do not parse.
  MetricsHttpServer(const std::string& address, std::shared_ptr<prometheus::Registry> registry,
                    MetricsHttpOptions options = {});
  ~MetricsHttpServer();
  int port() const { return port_; }

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace ldcp::server
