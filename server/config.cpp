#include "server/config.h"

#include <cctype>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include <CLI/CLI.hpp>

namespace ldcp::server {

void add_options(CLI::App& app, ServerConfig& c) {
  auto env = [](const char* name) { return std::string("LDCP_") + name; };
  app.add_option("--model", c.models,
                 "Diffusers-format model folder, or a single-file SD1.5 checkpoint "
                 "(.safetensors, original layout) (required). Several models: NAME=PATH, "
                 "repeated (requests name one in `model`; the first is the default); NAME is "
                 "1-64 of [A-Za-z0-9._-]. All are loaded and calibrated at start-up")
      ->envname(env("MODEL"))
      ->required();
  app.add_option("--gates", c.gates,
                 "Pruning gates file (learned channel gates) of the first model; with several "
                 "models NAME=FILE, repeated")
      ->envname(env("GATES"));
  app.add_option("--device", c.device, "cpu, cuda or cuda:N")
      ->envname(env("DEVICE"))
      ->capture_default_str();
  app.add_option("--dtype", c.dtype,
                 "auto (fp16 on CUDA, bf16 on a CPU with native bf16, else fp32), fp32, fp16 or "
                 "bf16")
      ->envname(env("DTYPE"))
      ->check(CLI::IsMember({"auto", "fp32", "fp16", "bf16"}))
      ->capture_default_str();
  app.add_option("--linear-backend", c.linear_backend,
                 "The U-Net's linear layers on the CPU: auto (time ATen and oneDNN on the "
                 "U-Net's shapes at start-up, keep the faster), aten or onednn")
      ->envname(env("LINEAR_BACKEND"))
      ->check(CLI::IsMember({"auto", "aten", "onednn"}))
      ->capture_default_str();
  app.add_flag("--fp16-weights", c.fp16_weights, "Load *.fp16.safetensors variants when present")
      ->envname(env("FP16_WEIGHTS"));
  app.add_option("--scores", c.score_source,
                 "Importance scores when no --gates file is given: magnitude (from the weights) "
                 "or random (a control)")
      ->envname(env("SCORES"))
      ->check(CLI::IsMember({"magnitude", "random"}))
      ->capture_default_str();
  app.add_option("--vae-tile-size", c.vae_tile_size,
                 "Decode images larger than this many pixels (either side) in overlapping tiles, "
                 "so the decoder's memory peak stays that of one tile; 0 decodes whole images")
      ->envname(env("VAE_TILE_SIZE"))
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_flag("--png-metadata,!--no-png-metadata", c.png_metadata,
               "Write A1111's \"parameters\" text (prompt, seed, settings, model hash, pruning "
               "levels) into every returned PNG (default); --no-png-metadata: none, for clients "
               "that do not want their prompts embedded")
      ->envname(env("PNG_METADATA"));

  app.add_option("--listen", c.listen, "gRPC address (host:port)")
      ->envname(env("LISTEN"))
      ->capture_default_str();
  app.add_option("--metrics-listen", c.metrics_listen, "Prometheus /metrics address (host:port)")
      ->envname(env("METRICS_LISTEN"))
      ->capture_default_str();
  app.add_option("--max-message-bytes", c.max_message_bytes,
                 "Largest gRPC message sent (responses carry the images; requests are bounded by "
                 "--max-receive-bytes)")
      ->envname(env("MAX_MESSAGE_BYTES"))
      ->capture_default_str();

  app.add_option("--memory-budget", c.memory_budget,
                 "Device memory the server may use (bytes or e.g. 8GiB). Default: on CUDA the "
                 "device's memory, on CPU the cgroup's memory limit or else the machine's "
                 "memory, less --memory-headroom")
      ->envname(env("MEMORY_BUDGET"));
  app.add_option("--memory-headroom", c.memory_headroom,
                 "Memory left to others (CUDA) or to the process's own code and buffers (CPU) "
                 "when the budget is derived")
      ->envname(env("MEMORY_HEADROOM"))
      ->capture_default_str();

  app.add_option("--max-queue", c.max_queue, "Requests that may wait; more get UNAVAILABLE")
      ->envname(env("MAX_QUEUE"))
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--max-batch", c.max_batch, "Images per U-Net batch")
      ->envname(env("MAX_BATCH"))
      ->check(CLI::Range(int64_t{1}, int64_t{256}))
      ->capture_default_str();
  app.add_option("--batch-window-ms", c.batch_window_ms,
                 "How long a batch that is not full waits for compatible requests")
      ->envname(env("BATCH_WINDOW_MS"))
      ->check(CLI::Range(int64_t{0}, int64_t{60000}))
      ->capture_default_str();
  app.add_option("--workers", c.workers, "Batches that run at once (model threads)")
      ->envname(env("WORKERS"))
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--levels", c.levels, "AUTO's pruning levels, comma-separated, each in [0, 1)")
      ->envname(env("LEVELS"))
      ->capture_default_str();
  app.add_option("--max-level", c.max_level, "The most pruning AUTO applies, in [0, 1)")
      ->envname(env("MAX_LEVEL"))
      ->check(CLI::Range(0.0, 0.999999))
      ->capture_default_str();
  app.add_option("--hysteresis-fraction", c.hysteresis_fraction,
                 "AUTO lowers its level only when the lower level fits with this fraction of the "
                 "budget to spare")
      ->envname(env("HYSTERESIS_FRACTION"))
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  app.add_option("--hysteresis-decisions", c.hysteresis_decisions,
                 "... in this many consecutive scheduling decisions")
      ->envname(env("HYSTERESIS_DECISIONS"))
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  app.add_option("--idle-decay", c.idle_decay_s,
                 "Seconds with nothing queued or running after which AUTO's held level steps "
                 "one level down (0: never)")
      ->envname(env("IDLE_DECAY"))
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();

  app.add_option("--calibrate-sizes", c.calibrate_sizes,
                 "Sizes measured at start-up, e.g. 256x256,512x512 (default: the native size)")
      ->envname(env("CALIBRATE_SIZES"));
  app.add_option("--calibrate-levels", c.calibrate_levels, "Levels measured at start-up")
      ->envname(env("CALIBRATE_LEVELS"))
      ->capture_default_str();
  app.add_option("--calibrate-steps", c.calibrate_steps, "Denoising steps per calibration run")
      ->envname(env("CALIBRATE_STEPS"))
      ->check(CLI::Range(int64_t{1}, int64_t{50}))
      ->capture_default_str();

  app.add_option("--min-size", c.min_size, "Smallest width/height accepted (pixels)")
      ->envname(env("MIN_SIZE"))
      ->check(CLI::Range(int64_t{8}, int64_t{16384}))
      ->capture_default_str();
  app.add_option("--max-size", c.max_size, "Largest width/height accepted (pixels)")
      ->envname(env("MAX_SIZE"))
      ->check(CLI::Range(int64_t{8}, int64_t{16384}))
      ->capture_default_str();
  app.add_option("--default-size", c.default_size,
                 "Width/height when a request gives none (0: the model's native size)")
      ->envname(env("DEFAULT_SIZE"))
      ->capture_default_str();
  app.add_option("--max-steps", c.max_steps, "Most denoising steps accepted")
      ->envname(env("MAX_STEPS"))
      ->check(CLI::Range(int64_t{1}, int64_t{1000}))
      ->capture_default_str();
  app.add_option("--default-steps", c.default_steps, "Steps when a request gives none")
      ->envname(env("DEFAULT_STEPS"))
      ->check(CLI::Range(int64_t{1}, int64_t{1000}))
      ->capture_default_str();
  app.add_option("--max-guidance", c.max_guidance, "Largest guidance scale accepted")
      ->envname(env("MAX_GUIDANCE"))
      ->capture_default_str();
  app.add_option("--max-images", c.max_images, "Most images per request")
      ->envname(env("MAX_IMAGES"))
      ->check(CLI::Range(int64_t{1}, int64_t{64}))
      ->capture_default_str();
  app.add_option("--max-prompt-chars", c.max_prompt_chars, "Longest prompt accepted (bytes)")
      ->envname(env("MAX_PROMPT_CHARS"))
      ->capture_default_str();
  app.add_option("--default-sampler", c.default_sampler, "Sampler when a request names none")
      ->envname(env("DEFAULT_SAMPLER"))
      ->capture_default_str();
  app.add_option("--lora-dir", c.lora_dir,
                 "Directory of LoRA files (kohya/A1111 or diffusers/PEFT safetensors) that "
                 "requests name in `loras` (NAME: NAME.safetensors there); unset: no LoRAs")
      ->envname(env("LORA_DIR"));
  app.add_option("--max-loras", c.max_loras, "The most LoRAs one request may apply")
      ->envname(env("MAX_LORAS"))
      ->check(CLI::Range(int64_t{1}, int64_t{16}))
      ->capture_default_str();
  app.add_option("--lora-cache", c.lora_cache,
                 "Bytes of loaded LoRA factors kept for later requests (e.g. 512MiB; least "
                 "recently used first out)")
      ->envname(env("LORA_CACHE"))
      ->capture_default_str();

  // Security: TLS/mTLS (server/credentials.h) and bearer tokens (server/auth.h).
  app.add_option("--tls-cert", c.tls_cert,
                 "PEM certificate chain for TLS on --listen (with --tls-key; re-read when the file "
                 "changes). Default: plaintext")
      ->envname(env("TLS_CERT"));
  app.add_option("--tls-key", c.tls_key, "PEM private key of --tls-cert")->envname(env("TLS_KEY"));
  app.add_option("--tls-client-ca", c.tls_client_ca,
                 "PEM CA bundle: require client certificates signed by it (mutual TLS)")
      ->envname(env("TLS_CLIENT_CA"));
  app.add_option("--tls-refresh", c.tls_refresh_s,
                 "Seconds between checks of the TLS files for new certificates")
      ->envname(env("TLS_REFRESH"))
      ->check(CLI::Range(int64_t{1}, int64_t{86400}))
      ->capture_default_str();
  app.add_option("--health-listen", c.health_listen,
                 "Also serve grpc.health.v1 alone, plaintext, on this address (host:port), for "
                 "probes that cannot speak TLS (the kubelet's). Default: none")
      ->envname(env("HEALTH_LISTEN"));
  app.add_option("--auth-tokens-file", c.auth_tokens_file,
                 "Clients and the SHA-256 of their bearer tokens, one per line: NAME SHA256 "
                 "[max_priority=N max_in_flight=N max_queued=N methods=.. pruning=..] (README, "
                 "Security). Re-read when it changes. Default: no authentication")
      ->envname(env("AUTH_TOKENS_FILE"));
  app.add_option("--auth-refresh", c.auth_refresh_s,
                 "Seconds between checks of --auth-tokens-file for changes (0: never)")
      ->envname(env("AUTH_REFRESH"))
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  app.add_option("--reflection", c.reflection,
                 "Serve gRPC server reflection (unauthenticated: it lists the services)")
      ->envname(env("REFLECTION"))
      ->capture_default_str();

  // Bounds on one client's requests and connections (README: Security, Bounds).
  app.add_option("--max-request-id-bytes", c.max_request_id_bytes,
                 "Longest request_id accepted (bytes)")
      ->envname(env("MAX_REQUEST_ID_BYTES"))
      ->check(CLI::Range(int64_t{1}, int64_t{4096}))
      ->capture_default_str();
  app.add_option("--max-request-work", c.max_request_work,
                 "Most work one request may ask for: width x height x images x steps, doubled "
                 "when guided (guidance scale > 1); default 4x a 512x512, 1-image, 50-step guided "
                 "request (0: no bound)")
      ->envname(env("MAX_REQUEST_WORK"))
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  app.add_option("--max-deadline", c.max_deadline_s,
                 "Seconds a request may take from its arrival: requests without a deadline get "
                 "it, longer deadlines are cut to it (0: no bound)")
      ->envname(env("MAX_DEADLINE"))
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  app.add_option("--max-receive-bytes", c.max_receive_bytes,
                 "Largest request message accepted (a valid GenerateRequest is under 10 KB)")
      ->envname(env("MAX_RECEIVE_BYTES"))
      ->check(CLI::Range(int64_t{1024}, int64_t{1} << 30))
      ->capture_default_str();
  app.add_option("--max-concurrent-streams", c.max_concurrent_streams,
                 "Calls open at once on one HTTP/2 connection (GRPC_ARG_MAX_CONCURRENT_STREAMS)")
      ->envname(env("MAX_CONCURRENT_STREAMS"))
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--grpc-memory-quota", c.grpc_memory_quota,
                 "Memory gRPC may use for its buffers across all connections (its resource "
                 "quota; bytes or e.g. 512MiB)")
      ->envname(env("GRPC_MEMORY_QUOTA"))
      ->capture_default_str();
  app.add_option("--min-ping-interval", c.min_ping_interval_s,
                 "Seconds a client must leave between keepalive pings; pings sooner count as "
                 "strikes (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS)")
      ->envname(env("MIN_PING_INTERVAL"))
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();
  app.add_option("--max-ping-strikes", c.max_ping_strikes,
                 "Pings too soon before the connection is closed (GOAWAY too_many_pings; "
                 "GRPC_ARG_HTTP2_MAX_PING_STRIKES; 0: never closed)")
      ->envname(env("MAX_PING_STRIKES"))
      ->check(CLI::Range(int64_t{0}, int64_t{1000}))
      ->capture_default_str();
  app.add_option("--max-connection-age", c.max_connection_age_s,
                 "Seconds after which a connection is asked to go away (GOAWAY, +-10% jitter), so "
                 "clients reconnect and balance across new replicas (0: never)")
      ->envname(env("MAX_CONNECTION_AGE"))
      ->check(CLI::Range(0.0, 30.0 * 86400))
      ->capture_default_str();
  app.add_option("--max-connection-age-grace", c.max_connection_age_grace_s,
                 "Seconds the calls still open on such a connection get before it is closed")
      ->envname(env("MAX_CONNECTION_AGE_GRACE"))
      ->check(CLI::Range(0.0, 30.0 * 86400))
      ->capture_default_str();
  app.add_option("--metrics-max-connections", c.metrics_max_connections,
                 "Connections the metrics endpoint keeps open; beyond it the oldest one still "
                 "waiting for its request is closed")
      ->envname(env("METRICS_MAX_CONNECTIONS"))
      ->check(CLI::Range(int64_t{1}, int64_t{4096}))
      ->capture_default_str();
  app.add_option("--metrics-timeout", c.metrics_timeout_s,
                 "Seconds the metrics endpoint waits for a request's headers (and to write a "
                 "response) before closing the connection")
      ->envname(env("METRICS_TIMEOUT"))
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  app.add_option("--metrics-max-header-bytes", c.metrics_max_header_bytes,
                 "Largest request headers the metrics endpoint reads (larger: 431)")
      ->envname(env("METRICS_MAX_HEADER_BYTES"))
      ->check(CLI::Range(int64_t{512}, int64_t{1} << 20))
      ->capture_default_str();
  app.add_option("--metrics-basic-auth-file", c.metrics_basic_auth_file,
                 "Require HTTP basic authentication on /metrics: a file of user:sha256:HEX lines, "
                 "HEX the SHA-256 of the password (re-read when it changes). Default: none")
      ->envname(env("METRICS_BASIC_AUTH_FILE"));
  app.add_option("--metrics-tls-cert", c.metrics_tls_cert,
                 "PEM certificate chain for HTTPS on --metrics-listen (with --metrics-tls-key; "
                 "re-read when the file changes). Default: plain HTTP")
      ->envname(env("METRICS_TLS_CERT"));
  app.add_option("--metrics-tls-key", c.metrics_tls_key, "PEM private key of --metrics-tls-cert")
      ->envname(env("METRICS_TLS_KEY"));
  app.add_option("--metrics-gzip", c.metrics_gzip,
                 "gzip /metrics for scrapers that send Accept-Encoding: gzip")
      ->envname(env("METRICS_GZIP"))
      ->capture_default_str();
  app.add_option("--metrics-refresh", c.metrics_refresh_s,
                 "Seconds between checks of --metrics-basic-auth-file, --metrics-tls-cert and "
                 "--metrics-tls-key for changes (0: read at start-up only)")
      ->envname(env("METRICS_REFRESH"))
      ->check(CLI::Range(0.0, 86400.0))
      ->capture_default_str();

  app.add_option("--grace-period", c.grace_period_s,
                 "Seconds running requests get to finish after SIGTERM/SIGINT")
      ->envname(env("GRACE_PERIOD"))
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  app.add_option("--log-level", c.log_level, "trace, debug, info, warn, error")
      ->envname(env("LOG_LEVEL"))
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
  app.add_option("--log-format", c.log_format, "text or json (one object per line)")
      ->envname(env("LOG_FORMAT"))
      ->check(CLI::IsMember({"text", "json"}))
      ->capture_default_str();
}

int64_t parse_bytes(const std::string& text) {
  size_t pos = 0;
  double value = 0;
  try {
    value = std::stod(text, &pos);
  } catch (const std::exception&) {
    throw std::invalid_argument("not a byte count: '" + text + "'");
  }
  std::string unit = text.substr(pos);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.front()))) unit.erase(0, 1);
  for (auto& ch : unit) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  double mult = 1;
  if (unit.empty() || unit == "b")
    mult = 1;
  else if (unit == "k" || unit == "kb")
    mult = 1e3;
  else if (unit == "m" || unit == "mb")
    mult = 1e6;
  else if (unit == "g" || unit == "gb")
    mult = 1e9;
  else if (unit == "kib")
    mult = 1024.0;
  else if (unit == "mib")
    mult = 1024.0 * 1024;
  else if (unit == "gib")
    mult = 1024.0 * 1024 * 1024;
  else if (unit == "tib")
    mult = 1024.0 * 1024 * 1024 * 1024;
  else
    throw std::invalid_argument("unknown unit in byte count '" + text + "'");
  if (!std::isfinite(value) || value < 0) {
    throw std::invalid_argument("byte count must be >= 0: '" + text + "'");
  }
  return static_cast<int64_t>(std::llround(value * mult));
}

std::vector<double> parse_levels(const std::string& text, const std::string& what) {
  std::vector<double> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    size_t pos = 0;
    double l = -1;
    try {
      l = std::stod(item, &pos);
    } catch (const std::exception&) {
      pos = 0;
    }
    if (pos != item.size() || !(l >= 0.0 && l < 1.0)) {
      throw std::invalid_argument(what + ": '" + item + "' is not a level in [0, 1)");
    }
    out.push_back(l);
  }
  if (out.empty()) throw std::invalid_argument(what + ": no levels given");
  return out;
}

std::vector<std::pair<int64_t, int64_t>> parse_sizes(const std::string& text) {
  std::vector<std::pair<int64_t, int64_t>> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    const auto x = item.find('x');
    try {
      if (x == std::string::npos) throw std::invalid_argument("");
      size_t p1 = 0, p2 = 0;
      const int64_t w = std::stoll(item.substr(0, x), &p1);
      const int64_t h = std::stoll(item.substr(x + 1), &p2);
      if (p1 != x || p2 != item.size() - x - 1 || w <= 0 || h <= 0) throw std::invalid_argument("");
      out.emplace_back(w, h);
    } catch (const std::exception&) {
      throw std::invalid_argument("--calibrate-sizes: '" + item + "' is not WIDTHxHEIGHT");
    }
  }
  return out;
}

}  // namespace ldcp::server
