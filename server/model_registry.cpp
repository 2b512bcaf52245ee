#include "server/model_registry.h"

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <stdexcept>

#include "model/runtime/memory_meter.h"
#include "server/logging.h"

namespace ldcp::server {

LoadedModels load_models(const std::vector<ModelSpec>& specs,
                         const pipelines::PipelineOptions& options, const ServerConfig& c) {
  LoadedModels out;
  runtime::MemoryMeter meter(options.device);  // CPU: counts the weights from the first load
  for (const auto& spec : specs) {
    if (!spec.gates.empty() && !std::filesystem::is_regular_file(spec.gates)) {
      throw std::invalid_argument("--gates: no such file: " + spec.gates +
                                  (specs.size() > 1 ? " (model " + spec.name + ")" : ""));
    }
  }
  for (const auto& spec : specs) {
    auto m = std::make_unique<LoadedModel>();
    m->spec = spec;
    auto model_options = options;
    model_options.gates_file = spec.gates;
    const int64_t before = meter.stats().allocated_bytes;
    try {
      m->engine = std::make_unique<SdEngine>(spec.path, model_options, spec.name);
    } catch (const std::exception& e) {
      if (specs.size() == 1) throw;
      throw std::runtime_error("model " + spec.name + ": " + e.what());
    }
    m->weights_bytes = std::max<int64_t>(0, meter.stats().allocated_bytes - before);
    m->default_size = c.default_size > 0 ? c.default_size : m->engine->native_resolution();
    log_info(strf("model %s: %s, %lld bytes of weights, native size %lld, linears %s (%s)",
                  spec.name.c_str(), spec.path.c_str(), static_cast<long long>(m->weights_bytes),
                  static_cast<long long>(m->engine->native_resolution()),
                  runtime::linear_backend_name(m->engine->linear_backend().backend).c_str(),
                  m->engine->linear_backend().reason.c_str()));
    if (c.png_metadata) {
      const auto start = std::chrono::steady_clock::now();
      m->png = pipelines::identify_model(spec.path, c.fp16_weights, spec.gates);
      // A named model is called by its name in the PNGs too; a single unnamed one as before.
      if (spec.named) m->png->name = spec.name;
      m->png->gate_scores = m->engine->score_source();
      m->png->lora_hashes = std::make_shared<pipelines::LoraFileHashes>(c.lora_dir);
      log_info(
          strf("PNG metadata: model %s, hash %s (SHA-256 of %s, %.1f s)", m->png->name.c_str(),
               m->png->hash.c_str(), m->png->hashed_file.string().c_str(),
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()));
    }
    out.push_back(std::move(m));
  }
  if (!c.png_metadata) log_info("PNG metadata: off (--no-png-metadata)");
  return out;
}

void calibrate_models(LoadedModels& models, const ServerConfig& c) {
  for (auto& m : models) {
    CalibrationPlan plan;
    plan.sizes = parse_sizes(c.calibrate_sizes);
    if (plan.sizes.empty()) plan.sizes = {{m->default_size, m->default_size}};
    plan.levels = parse_levels(c.calibrate_levels, "--calibrate-levels");
    // Every batch size up to --max-batch is measured, not extrapolated: the peak is not linear
    // in the batch (allocator rounding, attention buffers), and an underestimate is an OOM on
    // a GPU.
    plan.batch_sizes = calibration_batch_sizes(c.max_batch);
    plan.steps = c.calibrate_steps;
    plan.sampler = c.default_sampler;
    if (models.size() > 1) log_info("calibrating model " + m->spec.name);
    m->calibrated_levels = calibrate(*m->engine, m->costs, plan, &m->calibration_runs);
  }
}

double highest_common_level(const LoadedModels& models) {
  double top = 1.0;
  for (const auto& m : models) {
    top = std::min(top, m->calibrated_levels.empty() ? 0.0 : m->calibrated_levels.back());
  }
  return models.empty() ? 0.0 : top;
}

std::vector<ScheduledModel> scheduled_models(LoadedModels& models) {
  std::vector<ScheduledModel> out;
  for (auto& m : models) out.push_back({m->engine.get(), &m->costs});
  return out;
}

int64_t total_weights_bytes(const LoadedModels& models) {
  int64_t total = 0;
  for (const auto& m : models) total += m->weights_bytes;
  return total;
}

std::vector<ServiceModel> served_models(const LoadedModels& models) {
  std::vector<ServiceModel> out;
  for (const auto& m : models) {
    out.push_back({m->spec.name, m->engine.get(), m->png, m->default_size, m->weights_bytes});
  }
  return out;
}

}  // namespace ldcp::server
