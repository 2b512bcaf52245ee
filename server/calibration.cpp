#include "server/calibration.h"

#include <algorithm>
#include <stdexcept>

#include "server/logging.h"

namespace ldcp::server {

std::vector<int64_t> calibration_batch_sizes(int64_t max_batch) {
  std::vector<int64_t> sizes;
  for (int64_t n = 1; n <= std::max<int64_t>(1, max_batch); ++n) sizes.push_back(n);
  return sizes;
}

std::vector<double> calibrate(Engine& engine, CostModel& costs, const CalibrationPlan& plan,
                              std::vector<CalibrationRun>* runs) {
  std::vector<double> ran;
  auto levels = plan.levels;
  if (std::find(levels.begin(), levels.end(), 0.0) == levels.end())
    levels.insert(levels.begin(), 0.0);
  std::sort(levels.begin(), levels.end());
  for (double level : levels) {
    bool ok = true;
    for (const auto& [w, h] : plan.sizes) {
      for (int64_t n : plan.batch_sizes) {
        pipelines::GenerationParams p;
        p.prompt = "a calibration run";
        p.width = w;
        p.height = h;
        p.steps = plan.steps;
        p.sampler = plan.sampler;
        p.seed = 0;
        p.num_images = 1;
        p.pruning =
            level > 0 ? pruning::PruningSchedule::fixed(level) : pruning::PruningSchedule::off();
        engine.complete_calibration_params(p);
        std::vector<pipelines::GenerationParams> batch(static_cast<size_t>(n), p);
        std::vector<pipelines::GenerationResult> results;
        const auto start = std::chrono::steady_clock::now();
        try {
          results = engine.run(batch, {});
        } catch (const std::invalid_argument& e) {
          if (level == 0.0) throw;
          log_warn(strf("calibration: level %.2f left out of AUTO's levels: %s", level, e.what()));
          ok = false;
          break;
        }
        if (results.empty()) throw std::runtime_error("calibration: the engine returned nothing");
        const int64_t bytes = results[0].peak_memory_above_weights_bytes;
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        costs.add_measurement(n, w, h, level, bytes, p.guidance_scale > 1.0);
        const auto& t = results[0].timings;
        const double fixed = t.total_s > 0 ? std::max(0.0, t.total_s - t.denoising_s) : 0.0;
        if (runs) runs->push_back({level, n, plan.steps, w * h, seconds, fixed});
        log_info(
            strf("calibration: %lld image(s) %lldx%lld level %.2f: peak %lld bytes above "
                 "weights, %.2f s",
                 static_cast<long long>(n), static_cast<long long>(w), static_cast<long long>(h),
                 level, static_cast<long long>(bytes), seconds));
      }
      if (!ok) break;
    }
    if (ok) ran.push_back(level);
  }
  // Pruning only lowers the peak when the U-Net sets it; say so when something else does.
  if (ran.size() > 1) {
    for (const auto& [w, h] : plan.sizes) {
      const int64_t full = costs.estimate(1, w, h, 0.0);
      const int64_t pruned = costs.estimate(1, w, h, ran.back());
      if (pruned >= full * 0.98) {
        log_warn(
            strf("calibration: at %lldx%lld pruning to level %.2f does not lower the peak "
                 "(%lld vs %lld bytes): the decoder or the text encoder sets it, so AUTO "
                 "cannot trade quality for memory there; --vae-tile-size may help",
                 static_cast<long long>(w), static_cast<long long>(h), ran.back(),
                 static_cast<long long>(pruned), static_cast<long long>(full)));
      }
    }
  }
  return ran;
}

}  // namespace ldcp::server
