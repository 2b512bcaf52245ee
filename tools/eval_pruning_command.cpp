// `ldcp eval-pruning`: what a pruning level costs in quality and saves in compute, per
// importance source side by side (learned from a gates file, magnitude, random). For every
// prompt and seed:
//  - along the level-0 trajectory, each step's U-Net input is also run at every level; the
//    relative error of that noise prediction against level 0's (same latents, timestep, text);
//  - a whole generation at every level; PSNR and SSIM of its image against the level-0 image of
//    the same seed, its step latency and peak memory.
// Writes results.json, results.csv, results.md, plots (gnuplot: quality.png, latency.png,
// memory.png) and one grid of images per source (rows: prompts, columns: levels).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "cli/progress.h"
#include "model/io/model_folder.h"
#include "model/models/unets/unet_2d_condition.h"
#include "model/pipelines/image_io.h"
#include "model/pipelines/image_metrics.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "model/pruning/unet_pruner.h"
#include "model/runtime/device.h"
#include "model/runtime/dtype.h"
#include "model/runtime/memory_meter.h"
#include "model/schedulers/scheduler.h"
#include "tools/commands.h"
#include "tools/measure.h"

namespace ldcp::tools {

using cli::Progress;
namespace {

namespace fs = std::filesystem;
constexpr double kInf = std::numeric_limits<double>::infinity();

struct EvalArgs {
  std::string model, levels = "0,0.25,0.5,0.75", prompts, out, gates, sources, device = "cpu",
                     dtype = "auto", sampler = "pndm";
  int64_t seeds = 2, steps = 20, width = 0, height = 0, threads = 0;
  double guidance = 7.5;
  uint64_t random_scores_seed = 0;
};

// Per (source, level): the samples' figures, then their summary.
struct Cell {
  std::vector<double> noise_errors;  // per sample: mean over steps
  std::vector<double> mse, psnr, ssim;
  std::vector<double> step_seconds;  // per sample: denoising time / steps
  int64_t unet_macs = -1;            // per guided step, counted
  int64_t step_peak_above = 0;       // max over samples and steps
  int64_t generation_peak_above = 0, generation_peak = 0;
  double dropped_gated_macs = 0, pruned_flops_fraction = 0;
};

// PSNR of the samples pooled: from their mean squared error (infinite only when every image
// equals its reference).
double pooled_psnr(const std::vector<double>& mse) {
  const double m = mean(mse);
  return m == 0 ? kInf : 10.0 * std::log10(255.0 * 255.0 / m);
}

std::string level_tag(double level) { return fixed(level, 2); }

// Images [H, W, 3] uint8 in rows (prompts) by columns (levels), with white gaps.
at::Tensor image_grid(const std::vector<std::vector<at::Tensor>>& cells) {
  const int64_t gap = 4;
  const auto& first = cells.front().front();
  const int64_t h = first.size(0), w = first.size(1);
  const auto rows = static_cast<int64_t>(cells.size());
  const auto cols = static_cast<int64_t>(cells.front().size());
  auto grid = torch::full({rows * h + (rows + 1) * gap, cols * w + (cols + 1) * gap, 3}, 255,
                          torch::kUInt8);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      grid.narrow(0, gap + r * (h + gap), h).narrow(1, gap + c * (w + gap), w).copy_(cells[r][c]);
    }
  }
  return grid;
}

void write_text(const fs::path& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::string csv_number(double v, int decimals) {
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  return std::isnan(v) ? "" : fixed(v, decimals);
}

void run_eval(const EvalArgs& args) {
  pipelines::PipelineOptions base;
  base.device = runtime::parse_device(args.device);
  base.dtype = parse_dtype(args.dtype, base.device);
  base.random_scores_seed = args.random_scores_seed;
  auto levels = parse_levels(args.levels, "--levels");
  std::sort(levels.begin(), levels.end());
  levels.erase(std::unique(levels.begin(), levels.end()), levels.end());
  if (levels.front() != 0.0) levels.insert(levels.begin(), 0.0);  // the reference
  const auto prompts = read_prompt_file(args.prompts);
  std::vector<std::string> sources;
  if (args.sources.empty()) {
    if (!args.gates.empty()) sources.push_back("learned");
    sources.push_back("magnitude");
    sources.push_back("random");
  } else {
    std::stringstream in(args.sources);
    std::string s;
    while (std::getline(in, s, ',')) {
      if (s != "learned" && s != "magnitude" && s != "random") {
        throw std::invalid_argument("--sources: \"" + s +
                                    "\" is not a score source (learned, magnitude, random)");
      }
      if (s == "learned" && args.gates.empty()) {
        throw std::invalid_argument("--sources: learned needs --gates FILE");
      }
      sources.push_back(s);
    }
    if (sources.empty()) throw std::invalid_argument("--sources: no sources given");
  }
  if (args.threads > 0) torch::set_num_threads(static_cast<int>(args.threads));
  const fs::path out_dir = args.out;
  fs::create_directories(out_dir / "images");
  fs::create_directories(out_dir / "plots");

  runtime::MemoryMeter meter(base.device);  // before any load: weights are counted
  const auto scheduler_config = io::ModelFolder::open(args.model).scheduler_config();
  const bool guided = args.guidance > 1.0;
  std::map<std::string, std::vector<Cell>> cells;                     // source -> per level
  std::map<std::string, std::vector<std::vector<at::Tensor>>> grids;  // source -> prompt x level
  nlohmann::json samples = nlohmann::json::array();
  int64_t width = args.width, height = args.height, resident = 0;

  for (const auto& source : sources) {
    auto options = base;
    if (source == "learned") {
      options.gates_file = args.gates;
    } else {
      options.score_source = source;
    }
    std::cerr << "loading " << args.model << " with " << source << " scores\n";
    const int64_t before_load = meter.stats().allocated_bytes;
    auto pipeline = pipelines::StableDiffusionPipeline::load(args.model, options);
    resident = meter.stats().allocated_bytes - before_load;
    auto& pruner = pipeline->pruner();
    auto& unet = pipeline->unet();
    if (width == 0) width = pipeline->native_resolution();
    if (height == 0) height = pipeline->native_resolution();
    pipelines::GenerationParams params;
    params.width = width;
    params.height = height;
    params.steps = args.steps;
    params.guidance_scale = args.guidance;
    params.sampler = args.sampler;
    pipeline->validate(params);
    std::vector<pruning::LevelPlan> plans;
    for (double level : levels) plans.push_back(pruner.plan(level));
    auto& source_cells = cells[source];
    source_cells.assign(levels.size(), Cell{});
    for (size_t l = 0; l < levels.size(); ++l) {
      source_cells[l].dropped_gated_macs = plans[l].dropped_macs_fraction;
    }
    auto& grid = grids[source];
    // Warm-up: the first step at a size also counts the pipeline's FLOPs; keep it untimed.
    {
      auto warm = params;
      warm.steps = 1;
      pipeline->generate(warm);
    }
    const int64_t scale = pipeline->vae_scale_factor();
    Progress progress(source, static_cast<int64_t>(prompts.size()) * args.seeds);
    int64_t done = 0;
    for (size_t pi = 0; pi < prompts.size(); ++pi) {
      torch::NoGradGuard no_grad;
      const auto embeddings = pipeline->encode_prompt(prompts[pi], "", 1, guided);
      for (int64_t seed = 0; seed < args.seeds; ++seed) {
        // The level-0 trajectory, each step's input also run at every level.
        auto scheduler = schedulers::make_scheduler(args.sampler, scheduler_config);
        scheduler->set_timesteps(args.steps);
        auto generator = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
        // The probes' sampler steps are thrown away; their noise must not advance `generator`.
        auto probe_generator =
            at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
        StepInputs inputs;
        inputs.embeddings = embeddings;
        inputs.guidance_scale = args.guidance;
        // As the pipeline draws them: on the CPU from the seed, in the model's dtype.
        inputs.latents = at::randn({1, unet.config().in_channels, height / scale, width / scale},
                                   generator, at::TensorOptions().dtype(options.dtype))
                             .to(options.device) *
                         scheduler->init_noise_sigma();
        const auto timesteps = scheduler->timesteps();
        std::vector<double> error_sum(levels.size(), 0.0);
        const bool first_sample = pi == 0 && seed == 0;
        for (int64_t i = 0; i < timesteps.size(0); ++i) {
          inputs.timestep = timesteps[i];
          pruner.apply(plans[0]);
          auto reference = guided_step(unet, *scheduler, inputs, options.device, generator);
          for (size_t l = 0; l < levels.size(); ++l) {
            pruner.apply(plans[l]);
            // A separate sampler: only the U-Net's prediction is compared.
            auto probe = schedulers::make_scheduler(args.sampler, scheduler_config);
            probe->set_timesteps(args.steps);
            const auto outcome = guided_step(unet, *probe, inputs, options.device, probe_generator,
                                             /*count_macs=*/first_sample && i == 0, &meter);
            if (outcome.unet_macs >= 0) source_cells[l].unet_macs = outcome.unet_macs;
            source_cells[l].step_peak_above =
                std::max(source_cells[l].step_peak_above, outcome.peak_above_bytes);
            error_sum[l] += pipelines::relative_error(outcome.noise, reference.noise);
          }
          inputs.latents = reference.latents;
        }
        pruner.reset();

        // Whole generations per level; images against level 0's.
        std::vector<at::Tensor> images;
        for (size_t l = 0; l < levels.size(); ++l) {
          auto p = params;
          p.prompt = prompts[pi];
          p.seed = static_cast<uint64_t>(seed);
          p.pruning = pruning::PruningSchedule::fixed(levels[l]);
          const auto result = pipeline->generate(p);
          auto image = pipelines::to_uint8(result.images)[0];
          auto& cell = source_cells[l];
          cell.step_seconds.push_back(result.timings.denoising_s /
                                      static_cast<double>(result.timesteps.size()));
          cell.generation_peak_above =
              std::max(cell.generation_peak_above, result.peak_memory_above_weights_bytes);
          cell.generation_peak =
              std::max(cell.generation_peak, resident + result.peak_memory_above_weights_bytes);
          cell.pruned_flops_fraction = result.pruned_flops_fraction;
          const auto path = out_dir / "images" / source /
                            ("p" + std::to_string(pi) + "-s" + std::to_string(seed) + "-L" +
                             level_tag(levels[l]) + ".png");
          fs::create_directories(path.parent_path());
          pipelines::write_png(path, image);
          images.push_back(image);
        }
        for (size_t l = 0; l < levels.size(); ++l) {
          auto& cell = source_cells[l];
          const double noise_error = error_sum[l] / static_cast<double>(timesteps.size(0));
          const double mse = (images[l].to(torch::kDouble) - images[0].to(torch::kDouble))
                                 .pow(2)
                                 .mean()
                                 .item<double>();
          const double psnr = pipelines::psnr(images[l], images[0], 255.0);
          const double ssim = pipelines::ssim(images[l], images[0], 255.0);
          cell.noise_errors.push_back(noise_error);
          cell.mse.push_back(mse);
          cell.psnr.push_back(psnr);
          cell.ssim.push_back(ssim);
          samples.push_back(
              {{"source", source},
               {"level", levels[l]},
               {"prompt", prompts[pi]},
               {"prompt_index", pi},
               {"seed", seed},
               {"noise_relative_error", noise_error},
               {"psnr_db", std::isfinite(psnr) ? nlohmann::json(psnr) : nlohmann::json()},
               {"ssim", ssim},
               {"step_seconds", cell.step_seconds.back()}});
        }
        if (seed == 0) grid.push_back(images);
        progress.update(++done, "prompt " + std::to_string(pi) + " seed " + std::to_string(seed));
      }
    }
    progress.finish();
    pipelines::write_png(out_dir / ("grid-" + source + ".png"), image_grid(grid));
  }

  // Summaries: JSON, CSV, Markdown.
  auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); };
  auto d = [](int64_t v) { return static_cast<double>(v); };
  nlohmann::json j;
  j["model"] = args.model;
  j["width"] = width;
  j["height"] = height;
  j["steps"] = args.steps;
  j["guidance_scale"] = args.guidance;
  j["sampler"] = args.sampler;
  j["dtype"] = runtime::dtype_name(base.dtype);
  j["device"] = base.device.str();
  j["threads"] = torch::get_num_threads();
  j["prompts"] = prompts;
  j["seeds"] = args.seeds;
  j["levels"] = levels;
  j["sources"] = sources;
  j["resident_weights_bytes"] = resident;
  j["notes"] =
      "psnr_db null: infinite (images equal). noise_relative_error: ||eps_L - eps_0|| / ||eps_0|| "
      "of the U-Net output on the level-0 trajectory, mean over steps then samples. Latency: "
      "denoising time per step of whole generations, median over samples. Peaks above the "
      "resident weights.";
  std::vector<std::string> csv_lines = {
      "source,level,dropped_gated_flops,unet_gflops_per_step,flops_ratio,noise_rel_error_mean,"
      "noise_rel_error_max,psnr_db,psnr_db_min,ssim_mean,ssim_min,step_latency_ms,"
      "latency_ratio,step_peak_above_weights_mib,step_peak_ratio,"
      "generation_peak_above_weights_mib,generation_peak_mib,samples"};
  std::vector<std::vector<std::string>> md_rows;
  for (const auto& source : sources) {
    const auto& source_cells = cells[source];
    const auto& ref = source_cells[0];
    const double ref_latency = median(ref.step_seconds);
    for (size_t l = 0; l < levels.size(); ++l) {
      const auto& c = source_cells[l];
      const double latency = median(c.step_seconds);
      const double flops_ratio = ratio(d(c.unet_macs), d(ref.unet_macs));
      const double latency_ratio = ratio(latency, ref_latency);
      const double peak_ratio = ratio(d(c.step_peak_above), d(ref.step_peak_above));
      const double psnr = pooled_psnr(c.mse);
      nlohmann::json row = {{"source", source},
                            {"level", levels[l]},
                            {"dropped_gated_macs_fraction", c.dropped_gated_macs},
                            {"pruned_unet_flops_fraction", c.pruned_flops_fraction},
                            {"unet_flops_per_step", 2 * c.unet_macs},
                            {"flops_ratio", num(flops_ratio)},
                            {"noise_relative_error_mean", mean(c.noise_errors)},
                            {"noise_relative_error_max", max_of(c.noise_errors)},
                            {"psnr_db", num(psnr)},
                            {"psnr_db_min", num(min_of(c.psnr))},
                            {"ssim_mean", mean(c.ssim)},
                            {"ssim_min", min_of(c.ssim)},
                            {"step_seconds_median", latency},
                            {"step_latency_ratio", num(latency_ratio)},
                            {"step_peak_above_weights_bytes", c.step_peak_above},
                            {"step_peak_above_weights_ratio", num(peak_ratio)},
                            {"generation_peak_above_weights_bytes", c.generation_peak_above},
                            {"generation_peak_bytes", c.generation_peak},
                            {"samples", c.ssim.size()}};
      j["rows"].push_back(row);
      csv_lines.push_back(
          source + "," + fixed(levels[l], 4) + "," + csv_number(c.dropped_gated_macs, 4) + "," +
          csv_number(2e-9 * d(c.unet_macs), 4) + "," + csv_number(flops_ratio, 4) + "," +
          csv_number(mean(c.noise_errors), 6) + "," + csv_number(max_of(c.noise_errors), 6) + "," +
          csv_number(psnr, 3) + "," + csv_number(min_of(c.psnr), 3) + "," +
          csv_number(mean(c.ssim), 5) + "," + csv_number(min_of(c.ssim), 5) + "," +
          csv_number(1e3 * latency, 3) + "," + csv_number(latency_ratio, 4) + "," +
          csv_number(mib(c.step_peak_above), 3) + "," + csv_number(peak_ratio, 4) + "," +
          csv_number(mib(c.generation_peak_above), 3) + "," +
          csv_number(mib(c.generation_peak), 3) + "," + std::to_string(c.ssim.size()));
      md_rows.push_back({source, fixed(levels[l], 2), fixed(2e-9 * d(c.unet_macs), 2),
                         ratio_text(d(c.unet_macs), d(ref.unet_macs)),
                         fixed(mean(c.noise_errors), 4), fixed(psnr, 2), fixed(mean(c.ssim), 4),
                         fixed(1e3 * latency, 1), ratio_text(latency, ref_latency),
                         fixed(mib(c.step_peak_above), 1),
                         ratio_text(d(c.step_peak_above), d(ref.step_peak_above)),
                         fixed(mib(c.generation_peak_above), 1)});
    }
  }
  j["samples"] = samples;
  write_text(out_dir / "results.json", j.dump(2) + "\n");
  std::string csv;
  for (const auto& line : csv_lines) csv += line + "\n";
  write_text(out_dir / "results.csv", csv);
  std::ostringstream md;
  md << "# ldcp eval-pruning: " << args.model << "\n\n"
     << width << "x" << height << ", " << args.steps << " " << args.sampler << " steps, guidance "
     << args.guidance << ", " << prompts.size() << " prompts x " << args.seeds << " seeds, "
     << runtime::dtype_name(base.dtype) << " on " << base.device.str() << ", "
     << torch::get_num_threads()
     << " threads. Noise error: relative error of the U-Net's prediction against level 0 on the "
        "level-0 trajectory; PSNR (pooled over samples) and SSIM of the final image against the "
        "level-0 image of the same seed; latency: denoising time per step (median); peaks: "
        "above the resident weights.\n\n"
     << markdown_table(
            {"scores", "level", "U-Net GFLOPs/step", "x L0", "noise rel. error", "PSNR dB", "SSIM",
             "step ms", "x L0", "step peak MiB", "x L0", "generation peak MiB"},
            md_rows);
  write_text(out_dir / "results.md", md.str());
  std::cout << md.str();

  // Plots: one data file per source, one gnuplot script.
  std::ostringstream gp;
  gp << "set terminal pngcairo size 1500,450 enhanced font 'sans,10'\n"
     << "set datafile missing 'NaN'\nset key bottom left\nset grid\nset xlabel 'pruning level'\n"
     << "set xrange [" << -0.02 << ":" << levels.back() + 0.02 << "]\n";
  // One colour per source in every panel.
  auto plot_line = [&](int column, const std::string& ylabel) {
    std::string line = "set ylabel '" + ylabel + "'\nplot ";
    for (size_t s = 0; s < sources.size(); ++s) {
      line += (s ? ", " : "") + std::string("'") + sources[s] +
              ".dat' using 1:" + std::to_string(column) + " with linespoints lw 2 lc " +
              std::to_string(s + 1) + " title '" + sources[s] + "'";
    }
    return line + "\n";
  };
  gp << "set output 'quality.png'\nset multiplot layout 1,3 title 'Quality against level 0'\n"
     << plot_line(2, "noise prediction relative error") << plot_line(3, "PSNR (dB)")
     << plot_line(4, "SSIM") << "unset multiplot\n";
  gp << "set output 'latency.png'\nset multiplot layout 1,2 title 'Step latency and FLOPs'\n"
     << "set yrange [0:*]\n"
     << plot_line(5, "step latency (ms)") << "set key top right\n"
     << "set ylabel 'ratio to level 0'\nplot ";
  for (size_t s = 0; s < sources.size(); ++s) {
    gp << (s ? ", " : "") << "'" << sources[s] << ".dat' using 1:8 with linespoints lw 2 lc "
       << s + 1 << " title '" << sources[s] << " latency', '" << sources[s]
       << ".dat' using 1:9 with linespoints dt 2 lc " << s + 1 << " title '" << sources[s]
       << " FLOPs'";
  }
  gp << "\nunset multiplot\nset key bottom left\n";  // yrange [0:*] stays: memory from 0 too
  gp << "set output 'memory.png'\nset multiplot layout 1,2 title 'Peak memory above the weights'\n"
     << plot_line(6, "one step (MiB)") << plot_line(7, "whole generation (MiB)")
     << "unset multiplot\n";
  const auto plots = out_dir / "plots";
  for (const auto& source : sources) {
    std::ostringstream dat;
    dat << "# level noise_rel_error psnr_db ssim step_ms step_peak_mib generation_peak_mib "
           "latency_ratio flops_ratio\n";
    const auto& source_cells = cells[source];
    for (size_t l = 0; l < levels.size(); ++l) {
      const auto& c = source_cells[l];
      const double psnr = pooled_psnr(c.mse);
      auto col = [](double v) { return std::isfinite(v) ? fixed(v, 6) : std::string("NaN"); };
      dat << fixed(levels[l], 4) << " " << col(mean(c.noise_errors)) << " " << col(psnr) << " "
          << col(mean(c.ssim)) << " " << col(1e3 * median(c.step_seconds)) << " "
          << col(mib(c.step_peak_above)) << " " << col(mib(c.generation_peak_above)) << " "
          << col(ratio(median(c.step_seconds), median(source_cells[0].step_seconds))) << " "
          << col(ratio(d(c.unet_macs), d(source_cells[0].unet_macs))) << "\n";
    }
    write_text(plots / (source + ".dat"), dat.str());
  }
  // gnuplot resolves the data files and outputs relative to its working folder: cd there.
  write_text(plots / "plots.gp", gp.str());
  if (run_gnuplot(plots / "plots.gp")) {
    for (const char* name : {"quality.png", "latency.png", "memory.png"}) {
      fs::rename(plots / name, out_dir / name);
    }
  }
  std::cerr << "wrote " << out_dir.string() << "/{results.json,results.csv,results.md,"
            << "quality.png,latency.png,memory.png,grid-*.png,images/}\n";
}

}  // namespace

void add_eval_pruning_command(CLI::App& app) {
  auto args = std::make_shared<EvalArgs>();
  auto& a = *args;
  auto* eval = app.add_subcommand(
      "eval-pruning", "Quality, FLOPs, latency and memory per pruning level and score source");
  eval->add_option("--model", a.model, "Model folder in diffusers format")
      ->required()
      ->check(CLI::ExistingDirectory);
  eval->add_option("--prompts", a.prompts, "Text file, one prompt per line (# comments)")
      ->required()
      ->check(CLI::ExistingFile);
  eval->add_option("--out", a.out, "Output folder")->required();
  eval->add_option("--levels", a.levels,
                   "Pruning levels, comma-separated (0, the reference, is always run)")
      ->capture_default_str();
  eval->add_option("--seeds", a.seeds, "Seeds per prompt (0 .. N-1)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  eval->add_option("--gates", a.gates, "Gates file with learned scores (adds the learned source)")
      ->check(CLI::ExistingFile);
  eval->add_option(
      "--sources", a.sources,
      "Score sources, comma-separated (default: learned if --gates, magnitude, random)");
  eval->add_option("--steps", a.steps, "Denoising steps")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  eval->add_option("--width", a.width, "Width in pixels (0: the model's native size)")
      ->capture_default_str();
  eval->add_option("--height", a.height, "Height in pixels (0: the model's native size)")
      ->capture_default_str();
  eval->add_option("--guidance", a.guidance, "Guidance scale")->capture_default_str();
  eval->add_option("--sampler", a.sampler, "Sampler")
      ->capture_default_str()
      ->check(CLI::IsMember(schedulers::sampler_names()));
  eval->add_option("--random-scores-seed", a.random_scores_seed, "Seed of the random scores")
      ->capture_default_str();
  eval->add_option("--device", a.device, "cpu, cuda or cuda:N")->capture_default_str();
  add_dtype_option(eval, a.dtype, "");
  eval->add_option("--threads", a.threads, "Intra-op threads (0: libtorch's default)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  eval->final_callback([args] { run_eval(*args); });
}

}  // namespace ldcp::tools
