#pragma once
// The report of `ldcp tune-schedule`: what was measured (FLOPs per level, per-step
// sensitivities), the learned schedules beside the constant level of equal FLOPs, and how both
// did on held-out seeds. Written as tune.json, tune.md and two gnuplot plots.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "model/pruning/step_schedule.h"

namespace ldcp::tools {

struct TuneReport {
  std::string model, scores, sampler, dtype, device;
  int64_t width = 0, height = 0, steps = 0, threads = 0;
  double guidance = 7.5;
  std::vector<std::string> prompts;
  std::vector<int64_t> tuning_seeds, eval_seeds;
  std::vector<double> timesteps;  // of the steps that ran
  pruning::FlopsCurve flops;      // measured
  pruning::StepSensitivity sensitivity;

  struct Budget {
    pruning::StepSchedule schedule;       // learned
    double constant_predicted_error = 0;  // the constant level's, same model
    // Measured on the held-out seeds (NaN when none ran): mean U-Net FLOPs fraction over the
    // steps, and the MSE of each image against the level-0 image of the same prompt and seed.
    double learned_flops = 0, constant_flops = 0;
    std::vector<double> learned_mse, constant_mse;
  };
  std::vector<Budget> budgets;
};

// PSNR in dB (uint8 range) of pooled squared errors: from their mean; infinite when all are 0,
// NaN when there are none.
double pooled_psnr_db(const std::vector<double>& mse);

// The summary table of the schedules (also printed by the command).
std::string schedules_table(const TuneReport& report);

// Writes DIR/tune.json, DIR/tune.md, DIR/sensitivity.png, DIR/schedules.png (gnuplot; its data
// and script in DIR/plots/). Returns the Markdown text.
std::string write_tune_report(const std::filesystem::path& dir, const TuneReport& report);

}  // namespace ldcp::tools
