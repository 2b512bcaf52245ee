#pragma once
// Prometheus metrics of the service (prometheus-cpp registry; main.cpp exposes it on
// --metrics-listen). Names follow Prometheus conventions; the README lists them.

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace ldcp::server {

class Metrics {
 public:
  Metrics();
  std::shared_ptr<prometheus::Registry> registry() const { return registry_; }

  // A finished RPC: method "Generate" or "GenerateStream", status a gRPC code name ("OK",
  // "INVALID_ARGUMENT", ...), latency from arrival to the response.
  // client: the caller's name from --auth-tokens-file, "unauthenticated" for a request without a
  // valid token, "anonymous" when authentication is off (a bounded label: ldcp_requests_total).
  // model: a name from --model, or "none" for a request rejected before its model was known
  // and for ListModels (bounded: the service passes no other; ldcp_requests_total and
  // ldcp_request_duration_seconds).
  void request_finished(const std::string& method, const std::string& status, double seconds,
                        const std::string& client = "anonymous", const std::string& model = "none");
  // Zero-valued series for a client, so queries see it before its first request.
  void add_client(const std::string& client);
  // Zero-valued series for a model (main.cpp: every --model), as for clients.
  void add_model(const std::string& model);
  void queue_wait(double seconds);
  void denoising_step(double seconds);
  // One served request: peak memory of its batch, pruning ratio, the level it ran at.
  void request_served(int64_t peak_bytes, double pruning_ratio, double level, int64_t images);
  // A served AUTO request's pruning ratio (ldcp_auto_pruning_ratio, the autoscaler's signal):
  // the pruning the server chose, not the FIXED levels clients choose.
  void auto_request_served(double pruning_ratio);
  void batch_started(int64_t requests, int64_t images);
  void oom_retry();
  // A batch whose measured peak (allocated, or on CUDA reserved) exceeded the budget.
  void budget_overrun();
  // An AUTO batch's level decision; reason: "none" (level 0), "memory", "throughput" or
  // "request_cap" (see AutoLevelPolicy).
  void auto_level_decision(const std::string& reason);
  uint64_t budget_overruns() const;
  void set_queue_depth(int64_t n);
  void set_queue_capacity(int64_t n);  // --max-queue: depth / capacity is the fill ratio
  void set_in_flight(int64_t n);
  void set_memory(int64_t in_use_bytes, int64_t budget_bytes);
  void set_auto_level(double level);
  // ldcp_model_dtype_info{dtype="..."} 1: the compute dtype --dtype resolved to (auto: per device).
  void set_dtype(const std::string& name);

 private:
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>* requests_;
  prometheus::Family<prometheus::Histogram>* latency_;
  prometheus::Histogram* queue_wait_;
  prometheus::Histogram* step_;
  prometheus::Histogram* peak_memory_;
  prometheus::Histogram* pruning_ratio_;
  prometheus::Histogram* auto_pruning_ratio_;
  prometheus::Family<prometheus::Counter>* by_level_;
  prometheus::Histogram* batch_size_;
  prometheus::Counter* batches_;
  prometheus::Counter* images_;
  prometheus::Counter* oom_retries_;
  prometheus::Counter* budget_overruns_;
  prometheus::Family<prometheus::Counter>* level_reasons_;
  prometheus::Gauge* queue_depth_;
  prometheus::Gauge* queue_capacity_;
  prometheus::Gauge* in_flight_;
  prometheus::Gauge* memory_in_use_;
  prometheus::Gauge* memory_budget_;
  prometheus::Gauge* auto_level_;
  std::mutex models_mu_;
  std::vector<std::string> models_;  // add_model's, for add_client's zero series
};

// "0.30": the label value of a pruning level.
std::string level_label(double level);

}  // namespace ldcp::server
