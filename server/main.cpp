// ldcp-server: Stable Diffusion 1.5 with learned dynamic channel pruning over gRPC.
// Loads the model, calibrates the memory cost model, then serves ldcp.v1.ImageGeneration, the
// grpc.health.v1 health service and server reflection, with Prometheus metrics on their own port.
// Optionally TLS or mutual TLS, bearer tokens per client and a plaintext health-only listener
// (README, Security).
// SIGTERM/SIGINT: health turns NOT_SERVING, new requests get UNAVAILABLE, running and queued ones
// get --grace-period seconds to finish, then the process exits 0. A gRPC listener that stops
// accepting (grpc_listener_watch.h) drains the same way and exits 75, for a supervisor to restart.

#include <algorithm>
#include <climits>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>

#include "model/runtime/device.h"
#include "model/runtime/dtype.h"
#include "server/auth.h"
#include "server/calibration.h"
#include "server/config.h"
#include "server/cost_model.h"
#include "server/credentials.h"
#include "server/grpc_listener_watch.h"
#include "server/host_memory.h"
#include "server/logging.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "server/metrics_http.h"
#include "server/model_registry.h"
#include "server/model_specs.h"
#include "server/request_scheduler.h"
#include "server/sd_engine.h"
#include "server/service.h"

namespace {

using namespace ldcp::server;

// The soft RLIMIT_NOFILE raised to the hard limit: gRPC 1.51's listener stops accepting for good
// after one accept() fails with EMFILE ("Failed accept4: Too many open files"; the metrics
// endpoint retries, metrics_http.h), so descriptors must not run out under many connections.
void raise_open_files_limit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= lim.rlim_max) return;
  const rlim_t before = lim.rlim_cur;
  lim.rlim_cur = lim.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &lim) == 0) {
    log_info(strf("open files limit raised from %llu to %llu",
                  static_cast<unsigned long long>(before),
                  static_cast<unsigned long long>(lim.rlim_max)));
  }
}

int64_t grpc_memory_quota(const ServerConfig& c) {
  const int64_t quota = parse_bytes(c.grpc_memory_quota);
  if (quota < (16 << 20)) {
    throw std::invalid_argument("--grpc-memory-quota: at least 16MiB, got " +
                                c.grpc_memory_quota.substr(0, 32));
  }
  return quota;
}

// The gRPC bounds of README's Security section (config.h: Bounds). The hard receive limit is
// twice --max-receive-bytes: the service answers requests between the two with a message naming
// the option (gRPC's own message for larger ones names none).
void apply_transport_bounds(grpc::ServerBuilder& builder, const ServerConfig& c) {
  builder.SetMaxReceiveMessageSize(
      static_cast<int>(std::min<int64_t>(2 * c.max_receive_bytes, INT32_MAX)));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS,
                             static_cast<int>(c.max_concurrent_streams));
  const auto ms = [](double s) {
    return static_cast<int>(std::min<double>(std::llround(s * 1000), INT32_MAX));
  };
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             ms(c.min_ping_interval_s));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, static_cast<int>(c.max_ping_strikes));
  if (c.max_connection_age_s > 0) {
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_MS, ms(c.max_connection_age_s));
    builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_AGE_GRACE_MS,
                               ms(c.max_connection_age_grace_s));
  }
  grpc::ResourceQuota resource_quota("ldcp-server");
  resource_quota.Resize(static_cast<size_t>(grpc_memory_quota(c)));
  builder.SetResourceQuota(resource_quota);
}

int serve(const ServerConfig& c) {
  const auto specs = parse_model_specs(c.models, c.gates);
  ldcp::pipelines::PipelineOptions options;
  // The name now; the CUDA backend and the device's presence once every other option is checked.
  options.device = ldcp::runtime::device_from_name(c.device);
  const auto dtype = ldcp::runtime::resolve_dtype(c.dtype, options.device);
  options.dtype = dtype.dtype;
  options.prefer_fp16_weights = c.fp16_weights;
  options.linear_backend = c.linear_backend;
  options.score_source = c.score_source;
  options.vae_tile_size = c.vae_tile_size;
  if (!c.lora_dir.empty() && !std::filesystem::is_directory(c.lora_dir)) {
    throw std::invalid_argument("--lora-dir: no such directory: " + c.lora_dir);
  }
  options.lora_dir = c.lora_dir;
  options.lora_cache_bytes = parse_bytes(c.lora_cache);
  if (c.min_size > c.max_size) throw std::invalid_argument("--min-size exceeds --max-size");

  // Security settings are checked before the model loads (a bad file fails at once).
  TlsOptions tls{c.tls_cert, c.tls_key, c.tls_client_ca, static_cast<unsigned>(c.tls_refresh_s)};
  check_tls_options(tls);
  Authenticator auth(c.auth_tokens_file,
                     std::chrono::milliseconds(static_cast<int64_t>(c.auth_refresh_s * 1000)));

  grpc_memory_quota(c);  // checked before the model loads
  raise_open_files_limit();
  // Metrics first: the endpoint answers (and a bad address fails) before the model loads.
  Metrics metrics;
  metrics.set_dtype(dtype.name);
  MetricsHttpOptions metrics_options;
  metrics_options.max_connections = c.metrics_max_connections;
  metrics_options.timeout =
      std::chrono::milliseconds(static_cast<int64_t>(std::ceil(c.metrics_timeout_s * 1000)));
  metrics_options.max_header_bytes = c.metrics_max_header_bytes;
  metrics_options.basic_auth_file = c.metrics_basic_auth_file;
  metrics_options.tls_cert = c.metrics_tls_cert;
  metrics_options.tls_key = c.metrics_tls_key;
  metrics_options.gzip = c.metrics_gzip;
  metrics_options.refresh =
      std::chrono::milliseconds(static_cast<int64_t>(std::ceil(c.metrics_refresh_s * 1000)));
  MetricsHttpServer metrics_http(c.metrics_listen, metrics.registry(), metrics_options);

  std::string names, paths;  // paths: "PATH" for one unnamed model, else "NAME=PATH, ..."
  for (const auto& m : specs) {
    names += (names.empty() ? "" : ", ") + m.name;
    paths += (paths.empty() ? "" : ", ") + (m.named ? m.name + "=" : std::string()) + m.path;
  }
  log_info("loading " + paths + " on " + c.device + " (" + dtype.name + ", " + dtype.reason + ")");
  ldcp::runtime::require_device(options.device);
  auto models = load_models(specs, options, c);
  SdEngine& engine = *models.front()->engine;  // the device's meter is every model's
  int64_t budget_bytes = c.memory_budget.empty() ? 0 : parse_bytes(c.memory_budget);
  const int64_t headroom = parse_bytes(c.memory_headroom);
  if (budget_bytes == 0 && engine.memory().device_total_bytes <= 0) {
    // CPU without --memory-budget: the cgroup's limit (a pod's memory limit) or the machine's.
    if (const auto host = host_memory_limit()) {
      budget_bytes = host->bytes - headroom;
      if (budget_bytes <= 0) {
        throw std::invalid_argument("--memory-headroom leaves nothing of the " +
                                    std::to_string(host->bytes) + " bytes of the " + host->source);
      }
      log_info(strf("memory budget from the %s: %lld bytes less --memory-headroom %lld",
                    host->source.c_str(), static_cast<long long>(host->bytes),
                    static_cast<long long>(headroom)));
    }
  }
  MemoryBudget budget(budget_bytes, headroom, [&engine] { return engine.memory(); });
  metrics.set_memory(budget.in_use_bytes(), budget.budget_bytes());

  // Calibration: real runs of every model at the configured sizes and levels. The baseline
  // after it holds every model's weights: the budget's free memory for activations is the
  // budget less all of them.
  calibrate_models(models, c);
  budget.set_baseline_from_measurement();
  log_info(
      strf("memory budget %lld bytes, %lld in use with the model(s) loaded (weights of %zu "
           "model(s): %lld bytes)",
           static_cast<long long>(budget.budget_bytes()),
           static_cast<long long>(budget.baseline_bytes()), models.size(),
           static_cast<long long>(total_weights_bytes(models))));
  if (budget.capacity_bytes() <= 0) {
    throw std::invalid_argument(
        strf("the loaded models take %lld bytes, the whole memory budget of %lld: nothing is left "
             "for a batch (raise --memory-budget or serve fewer models)",
             static_cast<long long>(budget.baseline_bytes()),
             static_cast<long long>(budget.budget_bytes())));
  }

  SchedulerConfig sc;
  sc.max_queue = c.max_queue;
  sc.max_batch = c.max_batch;
  sc.batch_window = std::chrono::milliseconds(c.batch_window_ms);
  sc.workers = c.workers;
  sc.max_level = c.max_level;
  sc.hysteresis_fraction = c.hysteresis_fraction;
  sc.hysteresis_decisions = c.hysteresis_decisions;
  sc.idle_decay = std::chrono::milliseconds(static_cast<int64_t>(c.idle_decay_s * 1000));
  // AUTO's grid: the configured levels, up to the highest level calibration could run on every
  // model.
  const double top = highest_common_level(models);
  sc.levels.clear();
  for (double l : parse_levels(c.levels, "--levels")) {
    if (l <= top + 1e-12) sc.levels.push_back(l);
  }
  metrics.set_queue_capacity(sc.max_queue);
  RequestScheduler scheduler(scheduled_models(models), budget, &metrics, sc);
  for (size_t i = 0; i < models.size(); ++i) {
    for (const auto& r : models[i]->calibration_runs) {
      scheduler.auto_policy(i).record_batch(r.level, r.images, r.steps, r.seconds, r.fixed_seconds,
                                            r.pixels);
    }
  }
  for (const auto& m : models) metrics.add_model(m->spec.name);
  GenerationService service(scheduler, served_models(models), &metrics,
                            RequestLimits::from(c, engine.native_resolution()), &budget);
  service.set_authenticator(&auth);
  for (const auto& name : auth.client_names()) metrics.add_client(name);

  grpc::EnableDefaultHealthCheckService(true);
  std::optional<HealthOnlyServer> health_only;
  if (!c.health_listen.empty()) health_only.emplace(c.health_listen);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (!c.reflection) disable_reflection(builder);
  int port = 0;
  builder.AddListeningPort(c.listen, server_credentials(tls), &port);
  builder.RegisterService(&service);
  builder.SetMaxSendMessageSize(static_cast<int>(c.max_message_bytes));
  apply_transport_bounds(builder, c);
  auto server = builder.BuildAndStart();
  if (!server || port == 0) throw std::runtime_error("cannot listen on " + c.listen);
  auto* health = server->GetHealthCheckService();
  health->SetServingStatus(true);
  health->SetServingStatus("ldcp.v1.ImageGeneration", true);
  if (health_only) {
    health_only->set_serving(true);
    health_only->set_serving("ldcp.v1.ImageGeneration", true);
  }
  log_info(strf("serving %s on %s (port %d), metrics on %s (port %d) /metrics", names.c_str(),
                c.listen.c_str(), port, c.metrics_listen.c_str(), metrics_http.port()));
  log_info(strf("gRPC transport: %s; authentication: %s; reflection %s; health-only listener %s",
                describe(tls).c_str(),
                auth.enabled() ? ("bearer tokens from " + c.auth_tokens_file).c_str() : "off",
                c.reflection ? "on" : "off",
                health_only
                    ? strf("on %s (port %d)", c.health_listen.c_str(), health_only->port()).c_str()
                    : "off"));

  boost::asio::io_context io;
  boost::asio::signal_set signals(io, SIGINT, SIGTERM);
  int exit_status = 0;
  bool draining = false;
  const auto drain = [&](const std::string& why) {
    if (draining) return;
    draining = true;
    log_info(strf("%s: draining (grace period %g s)", why.c_str(), c.grace_period_s));
    health->SetServingStatus(false);
    if (health_only) health_only->set_serving(false);
    scheduler.drain();
    const auto grace = std::chrono::milliseconds(static_cast<int64_t>(c.grace_period_s * 1000));
    if (!scheduler.wait_idle(grace)) {
      log_warn(strf("grace period over with %lld queued and %lld running; stopping them",
                    static_cast<long long>(scheduler.queue_depth()),
                    static_cast<long long>(scheduler.running_requests())));
      scheduler.abort_all("the server is shutting down (grace period over)");
      scheduler.wait_idle(std::chrono::seconds(10));
    }
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    signals.cancel();  // io.run() returns
  };
  signals.async_wait([&](const boost::system::error_code& ec, int signo) {
    if (!ec) drain(strf("signal %d", signo));
  });
  // gRPC logs a dead listener from its own thread, holding its locks: the drain runs here.
  watch_grpc_listeners([&](const std::string& message) {
    boost::asio::post(io, [&, message] {
      if (draining) return;
      log_error("gRPC stopped accepting connections (" + message + "); exiting with status " +
                std::to_string(kListenerStoppedExit) + " for the supervisor to restart the server");
      exit_status = kListenerStoppedExit;
      drain("listener stopped");
    });
  });
  struct StopWatching {  // the hook refers to io: gone before it is
    ~StopWatching() { watch_grpc_listeners({}); }
  } stop_watching;
  io.run();
  // A repeated SIGTERM (an impatient supervisor) must not kill the process while it tears down
  // after a drain: the exit status stays the drain's.
  signals.clear();
  std::signal(SIGINT, SIG_IGN);
  std::signal(SIGTERM, SIG_IGN);
  server->Wait();
  if (health_only) health_only->shutdown();
  log_info("stopped");
  return exit_status;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "ldcp-server: Stable Diffusion 1.5 with learned dynamic channel pruning over gRPC "
      "(ldcp.v1.ImageGeneration, grpc.health.v1, reflection) with Prometheus metrics.\n"
      "Every option can also be set through the LDCP_* environment variable shown."};
  ServerConfig config;
  add_options(app, config);
  CLI11_PARSE(app, argc, argv);
  setup_logging(config.log_level, config.log_format);
  try {
    return serve(config);
  } catch (const std::exception& e) {
    log_error(e.what());
    return 1;
  }
}
