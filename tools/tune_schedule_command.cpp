// `ldcp tune-schedule`: per-step pruning levels learned for average U-Net FLOPs budgets.
//  1. FLOPs: each grid level's U-Net FLOPs fraction, counted by the pipeline.
//  2. Sensitivity: for every step i and grid level l, the final image's MSE against the level-0
//     image of the same prompt and seed when only step i runs at l (mean over prompts x seeds).
//  3. Per budget, the schedule minimising the summed sensitivities at that mean FLOPs fraction
//     with every step at or above --floor (model/pruning/step_schedule.h), written into the
//     gates file's metadata (the input scores unchanged).
//  4. With --report: both the learned schedule and the constant level of equal FLOPs generated
//     on held-out seeds; their PSNR against level 0, JSON, Markdown and plots.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>

#include <torch/torch.h>

#include "cli/progress.h"
#include "model/pipelines/image_io.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "model/pruning/gate_scores.h"
#include "model/pruning/step_schedule.h"
#include "model/pruning/unet_pruner.h"
#include "model/runtime/device.h"
#include "model/runtime/dtype.h"
#include "model/schedulers/scheduler.h"
#include "tools/commands.h"
#include "tools/measure.h"
#include "tools/tune_schedule_report.h"

namespace ldcp::tools {

using cli::Progress;
namespace {

namespace fs = std::filesystem;

struct TuneArgs {
  std::string model, gates, scores = "magnitude", prompts, out, report, sampler = "pndm",
                            levels = "0.25,0.5,0.75", budgets = "0.6,0.7,0.8", device = "cpu",
                            dtype = "auto";
  int64_t seeds = 1, steps = 20, width = 0, height = 0, threads = 0;
  std::optional<int64_t> eval_seeds;  // default: as many as --seeds
  double guidance = 7.5, floor = 0.0;
  uint64_t random_scores_seed = 0;
};

std::vector<double> parse_budgets(const std::string& text) {
  std::vector<double> budgets;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    double budget = 0;
    try {
      budget = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size() || !(budget > 0.0 && budget <= 1.0)) {
      throw std::invalid_argument("--budgets: \"" + item.substr(0, 32) +
                                  "\" is not a FLOPs fraction in (0, 1]");
    }
    for (double b : budgets) {
      if (std::abs(b - budget) <= 1e-6)
        throw std::invalid_argument("--budgets: " + item + " twice");
    }
    budgets.push_back(budget);
  }
  if (budgets.empty()) throw std::invalid_argument("--budgets: no budgets given");
  return budgets;
}

double image_mse(const at::Tensor& a, const at::Tensor& b) {
  return (a.to(torch::kDouble) - b.to(torch::kDouble)).pow(2).mean().item<double>();
}

// Generates one image; its uint8 pixels and the run's mean U-Net FLOPs fraction.
struct Generated {
  at::Tensor image;
  double flops_fraction = 1.0;
  std::vector<double> timesteps;
};
Generated generate_one(pipelines::StableDiffusionPipeline& pipeline,
                       const pipelines::GenerationParams& base, const std::string& prompt,
                       int64_t seed, const pruning::PruningSchedule& schedule) {
  auto p = base;
  p.prompt = prompt;
  p.seed = static_cast<uint64_t>(seed);
  p.pruning = schedule;
  auto result = pipeline.generate(p);
  return {pipelines::to_uint8(result.images)[0], 1.0 - result.pruned_flops_fraction,
          result.timesteps};
}

// Schedules are stored with the scores, through a temporary file: --out may be --gates.
void write_gates(const fs::path& out, pruning::GateScores scores,
                 const std::vector<pruning::StepSchedule>& schedules) {
  scores.metadata[pruning::kStepSchedulesKey] = pruning::step_schedules_to_json(schedules);
  if (!out.parent_path().empty()) fs::create_directories(out.parent_path());
  auto tmp = out;
  tmp += ".tmp";
  pruning::save_gate_scores(tmp, scores);
  fs::rename(tmp, out);
}

void run_tune(const TuneArgs& args) {
  pipelines::PipelineOptions options;
  options.device = runtime::parse_device(args.device);
  options.dtype = parse_dtype(args.dtype, options.device);
  options.random_scores_seed = args.random_scores_seed;
  if (!args.gates.empty()) {
    options.gates_file = args.gates;
  } else {
    options.score_source = args.scores;
  }
  auto grid = parse_levels(args.levels, "--levels");
  std::sort(grid.begin(), grid.end());
  grid.erase(std::unique(grid.begin(), grid.end()), grid.end());
  grid.erase(std::remove(grid.begin(), grid.end(), 0.0), grid.end());  // level 0: the reference
  if (grid.empty()) throw std::invalid_argument("--levels: give at least one level above 0");
  if (!(args.floor >= 0.0 && args.floor <= grid.back())) {
    throw std::invalid_argument("--floor: " + fixed(args.floor, 3) + " must be in [0, " +
                                fixed(grid.back(), 3) + "] (the highest of --levels)");
  }
  const auto budgets = parse_budgets(args.budgets);
  const auto prompts = read_prompt_file(args.prompts);
  const int64_t eval_seeds = args.eval_seeds.value_or(args.seeds);
  if (args.threads > 0) torch::set_num_threads(static_cast<int>(args.threads));
  torch::NoGradGuard no_grad;

  std::cerr << "loading " << args.model << "\n";
  auto pipeline = pipelines::StableDiffusionPipeline::load(args.model, options);
  const auto& scores = pipeline->pruner().scores();
  pipelines::GenerationParams base;
  base.width = args.width > 0 ? args.width : pipeline->native_resolution();
  base.height = args.height > 0 ? args.height : pipeline->native_resolution();
  base.steps = args.steps;
  base.guidance_scale = args.guidance;
  base.sampler = args.sampler;
  pipeline->validate(base);

  // 1. FLOPs per level (one step each; the first run at a size also counts the full U-Net).
  pruning::FlopsCurve flops{{0.0}, {1.0}};
  {
    auto one = base;
    one.steps = 1;
    for (double level : grid) {
      const double fraction =
          generate_one(*pipeline, one, prompts[0], 0, pruning::PruningSchedule::fixed(level))
              .flops_fraction;
      if (!(fraction < flops.fractions.back())) {
        throw std::invalid_argument("--levels: level " + fixed(level, 3) +
                                    " does not lower the U-Net FLOPs below the previous level's (" +
                                    fixed(fraction, 4) + "): use levels further apart");
      }
      flops.levels.push_back(level);
      flops.fractions.push_back(fraction);
    }
  }
  std::cerr << "U-Net FLOPs fraction per level:";
  for (size_t k = 0; k < flops.levels.size(); ++k) {
    std::cerr << " " << fixed(flops.levels[k], 2) << ": " << fixed(flops.fractions[k], 4);
  }
  std::cerr << "\n";
  // Infeasible budgets fail now, before the long measurement.
  const auto [lowest, highest] = pruning::feasible_budgets(flops, args.floor);
  for (double b : budgets) {
    if (b < lowest - 1e-9 || b > highest + 1e-9) {
      throw std::invalid_argument("--budgets: " + fixed(b, 4) + " is infeasible: with --floor " +
                                  fixed(args.floor, 3) + " and --levels up to " +
                                  fixed(grid.back(), 3) + " the feasible range is [" +
                                  fixed(lowest, 4) + ", " + fixed(highest, 4) + "]");
    }
  }

  // 2. Sensitivity: only step i pruned, every other step at level 0.
  TuneReport report;
  report.model = args.model;
  report.scores = scores.source;
  report.sampler = args.sampler;
  report.dtype = runtime::dtype_name(options.dtype);
  report.device = options.device.str();
  report.width = base.width;
  report.height = base.height;
  report.steps = args.steps;
  report.threads = torch::get_num_threads();
  report.guidance = args.guidance;
  report.prompts = prompts;
  report.flops = flops;
  for (int64_t s = 0; s < args.seeds; ++s) report.tuning_seeds.push_back(s);
  for (int64_t s = 0; s < eval_seeds; ++s) report.eval_seeds.push_back(args.seeds + s);
  auto& sensitivity = report.sensitivity;
  sensitivity.levels = grid;
  const auto samples = static_cast<int64_t>(prompts.size()) * args.seeds;
  // Counted in generations: per sample, the level-0 reference and one per step and level.
  Progress progress("sensitivity", samples);
  int64_t done = 0;
  for (const auto& prompt : prompts) {
    for (int64_t seed : report.tuning_seeds) {
      const auto reference =
          generate_one(*pipeline, base, prompt, seed, pruning::PruningSchedule::off());
      if (report.timesteps.empty()) {
        report.timesteps = reference.timesteps;
        sensitivity.error.assign(report.timesteps.size(), std::vector<double>(grid.size(), 0.0));
        progress.set_total(samples *
                           static_cast<int64_t>(1 + report.timesteps.size() * grid.size()));
      }
      progress.update(++done, "seed " + std::to_string(seed) + " level 0");
      const size_t steps_run = report.timesteps.size();
      for (size_t i = 0; i < steps_run; ++i) {
        for (size_t g = 0; g < grid.size(); ++g) {
          std::vector<double> levels(steps_run, 0.0);
          levels[i] = grid[g];
          const auto pruned =
              generate_one(*pipeline, base, prompt, seed, pruning::PruningSchedule::steps(levels));
          sensitivity.error[i][g] +=
              image_mse(pruned.image, reference.image) / static_cast<double>(samples);
          progress.update(++done, "seed " + std::to_string(seed) + " step " +
                                      std::to_string(i + 1) + " level " + fixed(grid[g], 2));
        }
      }
    }
  }
  progress.finish();

  // 3. The schedules, into the gates file.
  std::vector<pruning::StepSchedule> schedules;
  for (double b : budgets) {
    try {
      auto s = pruning::optimize_step_schedule(sensitivity, flops, b, args.floor);
      s.sampler = args.sampler;
      s.steps = args.steps;
      s.timesteps = report.timesteps;
      schedules.push_back(std::move(s));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument(std::string("--budgets: ") + e.what());
    }
  }
  for (const auto& s : schedules) {
    TuneReport::Budget b;
    b.schedule = s;
    b.constant_predicted_error = pruning::predicted_error(
        sensitivity, std::vector<double>(s.levels.size(), s.constant_level));
    b.learned_flops = b.constant_flops = std::nan("");
    report.budgets.push_back(std::move(b));
  }
  write_gates(args.out, scores, schedules);

  // 4. Held-out seeds: learned schedule vs constant level at the same mean FLOPs.
  if (!args.report.empty() && eval_seeds > 0) {
    Progress eval_progress("held-out", static_cast<int64_t>(prompts.size()) * eval_seeds);
    done = 0;
    std::vector<std::vector<double>> learned_flops(report.budgets.size()),
        constant_flops(report.budgets.size());
    for (const auto& prompt : prompts) {
      for (int64_t seed : report.eval_seeds) {
        const auto reference =
            generate_one(*pipeline, base, prompt, seed, pruning::PruningSchedule::off());
        for (size_t k = 0; k < report.budgets.size(); ++k) {
          auto& b = report.budgets[k];
          const auto learned = generate_one(*pipeline, base, prompt, seed,
                                            pruning::PruningSchedule::steps(b.schedule.levels));
          const double c = b.schedule.constant_level;
          const auto constant = generate_one(
              *pipeline, base, prompt, seed,
              c > 0 ? pruning::PruningSchedule::fixed(c) : pruning::PruningSchedule::off());
          b.learned_mse.push_back(image_mse(learned.image, reference.image));
          b.constant_mse.push_back(image_mse(constant.image, reference.image));
          learned_flops[k].push_back(learned.flops_fraction);
          constant_flops[k].push_back(constant.flops_fraction);
        }
        eval_progress.update(++done, "seed " + std::to_string(seed));
      }
    }
    eval_progress.finish();
    for (size_t k = 0; k < report.budgets.size(); ++k) {
      report.budgets[k].learned_flops = mean(learned_flops[k]);
      report.budgets[k].constant_flops = mean(constant_flops[k]);
    }
  }
  if (!args.report.empty()) {
    std::cout << write_tune_report(args.report, report);
  } else {
    std::cout << schedules_table(report);
  }
  std::cerr << "wrote " << schedules.size() << " step schedules (budgets";
  for (const auto& s : schedules) std::cerr << " " << fixed(s.budget, 3);
  std::cerr << ") to " << args.out
            << (args.report.empty() ? std::string() : "; report in " + args.report) << "\n";
}

}  // namespace

void add_tune_schedule_command(CLI::App& app) {
  auto args = std::make_shared<TuneArgs>();
  auto& a = *args;
  auto* tune = app.add_subcommand("tune-schedule",
                                  "Learn per-step pruning levels for average U-Net FLOPs budgets");
  tune->add_option("--model", a.model, "Model folder in diffusers format")
      ->required()
      ->check(CLI::ExistingDirectory);
  tune->add_option("--prompts", a.prompts, "Text file, one prompt per line (# comments)")
      ->required()
      ->check(CLI::ExistingFile);
  tune->add_option("--out", a.out,
                   "Gates file to write: the scores plus the schedules (may be "
                   "--gates)")
      ->required();
  auto* gates = tune->add_option("--gates", a.gates, "Gates file with learned scores")
                    ->check(CLI::ExistingFile);
  tune->add_option("--scores", a.scores, "Scores without --gates: magnitude or random")
      ->capture_default_str()
      ->check(CLI::IsMember({"magnitude", "random"}))
      ->excludes(gates);
  tune->add_option("--random-scores-seed", a.random_scores_seed, "Seed of --scores random")
      ->capture_default_str();
  tune->add_option("--levels", a.levels, "Levels measured per step, comma-separated (> 0)")
      ->capture_default_str();
  tune->add_option("--budgets", a.budgets,
                   "Mean U-Net FLOPs as fractions of level 0's, comma-separated, in (0, 1]")
      ->capture_default_str();
  tune->add_option("--floor", a.floor,
                   "Lowest level any step may use (the least pruned step sets the peak memory)")
      ->capture_default_str();
  tune->add_option("--seeds", a.seeds, "Tuning seeds per prompt (0 .. N-1)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  tune->add_option("--eval-seeds", a.eval_seeds,
                   "Held-out seeds per prompt for --report (N .. N+M-1; default: as --seeds)")
      ->check(CLI::Range(0, 1000));
  tune->add_option("--report", a.report, "Folder for tune.json, tune.md and the plots");
  tune->add_option("--steps", a.steps, "Denoising steps")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  tune->add_option("--width", a.width, "Width in pixels (0: the model's native size)")
      ->capture_default_str();
  tune->add_option("--height", a.height, "Height in pixels (0: the model's native size)")
      ->capture_default_str();
  tune->add_option("--guidance", a.guidance, "Guidance scale")->capture_default_str();
  tune->add_option("--sampler", a.sampler, "Sampler")
      ->capture_default_str()
      ->check(CLI::IsMember(schedulers::sampler_names()));
  tune->add_option("--device", a.device, "cpu, cuda or cuda:N")->capture_default_str();
  add_dtype_option(tune, a.dtype, "");
  tune->add_option("--threads", a.threads, "Intra-op threads (0: libtorch's default)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  tune->final_callback([args] { run_tune(*args); });
}

}  // namespace ldcp::tools
