#include "server/metrics_http.h"

#include <stdexcept>

#include <prometheus/text_serializer.h>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/streambuf.hpp>
#include <boost/asio/write.hpp>

namespace ldcp::server {

namespace asio = boost::asio;
using asio::ip::tcp;

struct MetricsHttpServer::Impl {
  asio::io_context io;
  tcp::acceptor acceptor{io};
  std::shared_ptr<prometheus::Registry> registry;
  std::thread thread;

  void accept() {
    acceptor.async_accept([this](const boost::system::error_code& ec, tcp::socket socket) {
      if (ec) return;  // closed
      serve(std::make_shared<tcp::socket>(std::move(socket)));
      accept();
    });
  }

  void serve(std::shared_ptr<tcp::socket> socket) {
    auto buf = std::make_shared<asio::streambuf>(64 * 1024);
    asio::async_read_until(
        *socket, *buf, "\r\n\r\n",
        [this, socket, buf](const boost::system::error_code& ec, size_t) {
          if (ec) return;
          std::istream in(buf.get());
          std::string method, target;
          in >> method >> target;
          const auto q = target.find('?');
          if (q != std::string::npos) target.resize(q);
          auto response = std::make_shared<std::string>();
          if (method == "GET" && (target == "/metrics" || target == "/metrics/")) {
            const std::string body = prometheus::TextSerializer().Serialize(registry->Collect());
            *response =
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; "
                "charset=utf-8\r\nContent-Length: " +
                std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
          } else {
            const std::string body = "not found; metrics are at /metrics\n";
            *response = "HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: " +
                        std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
          }
          asio::async_write(*socket, asio::buffer(*response),
                            [socket, response](const boost::system::error_code&, size_t) {
                              boost::system::error_code ignored;
                              socket->shutdown(tcp::socket::shutdown_both, ignored);
                            });
        });
  }
};

MetricsHttpServer::MetricsHttpServer(const std::string& address,
                                     std::shared_ptr<prometheus::Registry> registry)
    : impl_(std::make_unique<Impl>()) {
  impl_->registry = std::move(registry);
  const auto colon = address.rfind(':');
  if (colon == std::string::npos) {
    throw std::runtime_error("--metrics-listen: expected host:port, got '" + address + "'");
  }
  std::string host = address.substr(0, colon);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  if (host.empty()) host = "0.0.0.0";
  try {
    tcp::resolver resolver(impl_->io);
    const auto endpoints = resolver.resolve(host, address.substr(colon + 1));
    const tcp::endpoint endpoint = *endpoints.begin();
    impl_->acceptor.open(endpoint.protocol());
    impl_->acceptor.set_option(tcp::acceptor::reuse_address(true));
    impl_->acceptor.bind(endpoint);
    impl_->acceptor.listen();
    port_ = impl_->acceptor.local_endpoint().port();
  } catch (const boost::system::system_error& e) {
    throw std::runtime_error("--metrics-listen: cannot listen on " + address + ": " + e.what());
  }
  impl_->accept();
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

MetricsHttpServer::~MetricsHttpServer() {
  asio::post(impl_->io, [this] {
    boost::system::error_code ignored;
    impl_->acceptor.close(ignored);
    impl_->io.stop();
  });
  impl_->thread.join();
}

}  // namespace ldcp::server
