#pragma once
// What every call of GenerationService shares (service.cpp, list_models.cpp). Internal to the
// service.

#include <atomic>
#include <cstdint>
#include <mutex>
#include <random>
#include <vector>

#include "server/auth.h"
#include "server/service.h"

namespace ldcp::server {

inline grpc::StatusCode to_grpc(AuthCode c) {
  switch (c) {
    case AuthCode::kOk:
      return grpc::StatusCode::OK;
    case AuthCode::kUnauthenticated:
      return grpc::StatusCode::UNAUTHENTICATED;
    case AuthCode::kPermissionDenied:
      return grpc::StatusCode::PERMISSION_DENIED;
    case AuthCode::kResourceExhausted:
      return grpc::StatusCode::RESOURCE_EXHAUSTED;
  }
  return grpc::StatusCode::UNKNOWN;
}

struct GenerationService::Shared {
  Shared(RequestScheduler& s, std::vector<ServiceModel> m, Metrics* metrics_, RequestLimits l,
         const MemoryBudget* b)
      : scheduler(s), models(std::move(m)), metrics(metrics_), limits(std::move(l)), budget(b) {
    for (const auto& model : models) {
      engines.push_back(model.engine);
      limits.models.push_back({model.name, model.default_size});
    }
  }
  RequestScheduler& scheduler;
  std::vector<ServiceModel> models;    // the scheduler's, in its order
  std::vector<const Engine*> engines;  // models[i].engine
  Metrics* metrics;
  RequestLimits limits;        // with every model's name and default size
  const MemoryBudget* budget;  // may be null
  Authenticator* auth = nullptr;
  std::mutex rng_mu;
  std::mt19937_64 rng{std::random_device{}()};
  std::atomic<uint64_t> next_id{1};

  uint64_t random_seed() {
    std::lock_guard lock(rng_mu);
    // Seeds that fit a double exactly, so clients in any language read them back unchanged.
    return rng() & ((uint64_t{1} << 53) - 1);
  }
};

}  // namespace ldcp::server
