#include "server/metrics_http.h"

#include <cerrno>
#include <map>
#include <optional>
#include <stdexcept>
#include <utility>
#include <vector>

#include <prometheus/text_serializer.h>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "server/http_gzip.h"
#include "server/logging.h"
#include "server/metrics_basic_auth.h"
#include "server/metrics_tls.h"
#include "server/watched_files.h"

namespace ldcp::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace ssl = asio::ssl;
using asio::ip::tcp;

struct MetricsHttpServer::Impl : std::enable_shared_from_this<Impl> {
  class Session;
  using Clock = std::chrono::steady_clock;

  asio::io_context io;
  tcp::acceptor acceptor{io};
  asio::steady_timer backoff{io};
  asio::steady_timer refresh_timer{io};
  std::shared_ptr<prometheus::Registry> registry;
  MetricsHttpOptions options;
  // Read and replaced on the io thread only (refresh()); a session keeps the context it was
  // made with, so a rotation never pulls the certificate from under an open connection.
  std::shared_ptr<const BasicAuthUsers> users;
  std::shared_ptr<ssl::context> tls;  // null: plain HTTP
  std::optional<WatchedFiles> users_file, tls_files;
  std::map<uint64_t, std::weak_ptr<Session>> sessions;  // by age: the oldest first
  uint64_t next_id = 0;
  bool accepting = false;  // an async_accept or a back-off is pending
  bool stopped = false;
  Clock::time_point last_warning{};
  uint64_t suppressed_warnings = 0;

  class Session : public std::enable_shared_from_this<Session> {
   public:
    Session(std::shared_ptr<Impl> owner, tcp::socket socket, uint64_t id)
        : owner_(std::move(owner)), tls_context_(owner_->tls), id_(id) {
      if (tls_context_) {
        tls_.emplace(std::move(socket), *tls_context_);
      } else {
        plain_.emplace(std::move(socket));
      }
    }

    void start() {
      // Until the handshake is done the connection counts as waiting for its request: evictable.
      waiting_ = true;
      waiting_since_ = Clock::now();
      if (!tls_) return read();
      tcp().expires_after(owner_->options.timeout);
      tls_->async_handshake(ssl::stream_base::server,
                            [self = shared_from_this()](beast::error_code ec) {
                              // Not TLS, an untrusted client, or too slow: nothing to answer.
                              if (ec) return self->close();
                              self->read();
                            });
    }
    bool waiting() const { return waiting_ && !closed_; }
    Clock::time_point waiting_since() const { return waiting_since_; }
    bool closed() const { return closed_; }
    void close() {
      // No TLS close_notify: responses carry Content-Length, so a truncation is detectable.
      if (closed_) return;
      closed_ = true;
      beast::error_code ignored;
      tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
      tcp().close();
    }
    ~Session() { owner_->session_ended(id_); }

   private:
    beast::tcp_stream& tcp() { return tls_ ? beast::get_lowest_layer(*tls_) : *plain_; }
    template <class F>
    void with_stream(F&& f) {
      if (tls_) {
        f(*tls_);
      } else {
        f(*plain_);
      }
    }

    void read() {
      waiting_ = true;
      waiting_since_ = Clock::now();
      parser_.emplace();
      parser_->header_limit(static_cast<uint32_t>(owner_->options.max_header_bytes));
      parser_->body_limit(0);
      tcp().expires_after(owner_->options.timeout);
      with_stream([this](auto& stream) {
        http::async_read(
            stream, buffer_, *parser_,
            [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
      });
    }

    void on_read(beast::error_code ec) {
      waiting_ = false;
      if (ec == http::error::header_limit) {
        return respond(http::status::request_header_fields_too_large, "request headers too large\n",
                       false);
      }
      if (ec == http::error::body_limit) {
        return respond(http::status::payload_too_large, "request bodies are not accepted\n", false);
      }
      if (ec) {
        // Not HTTP: 400. Closed by the client, timed out or evicted: just close.
        const auto& http_errors = beast::error_code(http::error::end_of_stream).category();
        if (!closed_ && ec.category() == http_errors && ec != http::error::end_of_stream &&
            ec != http::error::partial_message) {
          return respond(http::status::bad_request, "bad request\n", false);
        }
        return close();
      }
      const auto& req = parser_->get();
      const bool keep_alive = req.keep_alive();
      std::string target(req.target());
      const auto q = target.find('?');
      if (q != std::string::npos) target.resize(q);
      if (owner_->users) {
        const auto auth = req.find(http::field::authorization);
        if (auth == req.end() || !basic_auth_ok(*owner_->users, std::string(auth->value()))) {
          return respond(http::status::unauthorized, "unauthorized\n", keep_alive,
                         {{http::field::www_authenticate, "Basic realm=\"ldcp metrics\""}});
        }
      }
      if (req.method() != http::verb::get && req.method() != http::verb::head) {
        return respond(http::status::method_not_allowed, "only GET and HEAD\n", keep_alive);
      }
      if (target != "/metrics" && target != "/metrics/") {
        return respond(http::status::not_found, "not found; metrics are at /metrics\n", keep_alive);
      }
      std::string body = prometheus::TextSerializer().Serialize(owner_->registry->Collect());
      std::vector<std::pair<http::field, const char*>> headers;
      if (owner_->options.gzip) {
        // Caches between a scraper and this port must not hand a gzip body to another client.
        headers.emplace_back(http::field::vary, "Accept-Encoding");
        const auto accept = req.find(http::field::accept_encoding);
        if (accept != req.end() && accepts_gzip({accept->value().data(), accept->value().size()})) {
          body = gzip_compress(body);
          headers.emplace_back(http::field::content_encoding, "gzip");
        }
      }
      respond(http::status::ok, std::move(body), keep_alive, headers,
              req.method() == http::verb::head, "text/plain; version=0.0.4; charset=utf-8");
    }

    void respond(http::status status, std::string body, bool keep_alive,
                 const std::vector<std::pair<http::field, const char*>>& headers = {},
                 bool head = false, const char* type = "text/plain; charset=utf-8") {
      response_ = {};
      response_.result(status);
      response_.version(11);
      response_.set(http::field::content_type, type);
      for (const auto& [field, value] : headers) response_.set(field, value);
      response_.body() = std::move(body);
      response_.prepare_payload();
      if (head) response_.body().clear();
      response_.keep_alive(keep_alive);
      tcp().expires_after(owner_->options.timeout);
      with_stream([this, keep_alive](auto& stream) {
        http::async_write(stream, response_,
                          [self = shared_from_this(), keep_alive](beast::error_code ec, size_t) {
                            if (ec || !keep_alive) return self->close();
                            self->read();
                          });
      });
    }

    std::shared_ptr<Impl> owner_;
    std::shared_ptr<ssl::context> tls_context_;  // outlives tls_, which refers to it
    std::optional<beast::tcp_stream> plain_;
    std::optional<beast::ssl_stream<beast::tcp_stream>> tls_;
    beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::empty_body>> parser_;
    http::response<http::string_body> response_;
    uint64_t id_;
    bool waiting_ = false;
    bool closed_ = false;
    Clock::time_point waiting_since_{};
  };

  void warn_rate_limited(const std::string& message) {
    const auto now = Clock::now();
    if (now - last_warning < std::chrono::seconds(10)) {
      ++suppressed_warnings;
      return;
    }
    log_warn("metrics endpoint: " + message +
             (suppressed_warnings ? strf(" (%llu more since the last warning)",
                                         static_cast<unsigned long long>(suppressed_warnings))
                                  : std::string()));
    last_warning = now;
    suppressed_warnings = 0;
  }

  int64_t open_sessions() const {
    int64_t n = 0;
    for (const auto& [id, weak] : sessions) {
      if (auto s = weak.lock(); s && !s->closed()) ++n;
    }
    return n;
  }

  void accept() {
    if (stopped || accepting) return;
    if (open_sessions() >= options.max_connections && !evict_one()) {
      // Every connection is busy writing (session_ended() resumes accepting) or has waited less
      // than kMinEvictAge (retry when it has).
      if (young_waiting) {
        accepting = true;
        backoff.expires_after(kMinEvictAge);
        backoff.async_wait([self = shared_from_this()](beast::error_code) {
          self->accepting = false;
          self->accept();
        });
      }
      return;
    }
    accepting = true;
    acceptor.async_accept([self = shared_from_this()](beast::error_code ec, tcp::socket socket) {
      self->accepting = false;
      self->on_accept(ec, std::move(socket));
    });
  }

  void on_accept(beast::error_code ec, tcp::socket socket) {
    if (stopped || ec == asio::error::operation_aborted) return;
    if (ec) {
      // Never stop accepting. Out of descriptors or memory: wait a little (the pending
      // connections stay in the listen backlog), otherwise retry at once.
      const bool resources = ec.value() == EMFILE || ec.value() == ENFILE ||
                             ec.value() == ENOBUFS || ec.value() == ENOMEM;
      warn_rate_limited("accept failed: " + ec.message() + (resources ? "; retrying" : ""));
      accepting = true;
      backoff.expires_after(std::chrono::milliseconds(resources ? 100 : 5));
      backoff.async_wait([self = shared_from_this()](beast::error_code) {
        self->accepting = false;
        self->accept();
      });
      return;
    }
    const uint64_t id = next_id++;
    auto session = std::make_shared<Session>(shared_from_this(), std::move(socket), id);
    sessions[id] = session;
    session->start();
    accept();
  }

  // A connection that has waited less than this is not evicted: a scraper sends its request at
  // once, so a stream of new idle connections cannot push it out.
  static constexpr auto kMinEvictAge = std::chrono::milliseconds(200);
  bool young_waiting = false;  // evict_one() passed over such a connection

  // Closes the oldest connection that has waited kMinEvictAge for its request; false when there
  // is none.
  bool evict_one() {
    young_waiting = false;
    const auto now = Clock::now();
    for (auto& [id, weak] : sessions) {
      if (auto s = weak.lock(); s && s->waiting()) {
        if (now - s->waiting_since() < kMinEvictAge) {
          young_waiting = true;
          continue;
        }
        s->close();
        return true;
      }
    }
    return false;
  }

  void session_ended(uint64_t id) {
    sessions.erase(id);
    if (!stopped) accept();
  }

  void schedule_refresh() {
    if (stopped || options.refresh.count() <= 0 || (!users_file && !tls_files)) return;
    refresh_timer.expires_after(options.refresh);
    refresh_timer.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || self->stopped) return;
      try {
        self->refresh();
      } catch (const std::exception& e) {
        log_error(std::string("metrics endpoint: re-reading files: ") + e.what());
      }
      self->schedule_refresh();
    });
  }

  // Polls `files`; new content goes to `apply`, which throws when it does not parse. A failure
  // is logged with `keep` (what stays in use) and tried again once the files change again.
  template <class Apply>
  static void reload(WatchedFiles& files, const std::string& keep, Apply apply) {
    std::vector<std::string> texts;
    std::string error;
    switch (files.poll(texts, error)) {
      case FileChange::kNone:
        return;
      case FileChange::kUnreadable:
        log_warn("metrics endpoint: " + error + keep);
        return;
      case FileChange::kChanged:
        try {
          apply(texts);
        } catch (const std::runtime_error& e) {
          log_warn(std::string("metrics endpoint: ") + e.what() + keep);
          files.reject(std::move(texts));
          return;
        }
        files.accept(std::move(texts));
    }
  }

  void refresh() {
    if (users_file) {
      reload(*users_file, strf("; keeping the %zu user(s) read before", user_count(*users)),
             [this](const std::vector<std::string>& texts) {
               users = parse_basic_auth(texts[0], options.basic_auth_file);
               log_info(strf("metrics endpoint: --metrics-basic-auth-file %s re-read: %zu user(s)",
                             options.basic_auth_file.c_str(), user_count(*users)));
             });
    }
    if (tls_files) {
      reload(*tls_files, "; keeping the certificate read before",
             [this](const std::vector<std::string>& texts) {
               tls = metrics_tls_context(texts[0], texts[1], options.tls_cert, options.tls_key);
               log_info("metrics endpoint: new TLS certificate from " + options.tls_cert + ": " +
                        describe_certificate(texts[0]));
             });
    }
  }

  void stop() {
    stopped = true;
    beast::error_code ignored;
    acceptor.close(ignored);
    backoff.cancel();
    refresh_timer.cancel();
    for (auto& [id, weak] : sessions) {
      if (auto s = weak.lock()) s->close();
    }
  }
};

MetricsHttpServer::MetricsHttpServer(const std::string& address,
                                     std::shared_ptr<prometheus::Registry> registry,
                                     MetricsHttpOptions options)
    : impl_(std::make_shared<Impl>()) {
  impl_->registry = std::move(registry);
  impl_->options = std::move(options);
  const auto& o = impl_->options;
  // The files are read here, so that a bad one stops the server before the model loads.
  if (!o.basic_auth_file.empty()) {
    std::vector<std::string> texts{read_whole_file("--metrics-basic-auth-file", o.basic_auth_file)};
    impl_->users = parse_basic_auth(texts[0], o.basic_auth_file);
    impl_->users_file.emplace(std::vector<std::string>{"--metrics-basic-auth-file"},
                              std::vector<std::string>{o.basic_auth_file}, std::move(texts));
  }
  if (o.tls_cert.empty() != o.tls_key.empty()) {
    throw std::runtime_error("--metrics-tls-cert, --metrics-tls-key: give both or neither");
  }
  if (!o.tls_cert.empty()) {
    std::vector<std::string> texts{read_whole_file("--metrics-tls-cert", o.tls_cert),
                                   read_whole_file("--metrics-tls-key", o.tls_key)};
    impl_->tls = metrics_tls_context(texts[0], texts[1], o.tls_cert, o.tls_key);
    log_info("metrics endpoint over HTTPS, certificate " + o.tls_cert + ": " +
             describe_certificate(texts[0]));
    impl_->tls_files.emplace(std::vector<std::string>{"--metrics-tls-cert", "--metrics-tls-key"},
                             std::vector<std::string>{o.tls_cert, o.tls_key}, std::move(texts));
  }
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
  impl_->schedule_refresh();
  thread_ = std::thread([impl = impl_] {
    for (;;) {
      try {
        impl->io.run();
        return;
      } catch (const std::exception& e) {
        // A handler threw (e.g. bad_alloc serializing): log it and keep serving.
        log_error(std::string("metrics endpoint: ") + e.what());
      }
    }
  });
}

MetricsHttpServer::~MetricsHttpServer() {
  asio::post(impl_->io, [impl = impl_] { impl->stop(); });
  // Sessions end as their operations complete with errors; then run() returns.
  thread_.join();
}

}  // namespace ldcp::server
