// ListModels: the models this server serves, with what each runs. Authenticated like the
// generation methods (a client's `methods=` must name ListModels); the health service stays
// open.

#include <chrono>
#include <string_view>

#include "server/logging.h"
#include "server/memory_budget.h"
#include "server/metrics.h"
#include "server/model_specs.h"
#include "server/service_shared.h"

namespace ldcp::server {
namespace {

void describe_model(const ServiceModel& m, bool is_default, v1::ModelInfo* out) {
  const ModelDescription d = m.engine->describe();
  out->set_name(m.name);
  out->set_is_default(is_default);
  out->set_architecture(d.architecture);
  out->set_native_size(static_cast<uint32_t>(m.default_size));
  out->set_gate_scores(d.gate_scores);
  out->set_gates_file(d.gates_file);
  for (double b : d.flops_budgets) out->add_flops_budgets(b);
  for (const auto& name : d.loaded_loras) out->add_loaded_loras(name);
  out->set_weights_bytes(m.weights_bytes);
  if (m.png) out->set_hash(m.png->hash);
}

}  // namespace

grpc::ServerUnaryReactor* GenerationService::ListModels(grpc::CallbackServerContext* context,
                                                        const v1::ListModelsRequest* /*request*/,
                                                        v1::ListModelsResponse* response) {
  const auto start = std::chrono::steady_clock::now();
  auto* reactor = context->DefaultReactor();
  Identity who;
  grpc::Status status;
  if (shared_->auth) {
    const auto& md = context->client_metadata();
    const auto it = md.find("authorization");
    who = shared_->auth->authenticate(it == md.end()
                                          ? std::string_view()
                                          : std::string_view(it->second.data(), it->second.size()));
    if (who.code != AuthCode::kOk) {
      status = grpc::Status(to_grpc(who.code), who.message);
    } else if (!Authenticator::may_call(who, "ListModels")) {
      status = grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                            "client '" + who.client + "' may not call ListModels");
    }
  }
  if (status.ok()) {
    int64_t weights = 0;
    for (size_t i = 0; i < shared_->models.size(); ++i) {
      describe_model(shared_->models[i], i == 0, response->add_models());
      weights += shared_->models[i].weights_bytes;
    }
    response->set_weights_bytes(weights);
    if (shared_->budget) response->set_memory_budget_bytes(shared_->budget->budget_bytes());
  } else {
    log_debug("ListModels refused: " + status.error_message());
  }
  if (shared_->metrics) {
    const char* code = status.ok() ? "OK"
                       : status.error_code() == grpc::StatusCode::PERMISSION_DENIED
                           ? "PERMISSION_DENIED"
                           : auth_code_name(who.code);
    shared_->metrics->request_finished(
        "ListModels", code,
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
        who.client.empty() ? "anonymous" : who.client, kNoModelLabel);
  }
  reactor->Finish(status);
  return reactor;
}

}  // namespace ldcp::server
