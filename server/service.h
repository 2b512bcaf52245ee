#pragma once
// The gRPC front end: ldcp.v1.ImageGeneration on the callback API. Each call validates its
// request (INVALID_ARGUMENT naming the field and its range), submits a Job to the scheduler and
// replies from the job's completion; no gRPC thread waits for model work.

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "ldcp/v1/ldcp.grpc.pb.h"
#include "model/pipelines/model_identity.h"
#include "server/config.h"
#include "server/engine.h"
#include "server/request_scheduler.h"
#include "server/request_validation.h"

namespace ldcp::server {

class Authenticator;
class MemoryBudget;
class Metrics;

// One model as the service sees it (the scheduler's model of the same index).
struct ServiceModel {
  std::string name;  // GenerateRequest.model, GenerateResponse.model, the metrics' label
  Engine* engine = nullptr;
  // Set: A1111's "parameters" text (model/pipelines/generation_parameters.h) in every returned
  // PNG, with this model's name and hash; unset: no metadata.
  std::optional<pipelines::ModelIdentity> png;
  int64_t default_size = 512;  // of requests that give none
  int64_t weights_bytes = 0;   // measured (ListModels)
};

// Checks every field (validate_request, request_validation.h), then what needs the engine of
// the request's model (engines[i] for RequestLimits::models[i]: a FIXED FLOPs budget's step
// levels, the pipeline's own checks), and fills `job` (model, params, pruning, priority).
// Returns an empty string when valid, otherwise the message for INVALID_ARGUMENT.
// `random_seed` is used when the request has no seed.
std::string request_to_job(const v1::GenerateRequest& request, const RequestLimits& limits,
                           const std::vector<const Engine*>& engines, uint64_t random_seed,
                           Job& job);

// Both generation methods are registered raw (ByteBuffer in and out): the service parses the
// request itself, so bytes protobuf cannot parse get INVALID_ARGUMENT, a count and a log line
// like any other rejected request (gRPC's generated handler answers them itself, without
// either). ListModels takes an empty message: the generated callback handler.
using RawImageGenerationService = v1::ImageGeneration::WithRawCallbackMethod_Generate<
    v1::ImageGeneration::WithRawCallbackMethod_GenerateStream<
        v1::ImageGeneration::WithCallbackMethod_ListModels<v1::ImageGeneration::Service>>>;

class GenerationService final : public RawImageGenerationService {
 public:
  // `models`: at least one, the first the default; `budget` (may be null) for ListModels.
  GenerationService(RequestScheduler& scheduler, std::vector<ServiceModel> models, Metrics* metrics,
                    RequestLimits limits, const MemoryBudget* budget = nullptr);

  // Bearer tokens and per-client limits (server/auth.h); null (the default): no authentication.
  // Set before the server starts.
  void set_authenticator(Authenticator* auth);

  grpc::ServerUnaryReactor* Generate(grpc::CallbackServerContext* context,
                                     const grpc::ByteBuffer* request,
                                     grpc::ByteBuffer* response) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* GenerateStream(
      grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) override;
  // list_models.cpp
  grpc::ServerUnaryReactor* ListModels(grpc::CallbackServerContext* context,
                                       const v1::ListModelsRequest* request,
                                       v1::ListModelsResponse* response) override;

  // Internal, for the call objects.
  struct Shared;

 private:
  std::shared_ptr<Shared> shared_;
};

}  // namespace ldcp::server
