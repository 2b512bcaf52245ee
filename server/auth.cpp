#include "server/auth.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "server/logging.h"

namespace ldcp::server {
namespace {

constexpr size_t kMaxNameChars = 64;
constexpr const char* kAnonymous = "anonymous";
constexpr const char* kUnauthenticated = "unauthenticated";

bool name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A short, printable prefix of a value for an error message.
std::string quote_prefix(std::string_view v) {
  std::string out;
  for (char c : v.substr(0, 24)) out += std::isprint(static_cast<unsigned char>(c)) ? c : '?';
  return "'" + out + (v.size() > 24 ? "...'" : "'");
}

int64_t parse_int(std::string_view text, int64_t lo, int64_t hi, const std::string& where) {
  int64_t v = 0;
  bool ok = !text.empty() && text.size() <= 8;
  size_t i = 0;
  bool negative = false;
  if (ok && text[0] == '-') negative = true, i = 1;
  ok = ok && i < text.size();
  for (; ok && i < text.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(text[i])))
      ok = false;
    else
      v = v * 10 + (text[i] - '0');
  }
  if (negative) v = -v;
  if (!ok || v < lo || v > hi) {
    throw std::invalid_argument(where + ": must be an integer in [" + std::to_string(lo) + ", " +
                                std::to_string(hi) + "], got " + quote_prefix(text));
  }
  return v;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = std::min(s.find(sep, start), s.size());
    out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

void parse_field(std::string_view field, ClientPolicy& c, const std::string& where) {
  const auto eq = field.find('=');
  if (eq == std::string_view::npos || eq == 0) {
    throw std::invalid_argument(where + ": expected key=value, got " + quote_prefix(field));
  }
  const auto key = field.substr(0, eq);
  const auto value = field.substr(eq + 1);
  const std::string at = where + ": " + std::string(key);
  if (key == "max_priority") {
    c.max_priority = static_cast<int>(parse_int(value, -1000, 1000, at));
  } else if (key == "max_in_flight") {
    c.max_in_flight = parse_int(value, 0, 1 << 20, at);
  } else if (key == "max_queued") {
    c.max_queued = parse_int(value, 0, 1 << 20, at);
  } else if (key == "methods") {
    c.generate = c.generate_stream = c.list_models = false;
    for (auto m : split(value, ',')) {
      if (m == "Generate")
        c.generate = true;
      else if (m == "GenerateStream")
        c.generate_stream = true;
      else if (m == "ListModels")
        c.list_models = true;
      else
        throw std::invalid_argument(at + ": Generate, GenerateStream or ListModels, got " +
                                    quote_prefix(m));
    }
  } else if (key == "pruning") {
    c.pruning_auto = c.pruning_off = c.pruning_fixed = false;
    for (auto m : split(value, ',')) {
      if (m == "auto")
        c.pruning_auto = true;
      else if (m == "off")
        c.pruning_off = true;
      else if (m == "fixed")
        c.pruning_fixed = true;
      else
        throw std::invalid_argument(at + ": auto, off or fixed, got " + quote_prefix(m));
    }
  } else {
    throw std::invalid_argument(where + ": unknown field " + quote_prefix(key) +
                                " (known: max_priority, max_in_flight, max_queued, methods, "
                                "pruning)");
  }
}

TokenHash parse_hash(std::string_view text, const std::string& where) {
  if (text.substr(0, 7) == "sha256:") text.remove_prefix(7);
  TokenHash h{};
  bool ok = text.size() == 64;
  for (size_t i = 0; ok && i < 32; ++i) {
    const int hi = hex_value(text[2 * i]), lo = hex_value(text[2 * i + 1]);
    if (hi < 0 || lo < 0)
      ok = false;
    else
      h[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  // Not quoted: a token pasted here by mistake must not reach the logs.
  if (!ok) {
    throw std::invalid_argument(where +
                                ": the second column must be the SHA-256 of the token as "
                                "64 hex digits (printf %s TOKEN | sha256sum), got " +
                                std::to_string(text.size()) +
                                " characters; the token itself does not belong in this file");
  }
  return h;
}

}  // namespace

TokenHash sha256(std::string_view data) {
  TokenHash out{};
  unsigned int n = 0;
  if (EVP_Digest(data.data(), data.size(), out.data(), &n, EVP_sha256(), nullptr) != 1 ||
      n != out.size()) {
    throw std::runtime_error("SHA-256 failed");
  }
  return out;
}

std::vector<ClientPolicy> parse_tokens(const std::string& text, const std::string& path) {
  std::vector<ClientPolicy> out;
  std::set<std::string> names;
  std::set<TokenHash> hashes;
  std::istringstream in(text);
  std::string line;
  for (int number = 1; std::getline(in, line); ++number) {
    const std::string where = path + ":" + std::to_string(number);
    if (const auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
    std::vector<std::string_view> cols;
    std::string_view rest(line);
    while (!rest.empty()) {
      const auto b = rest.find_first_not_of(" \t\r");
      if (b == std::string_view::npos) break;
      rest.remove_prefix(b);
      const auto e = std::min(rest.find_first_of(" \t\r"), rest.size());
      cols.push_back(rest.substr(0, e));
      rest.remove_prefix(e);
    }
    if (cols.empty()) continue;
    if (cols.size() < 2) {
      throw std::invalid_argument(where + ": expected NAME SHA256 [key=value ...]");
    }
    ClientPolicy c;
    const auto name = cols[0];
    if (name.size() > kMaxNameChars || !std::all_of(name.begin(), name.end(), name_char)) {
      throw std::invalid_argument(where +
                                  ": the client name must be 1 to 64 of A-Z a-z 0-9 . _ -"
                                  ", got " +
                                  quote_prefix(name));
    }
    c.name = std::string(name);
    if (c.name == kAnonymous || c.name == kUnauthenticated) {
      throw std::invalid_argument(where + ": the client name '" + c.name + "' is reserved");
    }
    if (!names.insert(c.name).second) {
      throw std::invalid_argument(where + ": client '" + c.name + "' appears twice");
    }
    c.token_hash = parse_hash(cols[1], where);
    if (!hashes.insert(c.token_hash).second) {
      throw std::invalid_argument(where + ": client '" + c.name +
                                  "' has the same token hash as an earlier client");
    }
    for (size_t i = 2; i < cols.size(); ++i) parse_field(cols[i], c, where);
    if (!c.generate && !c.generate_stream && !c.list_models) {
      throw std::invalid_argument(where + ": methods: names no method");
    }
    if (!c.pruning_auto && !c.pruning_off && !c.pruning_fixed) {
      throw std::invalid_argument(where + ": pruning: names no mode");
    }
    out.push_back(std::move(c));
  }
  return out;
}

const char* auth_code_name(AuthCode code) {
  switch (code) {
    case AuthCode::kOk:
      return "OK";
    case AuthCode::kUnauthenticated:
      return "UNAUTHENTICATED";
    case AuthCode::kPermissionDenied:
      return "PERMISSION_DENIED";
    case AuthCode::kResourceExhausted:
      return "RESOURCE_EXHAUSTED";
  }
  return "UNKNOWN";
}

// ---------------------------------------------------------------------------------------------

AdmissionTicket::AdmissionTicket(std::shared_ptr<Counters> counters)
    : counters_(std::move(counters)) {}

AdmissionTicket::~AdmissionTicket() { release(); }

void AdmissionTicket::started() {
  if (released_ || started_.exchange(true)) return;
  std::lock_guard lock(counters_->mu);
  --counters_->queued;
}

void AdmissionTicket::release() {
  if (released_.exchange(true)) return;
  std::lock_guard lock(counters_->mu);
  --counters_->in_flight;
  if (!started_.exchange(true)) --counters_->queued;
}

// ---------------------------------------------------------------------------------------------

namespace {

std::string read_text(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::invalid_argument("--auth-tokens-file: cannot read " + path);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace

Authenticator::Authenticator(std::string tokens_file, std::chrono::milliseconds refresh)
    : path_(std::move(tokens_file)), refresh_(refresh) {
  if (path_.empty()) return;
  content_ = read_text(path_);
  auto parsed = parse_tokens(content_, path_);
  auto list = std::make_shared<std::vector<std::shared_ptr<const ClientPolicy>>>();
  for (auto& c : parsed) list->push_back(std::make_shared<const ClientPolicy>(std::move(c)));
  clients_ = std::move(list);
  if (clients_->empty())
    log_warn("--auth-tokens-file " + path_ +
             " names no client: every "
             "request gets UNAUTHENTICATED");
  if (refresh_.count() > 0) watcher_ = std::thread([this] { watch(); });
}

Authenticator::~Authenticator() {
  {
    std::lock_guard lock(stop_mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (watcher_.joinable()) watcher_.join();
}

void Authenticator::watch() {
  std::unique_lock lock(stop_mu_);
  while (!stop_cv_.wait_for(lock, refresh_, [this] { return stop_; })) {
    lock.unlock();
    reload();
    lock.lock();
  }
}

bool Authenticator::reload() {
  if (path_.empty()) return true;
  std::string text;
  try {
    text = read_text(path_);
  } catch (const std::exception& e) {
    log_error(std::string(e.what()) + "; keeping the clients read before");
    return false;
  }
  {
    std::lock_guard lock(mu_);
    if (text == content_) return true;
    if (text == rejected_) return false;  // logged already
  }
  std::vector<ClientPolicy> parsed;
  try {
    parsed = parse_tokens(text, path_);
  } catch (const std::exception& e) {
    log_error(std::string("--auth-tokens-file: ") + e.what() + "; keeping the clients read before");
    std::lock_guard lock(mu_);
    rejected_ = std::move(text);
    return false;
  }
  auto list = std::make_shared<std::vector<std::shared_ptr<const ClientPolicy>>>();
  for (auto& c : parsed) list->push_back(std::make_shared<const ClientPolicy>(std::move(c)));
  const size_t n = list->size();
  {
    std::lock_guard lock(mu_);
    clients_ = std::move(list);
    content_ = std::move(text);
  }
  log_info(strf("--auth-tokens-file %s re-read: %zu client(s)", path_.c_str(), n));
  return true;
}

std::vector<std::string> Authenticator::client_names() const {
  std::lock_guard lock(mu_);
  std::vector<std::string> out;
  if (clients_) {
    for (const auto& c : *clients_) out.push_back(c->name);
  }
  return out;
}

Identity Authenticator::authenticate(std::string_view authorization) const {
  Identity id;
  if (path_.empty()) {
    id.client = kAnonymous;
    return id;
  }
  id.client = kUnauthenticated;
  id.code = AuthCode::kUnauthenticated;
  if (authorization.empty()) {
    id.message = "this server requires a bearer token (authorization: Bearer TOKEN)";
    return id;
  }
  const auto space = authorization.find(' ');
  std::string scheme(authorization.substr(0, std::min(space, authorization.size())));
  for (auto& ch : scheme) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  if (scheme != "bearer" || space == std::string_view::npos) {
    id.message = "the authorization metadata must be 'Bearer TOKEN'";
    return id;
  }
  auto token = authorization.substr(space + 1);
  while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
  const TokenHash h = sha256(token);
  std::shared_ptr<const std::vector<std::shared_ptr<const ClientPolicy>>> clients;
  {
    std::lock_guard lock(mu_);
    clients = clients_;
  }
  // Every entry is compared, in constant time, whatever matched before.
  std::shared_ptr<const ClientPolicy> match;
  for (const auto& c : *clients) {
    if (CRYPTO_memcmp(c->token_hash.data(), h.data(), h.size()) == 0) match = c;
  }
  if (!match) {
    id.message = "the bearer token is not valid";
    return id;
  }
  id.code = AuthCode::kOk;
  id.client = match->name;
  id.policy = std::move(match);
  return id;
}

std::shared_ptr<AdmissionTicket::Counters> Authenticator::counters_for(const std::string& name) {
  std::lock_guard lock(mu_);
  auto& c = counters_[name];
  if (!c) c = std::make_shared<AdmissionTicket::Counters>();
  return c;
}

bool Authenticator::may_call(const Identity& who, std::string_view method) {
  if (!who.policy) return true;  // auth off
  const ClientPolicy& p = *who.policy;
  return (method == "Generate" && p.generate) ||
         (method == "GenerateStream" && p.generate_stream) ||
         (method == "ListModels" && p.list_models);
}

Admission Authenticator::admit(const Identity& who, std::string_view method, PruningKind pruning,
                               int requested_priority) {
  Admission a;
  a.priority = requested_priority;
  if (!who.policy) return a;  // auth off
  const ClientPolicy& p = *who.policy;
  if (!may_call(who, method) || method == "ListModels") {
    a.code = AuthCode::kPermissionDenied;
    a.message = "client '" + p.name + "' may not call " + std::string(method);
    return a;
  }
  const bool mode_ok = (pruning == PruningKind::kAuto && p.pruning_auto) ||
                       (pruning == PruningKind::kOff && p.pruning_off) ||
                       (pruning == PruningKind::kFixed && p.pruning_fixed);
  if (!mode_ok) {
    static const char* kNames[] = {"AUTO", "OFF", "FIXED"};
    a.code = AuthCode::kPermissionDenied;
    a.message =
        "client '" + p.name + "' may not use pruning mode " + kNames[static_cast<int>(pruning)];
    return a;
  }
  a.priority = std::min(requested_priority, p.max_priority);
  auto counters = counters_for(p.name);
  {
    std::lock_guard lock(counters->mu);
    if (p.max_in_flight > 0 && counters->in_flight >= p.max_in_flight) {
      a.code = AuthCode::kResourceExhausted;
      a.message = "client '" + p.name + "' has " + std::to_string(counters->in_flight) +
                  " requests in flight, its max_in_flight";
      return a;
    }
    if (p.max_queued > 0 && counters->queued >= p.max_queued) {
      a.code = AuthCode::kResourceExhausted;
      a.message = "client '" + p.name + "' has " + std::to_string(counters->queued) +
                  " requests queued, its max_queued";
      return a;
    }
    ++counters->in_flight;
    ++counters->queued;
  }
  a.ticket = std::make_shared<AdmissionTicket>(std::move(counters));
  return a;
}

}  // namespace ldcp::server
