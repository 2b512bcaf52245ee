#pragma once
// The gRPC front end: ldcp.v1.ImageGeneration on the callback API. Each call validates its
// request (INVALID_ARGUMENT naming the field and its range), submits a Job to the scheduler and
// replies from the job's completion; no gRPC thread waits for model work.

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <string>

#include "ldcp/v1/ldcp.grpc.pb.h"
#include "server/config.h"
#include "server/engine.h"
#include "server/request_scheduler.h"

namespace ldcp::server {

class Authenticator;
class Metrics;

struct RequestLimits {
  int64_t min_size = 64, max_size = 1024, default_size = 512;
  int64_t max_steps = 150, default_steps = 30;
  double max_guidance = 50.0;
  int64_t max_images = 4;
  int64_t max_prompt_chars = 2000;
  std::string default_sampler = "pndm";
  double max_level = 0.7;
  int64_t max_request_id_chars = 128;
  int64_t max_preview_every = 1000;

  static RequestLimits from(const ServerConfig& config, int64_t native_resolution);
};

// Checks every field and fills `job` (params, pruning, priority, id). Returns an empty string
// when valid, otherwise the message for INVALID_ARGUMENT (naming the field and the allowed range).
// `random_seed` is used when the request has no seed.
std::string request_to_job(const v1::GenerateRequest& request, const RequestLimits& limits,
                           const Engine& engine, uint64_t random_seed, Job& job);

class GenerationService final : public v1::ImageGeneration::CallbackService {
 public:
  GenerationService(RequestScheduler& scheduler, Engine& engine, Metrics* metrics,
                    RequestLimits limits);

  // Bearer tokens and per-client limits (server/auth.h); null (the default): no authentication.
  // Set before the server starts.
  void set_authenticator(Authenticator* auth);

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const v1::GenerateRequest* request,
                                     v1::GenerateResponse* response) override;
  grpc::ServerWriteReactor<v1::GenerateEvent>* GenerateStream(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;

  // Internal, for the call objects.
  struct Shared;

 private:
  std::shared_ptr<Shared> shared_;
};

}  // namespace ldcp::server
