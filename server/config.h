#pragma once
// ldcp-server's configuration: command-line flags, each also read from an LDCP_* environment
// variable (the flag wins). `ldcp-server --help` documents every one.

#include <cstdint>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace ldcp::server {

struct ServerConfig {
  // Model and device.
  // --model PATH, or NAME=PATH repeated; --gates FILE or NAME=FILE repeated (model_specs.h).
  std::vector<std::string> models;
  std::vector<std::string> gates;
  std::string device = "cpu";
  std::string dtype = "auto";           // runtime/dtype.h
  std::string linear_backend = "auto";  // runtime/linear_backend.h: auto, aten or onednn
  bool fp16_weights = false;
  std::string score_source = "magnitude";  // without --gates: magnitude or random
  int64_t vae_tile_size = 0;               // pixels; 0: decode whole images
  bool png_metadata = true;  // A1111's "parameters" text in every PNG (--no-png-metadata: none)

  // Network.
  std::string listen = "127.0.0.1:50051";
  std::string metrics_listen = "127.0.0.1:9464";
  int64_t max_message_bytes = 64LL << 20;  // sent (responses carry PNGs)

  // Memory.
  std::string memory_budget;  // bytes or "8GiB"; empty: device memory less headroom (CUDA)
  std::string memory_headroom = "1GiB";

  // Scheduling.
  int64_t max_queue = 64;
  int64_t max_batch = 4;
  int64_t batch_window_ms = 20;
  int workers = 1;
  std::string levels = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7";
  double max_level = 0.7;
  double hysteresis_fraction = 0.05;
  int hysteresis_decisions = 3;
  double idle_decay_s = 10.0;

  // Calibration at start-up.
  std::string calibrate_sizes;  // "256x256,512x512"; empty: the model's native size
  std::string calibrate_levels = "0,0.35,0.7";
  int64_t calibrate_steps = 2;

  // Request bounds and defaults.
  int64_t min_size = 64;
  int64_t max_size = 1024;
  int64_t default_size = 0;  // 0: the model's native resolution
  int64_t max_steps = 150;
  int64_t default_steps = 30;
  double max_guidance = 50.0;
  int64_t max_images = 4;
  int64_t max_prompt_chars = 2000;
  std::string default_sampler = "pndm";
  // LoRA (model/lora): requests' names are NAME.safetensors in lora_dir (empty: no LoRAs), at
  // most max_loras a request; loaded files are kept up to lora_cache bytes (LRU).
  std::string lora_dir;
  int64_t max_loras = 4;
  std::string lora_cache = "512MiB";

  // Bounds on what one client can ask of the server (README: Security, Bounds).
  int64_t max_request_id_bytes = 128;
  int64_t max_request_work = 4LL * 512 * 512 * 50 * 2;  // pixels x images x steps (x2 guided)
  double max_deadline_s = 600;                          // 0: requests without one have none
  int64_t max_receive_bytes = 1LL << 20;                // one request message
  int64_t max_concurrent_streams = 100;                 // per HTTP/2 connection
  std::string grpc_memory_quota = "1GiB";               // gRPC's resource quota
  double min_ping_interval_s = 10;                      // client keepalive pings, at most every
  int64_t max_ping_strikes = 2;                         // ... pings too soon before GOAWAY
  double max_connection_age_s = 600;                    // 0: connections live for ever
  double max_connection_age_grace_s = 600;              // for the calls still running
  // The metrics endpoint (metrics_http.h).
  int64_t metrics_max_connections = 32;
  double metrics_timeout_s = 10;
  int64_t metrics_max_header_bytes = 8192;
  std::string metrics_basic_auth_file;            // user:sha256:HEX lines; empty: no authentication
  std::string metrics_tls_cert, metrics_tls_key;  // empty: plaintext HTTP
  bool metrics_gzip = true;                       // gzip for clients that accept it
  double metrics_refresh_s = 10;  // re-read the basic-auth and TLS files this often; 0: never

  // Security (server/credentials.h, server/auth.h).
  std::string tls_cert, tls_key, tls_client_ca;  // empty: plaintext gRPC
  int64_t tls_refresh_s = 10;
  std::string health_listen;     // plaintext grpc.health.v1 only; empty: none
  std::string auth_tokens_file;  // empty: no authentication
  double auth_refresh_s = 5.0;
  bool reflection = true;

  // Lifecycle and logs.
  double grace_period_s = 30.0;
  std::string log_level = "info";
  std::string log_format = "text";
};

// Registers every option on `app` (flags with LDCP_* environment variables).
void add_options(CLI::App& app, ServerConfig& config);

// "8GiB", "512MiB", "1.5GB", "123456" -> bytes. Throws std::invalid_argument.
int64_t parse_bytes(const std::string& text);
// "0,0.1,0.5" -> levels, each in [0, 1). Throws std::invalid_argument naming `what`.
std::vector<double> parse_levels(const std::string& text, const std::string& what);
// "256x256,512x768" -> (width, height) pairs. Throws std::invalid_argument.
std::vector<std::pair<int64_t, int64_t>> parse_sizes(const std::string& text);

}  // namespace ldcp::server
