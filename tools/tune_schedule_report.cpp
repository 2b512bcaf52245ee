#include "tools/tune_schedule_report.h"

#include <cmath>
#include <fstream>
#include <iostream>
#include <limits>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "tools/measure.h"

namespace ldcp::tools {
namespace {

namespace fs = std::filesystem;

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

nlohmann::json finite_or_null(double v) {
  return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json();
}

// "0.25 .. 0.61" for a schedule's levels.
std::string level_range(const std::vector<double>& levels) {
  return fixed(min_of(levels), 3) + " .. " + fixed(max_of(levels), 3);
}

// A table cell: "-" for what was not measured.
std::string cell(double v, int decimals) { return std::isnan(v) ? "-" : fixed(v, decimals); }

// A gnuplot data column: NaN for missing values.
std::string column(double v) { return std::isfinite(v) ? fixed(v, 6) : std::string("NaN"); }

}  // namespace

double pooled_psnr_db(const std::vector<double>& mse) {
  if (mse.empty()) return std::numeric_limits<double>::quiet_NaN();
  const double m = mean(mse);
  return m == 0 ? std::numeric_limits<double>::infinity() : 10.0 * std::log10(255.0 * 255.0 / m);
}

std::string schedules_table(const TuneReport& r) {
  std::vector<std::vector<std::string>> rows;
  for (const auto& b : r.budgets) {
    const auto& s = b.schedule;
    const double learned = pooled_psnr_db(b.learned_mse), constant = pooled_psnr_db(b.constant_mse);
    const double gain = learned - constant;
    rows.push_back({fixed(s.budget, 3), fixed(s.floor, 2), level_range(s.levels),
                    fixed(s.constant_level, 3), fixed(s.predicted_error, 3),
                    fixed(b.constant_predicted_error, 3), cell(b.learned_flops, 4),
                    cell(b.constant_flops, 4), cell(learned, 2), cell(constant, 2),
                    std::isfinite(gain) ? fixed(gain, 2) : "-"});
  }
  return markdown_table({"budget", "floor", "learned levels", "constant level",
                         "predicted MSE learned", "predicted MSE constant", "FLOPs learned",
                         "FLOPs constant", "PSNR learned dB", "PSNR constant dB", "gain dB"},
                        rows);
}

std::string write_tune_report(const fs::path& dir, const TuneReport& r) {
  fs::create_directories(dir / "plots");
  const auto& grid = r.sensitivity.levels;

  nlohmann::json j;
  j["model"] = r.model;
  j["scores"] = r.scores;
  j["width"] = r.width;
  j["height"] = r.height;
  j["steps"] = r.steps;
  j["sampler"] = r.sampler;
  j["guidance_scale"] = r.guidance;
  j["dtype"] = r.dtype;
  j["device"] = r.device;
  j["threads"] = r.threads;
  j["prompts"] = r.prompts;
  j["tuning_seeds"] = r.tuning_seeds;
  j["eval_seeds"] = r.eval_seeds;
  j["timesteps"] = r.timesteps;
  j["flops_curve"] = {{"levels", r.flops.levels}, {"fractions", r.flops.fractions}};
  j["sensitivity"] = {{"levels", grid}, {"mse", r.sensitivity.error}};
  j["notes"] =
      "sensitivity.mse[i][g]: MSE (uint8 scale) of the final image against the level-0 image "
      "when only step i runs at levels[g], mean over prompts x tuning seeds. flops: U-Net FLOPs "
      "as a fraction of level 0's, counted by the pipeline. psnr_db: pooled over prompts x eval "
      "seeds against the level-0 image; null when infinite (equal images) or not measured.";
  for (const auto& b : r.budgets) {
    const auto& s = b.schedule;
    const double learned = pooled_psnr_db(b.learned_mse), constant = pooled_psnr_db(b.constant_mse);
    j["budgets"].push_back({{"budget", s.budget},
                            {"floor", s.floor},
                            {"levels", s.levels},
                            {"predicted_flops_fraction", s.flops_fraction},
                            {"predicted_mse", s.predicted_error},
                            {"constant_level", s.constant_level},
                            {"constant_predicted_mse", b.constant_predicted_error},
                            {"measured_flops_fraction_learned", finite_or_null(b.learned_flops)},
                            {"measured_flops_fraction_constant", finite_or_null(b.constant_flops)},
                            {"mse_learned", b.learned_mse},
                            {"mse_constant", b.constant_mse},
                            {"psnr_db_learned", finite_or_null(learned)},
                            {"psnr_db_constant", finite_or_null(constant)},
                            {"psnr_gain_db", finite_or_null(learned - constant)}});
  }
  write_text(dir / "tune.json", j.dump(2) + "\n");

  std::ostringstream md;
  md << "# ldcp tune-schedule: " << r.model << "\n\n"
     << r.width << "x" << r.height << ", " << r.steps << " " << r.sampler << " steps ("
     << r.timesteps.size() << " timesteps), guidance " << r.guidance << ", scores " << r.scores
     << ", " << r.prompts.size() << " prompts x " << r.tuning_seeds.size()
     << " tuning seeds; held out: " << r.eval_seeds.size() << " seeds; " << r.dtype << " on "
     << r.device << ", " << r.threads
     << " threads. Sensitivity: MSE of the final image against level 0's with only that step "
        "pruned. FLOPs: mean U-Net FLOPs over the steps as a fraction of level 0's. PSNR: "
        "pooled over the held-out samples, against the level-0 image.\n\n";
  std::vector<std::vector<std::string>> flops_rows;
  for (size_t k = 0; k < r.flops.levels.size(); ++k) {
    flops_rows.push_back({fixed(r.flops.levels[k], 2), fixed(r.flops.fractions[k], 4)});
  }
  md << "## U-Net FLOPs per level (measured)\n\n"
     << markdown_table({"level", "FLOPs fraction"}, flops_rows) << "\n";
  std::vector<std::string> header = {"step", "timestep"};
  for (double l : grid) header.push_back("MSE at " + fixed(l, 2));
  std::vector<std::vector<std::string>> rows;
  for (size_t i = 0; i < r.sensitivity.num_steps(); ++i) {
    std::vector<std::string> row = {std::to_string(i), fixed(r.timesteps[i], 1)};
    for (double e : r.sensitivity.error[i]) row.push_back(fixed(e, 3));
    rows.push_back(row);
  }
  md << "## Sensitivity per step\n\n" << markdown_table(header, rows) << "\n";
  md << "## Schedules (learned vs the constant level of equal FLOPs)\n\n"
     << schedules_table(r) << "\n";
  header = {"step", "timestep"};
  for (const auto& b : r.budgets) header.push_back("budget " + fixed(b.schedule.budget, 3));
  rows.clear();
  for (size_t i = 0; i < r.timesteps.size(); ++i) {
    std::vector<std::string> row = {std::to_string(i), fixed(r.timesteps[i], 1)};
    for (const auto& b : r.budgets) row.push_back(fixed(b.schedule.levels[i], 4));
    rows.push_back(row);
  }
  md << "## Levels per step\n\n" << markdown_table(header, rows);
  write_text(dir / "tune.md", md.str());

  // Plots: the sensitivity per step (one line per level), the schedules (one line per budget,
  // the constant level dashed in the same colour).
  const auto plots = dir / "plots";
  std::ostringstream sens, sched;
  sens << "# step timestep";
  for (double l : grid) sens << " mse_L" << fixed(l, 2);
  sens << "\n";
  sched << "# step timestep learned levels per budget, then the constant levels\n";
  for (size_t i = 0; i < r.timesteps.size(); ++i) {
    sens << i << " " << column(r.timesteps[i]);
    for (double e : r.sensitivity.error[i]) sens << " " << column(e);
    sens << "\n";
    sched << i << " " << column(r.timesteps[i]);
    for (const auto& b : r.budgets) sched << " " << column(b.schedule.levels[i]);
    for (const auto& b : r.budgets) sched << " " << column(b.schedule.constant_level);
    sched << "\n";
  }
  write_text(plots / "sensitivity.dat", sens.str());
  write_text(plots / "schedules.dat", sched.str());
  std::ostringstream gp;
  gp << "set terminal pngcairo size 900,500 enhanced font 'sans,10'\n"
     << "set datafile missing 'NaN'\nset grid\nset key top right\nset xlabel 'step'\n"
     << "set output 'sensitivity.png'\n"
     << "set title 'Final-image MSE against level 0 with only one step pruned'\n"
     << "set ylabel 'MSE (uint8)'\nplot ";
  for (size_t g = 0; g < grid.size(); ++g) {
    gp << (g ? ", " : "") << "'sensitivity.dat' using 1:" << g + 3 << " with linespoints lw 2 lc "
       << g + 1 << " title 'level " << fixed(grid[g], 2) << "'";
  }
  gp << "\nset output 'schedules.png'\n"
     << "set title 'Learned per-step levels (solid) and the constant level of equal FLOPs "
        "(dashed)'\n"
     << "set ylabel 'pruning level'\nset yrange [0:1]\nplot ";
  const size_t n = r.budgets.size();
  for (size_t b = 0; b < n; ++b) {
    const auto budget = fixed(r.budgets[b].schedule.budget, 2);
    gp << (b ? ", " : "") << "'schedules.dat' using 1:" << b + 3 << " with linespoints lw 2 lc "
       << b + 1 << " title 'budget " << budget << "', 'schedules.dat' using 1:" << n + b + 3
       << " with lines dt 2 lc " << b + 1 << " notitle";
  }
  gp << "\n";
  write_text(plots / "plots.gp", gp.str());
  if (run_gnuplot(plots / "plots.gp")) {
    for (const char* name : {"sensitivity.png", "schedules.png"}) {
      fs::rename(plots / name, dir / name);
    }
  }
  return md.str();
}

}  // namespace ldcp::tools
