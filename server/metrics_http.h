#pragma once
// A minimal HTTP endpoint for Prometheus scrapes: GET /metrics returns the registry in the text
// exposition format; any other path 404. Runs on its own thread (Boost.Asio). Used instead of
// prometheus-cpp's civetweb Exposer, whose start-up fails inside this process (civetweb
// returns a null context after binding).

#include <memory>
#include <string>
#include <thread>

#include <prometheus/registry.h>

namespace ldcp::server {

class MetricsHttpServer {
 public:
  // address: "host:port" (port 0: any free port). Throws std::runtime_error when it cannot bind.
  MetricsHttpServer(const std::string& address, std::shared_ptr<prometheus::Registry> registry);
  ~MetricsHttpServer();
  int port() const { return port_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
};

}  // namespace ldcp::server
