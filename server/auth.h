#pragma once
// Authentication and authorization of ldcp-server's clients (no gRPC types: the service maps the
// codes, and the unit tests drive it alone).
//
// --auth-tokens-file: one client per line, `#` comments and blank lines ignored:
//
//   NAME  SHA256  [key=value ...]
//   batch-jobs  sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//   max_priority=0
//
// NAME: [A-Za-z0-9._-], 1 to 64 characters, unique (the `client` label of the request metrics;
// "anonymous" and "unauthenticated" are reserved). SHA256: the SHA-256 of the bearer token as 64
// hex digits, optionally prefixed "sha256:" (`printf %s "$TOKEN" | sha256sum`); the file never
// holds the token itself. Fields (all optional):
//   max_priority=N    highest priority honoured, in [-1000, 1000] (default 0); higher requested
//                     priorities are lowered to N, not rejected
//   max_in_flight=N   requests admitted and not finished, queued or running (default 0: no
//                     limit of its own); beyond it RESOURCE_EXHAUSTED
//   max_queued=N      of those, the ones that have not started their first denoising step
//                     (default 0: no limit of its own); beyond it RESOURCE_EXHAUSTED
//   methods=A,B       the RPCs it may call: Generate, GenerateStream, ListModels (default
//                     all); others PERMISSION_DENIED
//   pruning=A,B       the pruning modes it may ask for: auto, off, fixed (default all); others
//                     PERMISSION_DENIED
//
// Clients present `authorization: Bearer TOKEN` metadata. The token's SHA-256 is compared with
// every client's hash in constant time. The file is re-read when its content changes (checked
// every refresh interval); a file that no longer parses keeps the previous clients (logged with
// the file and line). Messages and logs never quote a token or a hash.

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace ldcp::server {

using TokenHash = std::array<uint8_t, 32>;

// SHA-256 of `data`.
TokenHash sha256(std::string_view data);

struct ClientPolicy {
  std::string name;
  TokenHash token_hash{};
  int max_priority = 0;
  int64_t max_in_flight = 0;                                           // 0: no per-client limit
  int64_t max_queued = 0;                                              // 0: no per-client limit
  bool generate = true, generate_stream = true, list_models = true;    // methods
  bool pruning_auto = true, pruning_off = true, pruning_fixed = true;  // pruning modes
};

// Parses a tokens file's text. Throws std::invalid_argument "PATH:LINE: what is wrong".
std::vector<ClientPolicy> parse_tokens(const std::string& text, const std::string& path);

enum class AuthCode { kOk, kUnauthenticated, kPermissionDenied, kResourceExhausted };
const char* auth_code_name(AuthCode code);  // "OK", "UNAUTHENTICATED", ...

// A request's claim on its client's in-flight and queued limits; released once, by release()
// or its destructor.
class AdmissionTicket {
 public:
  struct Counters {
    std::mutex mu;
    int64_t in_flight = 0, queued = 0;
  };
  explicit AdmissionTicket(std::shared_ptr<Counters> counters);
  ~AdmissionTicket();
  AdmissionTicket(const AdmissionTicket&) = delete;
  AdmissionTicket& operator=(const AdmissionTicket&) = delete;
  void started();  // the request left the queue (idempotent)
  void release();  // the request finished (idempotent)

 private:
  std::shared_ptr<Counters> counters_;
  std::atomic<bool> started_{false}, released_{false};
};

struct Identity {
  AuthCode code = AuthCode::kOk;
  std::string message;  // when not kOk
  std::string client;   // the metrics label: a name, "anonymous" or "unauthenticated"
  std::shared_ptr<const ClientPolicy> policy;  // null when auth is off
};

struct Admission {
  AuthCode code = AuthCode::kOk;
  std::string message;
  int priority = 0;  // the priority to schedule with (clamped)
  std::shared_ptr<AdmissionTicket> ticket;
};

enum class PruningKind { kAuto, kOff, kFixed };

class Authenticator {
 public:
  // An empty path turns authentication off (every caller is "anonymous", nothing is limited).
  // Otherwise reads the file now (throws std::invalid_argument when it does not parse) and, with
  // refresh > 0, re-reads it on a background thread.
  Authenticator(std::string tokens_file, std::chrono::milliseconds refresh);
  ~Authenticator();
  Authenticator(const Authenticator&) = delete;
  Authenticator& operator=(const Authenticator&) = delete;

  bool enabled() const { return !path_.empty(); }
  // `authorization`: the metadata value ("Bearer TOKEN"), empty when absent.
  Identity authenticate(std::string_view authorization) const;
  // Method ("Generate" / "GenerateStream"), pruning mode and requested priority of a valid
  // request from `who`: the permission checks, the priority clamp and the client's limits.
  Admission admit(const Identity& who, std::string_view method, PruningKind pruning,
                  int requested_priority);
  // Whether `who` may call `method` ("Generate", "GenerateStream", "ListModels"): always with
  // authentication off. The other checks of admit() are for generation requests.
  static bool may_call(const Identity& who, std::string_view method);
  // The names of the current clients (for zero-valued metric series).
  std::vector<std::string> client_names() const;
  // Re-reads the file now; false (and the previous clients kept) when it does not parse.
  bool reload();

 private:
  void watch();
  std::shared_ptr<AdmissionTicket::Counters> counters_for(const std::string& name);

  std::string path_;
  std::chrono::milliseconds refresh_;
  mutable std::mutex mu_;
  std::shared_ptr<const std::vector<std::shared_ptr<const ClientPolicy>>> clients_;
  std::string content_;   // the text last parsed
  std::string rejected_;  // the text last refused (logged once)
  std::map<std::string, std::shared_ptr<AdmissionTicket::Counters>> counters_;
  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;
  std::thread watcher_;
};

}  // namespace ldcp::server
