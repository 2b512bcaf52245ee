#include "server/metrics.h"

#include <cstdio>

namespace ldcp::server {
namespace {

using prometheus::Histogram;

Histogram::BucketBoundaries latency_buckets() {
  return {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300};
}

Histogram::BucketBoundaries step_buckets() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5};
}

Histogram::BucketBoundaries byte_buckets() {
  Histogram::BucketBoundaries b;
  for (double v = 1 << 20; v <= 256.0 * (1LL << 30); v *= 2) b.push_back(v);  // 1 MiB .. 256 GiB
  return b;
}

}  // namespace

std::string level_label(double level) {
  char s[16];
  std::snprintf(s, sizeof s, "%.2f", level);
  return s;
}

Metrics::Metrics() : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  requests_ = &prometheus::BuildCounter()
                   .Name("ldcp_requests_total")
                   .Help("Finished RPCs by method, gRPC status and client")
                   .Register(r);
  latency_ = &prometheus::BuildHistogram()
                  .Name("ldcp_request_duration_seconds")
                  .Help("Time from a request's arrival to its response, by method")
                  .Register(r);
  queue_wait_ = &prometheus::BuildHistogram()
                     .Name("ldcp_queue_wait_seconds")
                     .Help("Time requests waited in the queue before running")
                     .Register(r)
                     .Add({}, latency_buckets());
  step_ = &prometheus::BuildHistogram()
               .Name("ldcp_denoising_step_duration_seconds")
               .Help("Duration of one denoising step of a U-Net batch")
               .Register(r)
               .Add({}, step_buckets());
  peak_memory_ = &prometheus::BuildHistogram()
                      .Name("ldcp_request_peak_memory_bytes")
                      .Help("Measured peak device memory of the batch that served a request")
                      .Register(r)
                      .Add({}, byte_buckets());
  pruning_ratio_ = &prometheus::BuildHistogram()
                        .Name("ldcp_pruning_ratio")
                        .Help("Fraction of the U-Net's FLOPs pruned per request (every mode)")
                        .Register(r)
                        .Add({}, Histogram::BucketBoundaries{0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6,
                                                             0.7, 0.8, 0.9, 1});
  auto_pruning_ratio_ =
      &prometheus::BuildHistogram()
           .Name("ldcp_auto_pruning_ratio")
           .Help(
               "Fraction of the U-Net's FLOPs pruned per AUTO request (the level the server "
               "chose; FIXED and OFF requests are not counted)")
           .Register(r)
           .Add({}, Histogram::BucketBoundaries{0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8,
                                                0.9, 1});
  by_level_ = &prometheus::BuildCounter()
                   .Name("ldcp_requests_by_level_total")
                   .Help("Served requests by the highest pruning level they ran at")
                   .Register(r);
  batch_size_ = &prometheus::BuildHistogram()
                     .Name("ldcp_batch_size")
                     .Help("Requests per U-Net batch")
                     .Register(r)
                     .Add({}, Histogram::BucketBoundaries{1, 2, 3, 4, 6, 8, 12, 16, 32});
  batches_ = &prometheus::BuildCounter()
                  .Name("ldcp_batches_total")
                  .Help("U-Net batches run")
                  .Register(r)
                  .Add({});
  images_ = &prometheus::BuildCounter()
                 .Name("ldcp_images_generated_total")
                 .Help("Images returned to clients")
                 .Register(r)
                 .Add({});
  oom_retries_ = &prometheus::BuildCounter()
                      .Name("ldcp_oom_retries_total")
                      .Help("Requests retried at a higher level after running out of memory")
                      .Register(r)
                      .Add({});
  budget_overruns_ = &prometheus::BuildCounter()
                          .Name("ldcp_budget_overruns_total")
                          .Help("Batches whose measured peak memory exceeded the budget")
                          .Register(r)
                          .Add({});
  level_reasons_ = &prometheus::BuildCounter()
                        .Name("ldcp_auto_level_decisions_total")
                        .Help("AUTO batches by what set their pruning level")
                        .Register(r);
  for (const char* reason : {"none", "memory", "throughput", "request_cap"}) {
    level_reasons_->Add({{"reason", reason}});
  }
  queue_depth_ = &prometheus::BuildGauge()
                      .Name("ldcp_queue_depth")
                      .Help("Requests waiting in the queue")
                      .Register(r)
                      .Add({});
  queue_capacity_ = &prometheus::BuildGauge()
                         .Name("ldcp_queue_capacity")
                         .Help("Requests the queue holds before new ones get UNAVAILABLE")
                         .Register(r)
                         .Add({});
  in_flight_ = &prometheus::BuildGauge()
                    .Name("ldcp_requests_in_flight")
                    .Help("Requests running on the model now")
                    .Register(r)
                    .Add({});
  memory_in_use_ = &prometheus::BuildGauge()
                        .Name("ldcp_memory_in_use_bytes")
                        .Help("Device memory allocated now (allocator statistics)")
                        .Register(r)
                        .Add({});
  memory_budget_ = &prometheus::BuildGauge()
                        .Name("ldcp_memory_budget_bytes")
                        .Help("Device memory the server may use")
                        .Register(r)
                        .Add({});
  auto_level_ = &prometheus::BuildGauge()
                     .Name("ldcp_auto_pruning_level")
                     .Help("The pruning level AUTO requests get now (with hysteresis)")
                     .Register(r)
                     .Add({});
}

void Metrics::request_finished(const std::string& method, const std::string& status, double seconds,
                               const std::string& client, const std::string& model) {
  requests_->Add({{"method", method}, {"status", status}, {"client", client}, {"model", model}})
      .Increment();
  latency_->Add({{"method", method}, {"model", model}}, latency_buckets()).Observe(seconds);
}

// Zero series so that dashboards and queries see every method, client and model before the
// first request.
void Metrics::add_client(const std::string& client) {
  std::lock_guard lock(models_mu_);
  for (const auto& model : models_) {
    for (const char* m : {"Generate", "GenerateStream"}) {
      requests_->Add({{"method", m}, {"status", "OK"}, {"client", client}, {"model", model}});
    }
  }
}

void Metrics::add_model(const std::string& model) {
  {
    std::lock_guard lock(models_mu_);
    models_.push_back(model);
  }
  for (const char* m : {"Generate", "GenerateStream"}) {
    latency_->Add({{"method", m}, {"model", model}}, latency_buckets());
    requests_->Add({{"method", m}, {"status", "OK"}, {"client", "anonymous"}, {"model", model}});
  }
}

void Metrics::queue_wait(double seconds) { queue_wait_->Observe(seconds); }
void Metrics::denoising_step(double seconds) { step_->Observe(seconds); }

void Metrics::request_served(int64_t peak_bytes, double pruning_ratio, double level,
                             int64_t images) {
  peak_memory_->Observe(static_cast<double>(peak_bytes));
  pruning_ratio_->Observe(pruning_ratio);
  by_level_->Add({{"level", level_label(level)}}).Increment();
  images_->Increment(static_cast<double>(images));
}

void Metrics::auto_request_served(double pruning_ratio) {
  auto_pruning_ratio_->Observe(pruning_ratio);
}

void Metrics::batch_started(int64_t requests, int64_t /*images*/) {
  batch_size_->Observe(static_cast<double>(requests));
  batches_->Increment();
}

void Metrics::oom_retry() { oom_retries_->Increment(); }
void Metrics::budget_overrun() { budget_overruns_->Increment(); }
uint64_t Metrics::budget_overruns() const {
  return static_cast<uint64_t>(budget_overruns_->Value());
}
void Metrics::auto_level_decision(const std::string& reason) {
  level_reasons_->Add({{"reason", reason}}).Increment();
}
void Metrics::set_queue_depth(int64_t n) { queue_depth_->Set(static_cast<double>(n)); }
void Metrics::set_queue_capacity(int64_t n) { queue_capacity_->Set(static_cast<double>(n)); }
void Metrics::set_in_flight(int64_t n) { in_flight_->Set(static_cast<double>(n)); }
void Metrics::set_dtype(const std::string& name) {
  prometheus::BuildGauge()
      .Name("ldcp_model_dtype_info")
      .Help("The compute dtype of the model (--dtype, auto resolved per device): value 1")
      .Register(*registry_)
      .Add({{"dtype", name}})
      .Set(1);
}

void Metrics::set_memory(int64_t in_use, int64_t budget) {
  memory_in_use_->Set(static_cast<double>(in_use));
  memory_budget_->Set(static_cast<double>(budget));
}
void Metrics::set_auto_level(double level) { auto_level_->Set(level); }

}  // namespace ldcp::server
