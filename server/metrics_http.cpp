#include "server/metrics_http.h"

#include <cerrno>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <prometheus/text_serializer.h>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "server/logging.h"

namespace ldcp::server {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::ip::tcp;

struct BasicAuthUsers {
  std::map<std::string, std::string> digests;  // user -> 32 raw bytes
};

namespace {

std::string sha256(const std::string& data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(data.data(), data.size(), out, &n, EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("SHA-256 failed");
  }
  return std::string(reinterpret_cast<char*>(out), n);
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// RFC 4648 base64 (padding optional); false on any other character.
bool base64_decode(const std::string& in, std::string& out) {
  static const std::string kAlphabet =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  out.clear();
  uint32_t acc = 0;
  int bits = 0;
  size_t i = 0;
  for (; i < in.size() && in[i] != '='; ++i) {
    const auto v = kAlphabet.find(in[i]);
    if (v == std::string::npos) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xFF);
    }
  }
  for (; i < in.size(); ++i) {
    if (in[i] != '=') return false;
  }
  return true;
}

}  // namespace

std::shared_ptr<const BasicAuthUsers> read_basic_auth_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("--metrics-basic-auth-file: cannot read " + path);
  auto users = std::make_shared<BasicAuthUsers>();
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    const auto a = line.find(':');
    const auto b = a == std::string::npos ? a : line.find(':', a + 1);
    std::string digest;
    const std::string hex = b == std::string::npos ? "" : line.substr(b + 1);
    for (size_t i = 0; hex.size() == 64 && i < 64; i += 2) {
      const int hi = hex_value(hex[i]), lo = hex_value(hex[i + 1]);
      if (hi < 0 || lo < 0) break;
      digest += static_cast<char>(hi * 16 + lo);
    }
    if (a == 0 || b == std::string::npos || line.substr(a + 1, b - a - 1) != "sha256" ||
        digest.size() != 32) {
      throw std::runtime_error("--metrics-basic-auth-file: " + path + " line " +
                               std::to_string(number) +
                               ": expected user:sha256:<64 hex digits of the password's SHA-256>");
    }
    users->digests[line.substr(0, a)] = digest;
  }
  if (users->digests.empty()) {
    throw std::runtime_error("--metrics-basic-auth-file: " + path + " names no user");
  }
  return users;
}

bool basic_auth_ok(const BasicAuthUsers& users, const std::string& authorization) {
  static const std::string kScheme = "Basic ";
  if (authorization.size() <= kScheme.size() || authorization.size() > 1024) return false;
  if (!beast::iequals(authorization.substr(0, kScheme.size()), kScheme)) return false;
  std::string decoded;
  if (!base64_decode(authorization.substr(kScheme.size()), decoded)) return false;
  const auto colon = decoded.find(':');
  if (colon == std::string::npos) return false;
  const auto it = users.digests.find(decoded.substr(0, colon));
  // The digest is compared in constant time; an unknown user still pays for one hash.
  const std::string digest = sha256(decoded.substr(colon + 1));
  if (it == users.digests.end()) return false;
  return CRYPTO_memcmp(digest.data(), it->second.data(), digest.size()) == 0;
}

struct MetricsHttpServer::Impl : std::enable_shared_from_this<Impl> {
  class Session;
  using Clock = std::chrono::steady_clock;

  asio::io_context io;
  tcp::acceptor acceptor{io};
  asio::steady_timer backoff{io};
  std::shared_ptr<prometheus::Registry> registry;
  MetricsHttpOptions options;
  std::shared_ptr<const BasicAuthUsers> users;
  std::map<uint64_t, std::weak_ptr<Session>> sessions;  // by age: the oldest first
  uint64_t next_id = 0;
  bool accepting = false;  // an async_accept or a back-off is pending
  bool stopped = false;
  Clock::time_point last_warning{};
  uint64_t suppressed_warnings = 0;

  class Session : public std::enable_shared_from_this<Session> {
   public:
    Session(std::shared_ptr<Impl> owner, tcp::socket socket, uint64_t id)
        : owner_(std::move(owner)), stream_(std::move(socket)), id_(id) {}

    void start() { read(); }
    bool waiting() const { return waiting_ && !closed_; }
    Clock::time_point waiting_since() const { return waiting_since_; }
    bool closed() const { return closed_; }
    void close() {
      if (closed_) return;
      closed_ = true;
      beast::error_code ignored;
      stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
      stream_.close();
    }
    ~Session() { owner_->session_ended(id_); }

   private:
    void read() {
      waiting_ = true;
      waiting_since_ = Clock::now();
      parser_.emplace();
      parser_->header_limit(static_cast<uint32_t>(owner_->options.max_header_bytes));
      parser_->body_limit(0);
      stream_.expires_after(owner_->options.timeout);
      http::async_read(
          stream_, buffer_, *parser_,
          [self = shared_from_this()](beast::error_code ec, size_t) { self->on_read(ec); });
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
          return respond(http::status::unauthorized, "unauthorized\n", keep_alive, true);
        }
      }
      if (req.method() != http::verb::get && req.method() != http::verb::head) {
        return respond(http::status::method_not_allowed, "only GET and HEAD\n", keep_alive);
      }
      if (target != "/metrics" && target != "/metrics/") {
        return respond(http::status::not_found, "not found; metrics are at /metrics\n", keep_alive);
      }
      std::string body = prometheus::TextSerializer().Serialize(owner_->registry->Collect());
      respond(http::status::ok, std::move(body), keep_alive, false,
              req.method() == http::verb::head, "text/plain; version=0.0.4; charset=utf-8");
    }

    void respond(http::status status, std::string body, bool keep_alive, bool challenge = false,
                 bool head = false, const char* type = "text/plain; charset=utf-8") {
      response_ = {};
      response_.result(status);
      response_.version(11);
      response_.set(http::field::content_type, type);
      if (challenge) response_.set(http::field::www_authenticate, "Basic realm=\"ldcp metrics\"");
      response_.body() = std::move(body);
      response_.prepare_payload();
      if (head) response_.body().clear();
      response_.keep_alive(keep_alive);
      stream_.expires_after(owner_->options.timeout);
      http::async_write(stream_, response_,
                        [self = shared_from_this(), keep_alive](beast::error_code ec, size_t) {
                          if (ec || !keep_alive) return self->close();
                          self->read();
                        });
    }

    std::shared_ptr<Impl> owner_;
    beast::tcp_stream stream_;
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

  void stop() {
    stopped = true;
    beast::error_code ignored;
    acceptor.close(ignored);
    backoff.cancel();
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
  if (!impl_->options.basic_auth_file.empty()) {
    impl_->users = read_basic_auth_file(impl_->options.basic_auth_file);
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
