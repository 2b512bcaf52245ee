#pragma once
// The models one ldcp-server serves (--model NAME=PATH, model_specs.h): each loaded, identified
// for the PNG metadata and calibrated at start-up, in the order given (the first is the
// default).
//
// All at start-up, not lazily: a model loaded on a request would stall that request (and every
// one queued behind it) for the load and the calibration runs, and the memory budget is only a
// guarantee when the cost model has measured every model before it serves; with all weights
// resident from the start, the budget's baseline (every model's weights) and each model's
// activation costs are known before the first request, and latency stays predictable. The price:
// every model's weights take device memory all the time (the start-up log and ListModels give
// each one's measured bytes).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model/pipelines/model_identity.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "server/calibration.h"
#include "server/config.h"
#include "server/cost_model.h"
#include "server/model_specs.h"
#include "server/request_scheduler.h"
#include "server/sd_engine.h"
#include "server/service.h"

namespace ldcp::server {

struct LoadedModel {
  ModelSpec spec;
  std::unique_ptr<SdEngine> engine;
  CostModel costs;
  std::vector<CalibrationRun> calibration_runs;
  std::vector<double> calibrated_levels;        // the levels calibration could run (0 first)
  std::optional<pipelines::ModelIdentity> png;  // set: PNGs carry "parameters"
  int64_t weights_bytes = 0;                    // measured: allocated bytes the load added
  int64_t default_size = 0;  // of requests that give none (--default-size or native)
};

using LoadedModels = std::vector<std::unique_ptr<LoadedModel>>;

// Loads every model of `specs` with `options` (each with its own gates file), logging each
// one's measured weight bytes; with --png-metadata, hashes each for the PNGs' text. Throws
// naming the model and the file that failed.
LoadedModels load_models(const std::vector<ModelSpec>& specs,
                         const pipelines::PipelineOptions& options, const ServerConfig& config);

// Calibrates each model's cost model (--calibrate-sizes or its default size, --calibrate-levels,
// every batch size to --max-batch).
void calibrate_models(LoadedModels& models, const ServerConfig& config);

// The highest level every model could calibrate (AUTO's grid stops there).
double highest_common_level(const LoadedModels& models);

// The scheduler's view (engines and cost models) and the measured weights of them all.
std::vector<ScheduledModel> scheduled_models(LoadedModels& models);
int64_t total_weights_bytes(const LoadedModels& models);
// The service's view, in the same order.
std::vector<ServiceModel> served_models(const LoadedModels& models);

}  // namespace ldcp::server
