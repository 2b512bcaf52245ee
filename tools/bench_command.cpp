// `ldcp bench`: what a pruning level saves, measured on this machine in one run. Per level: the
// U-Net's FLOPs (counted from the operators that ran), the median latency of one guided
// denoising step with the levels interleaved across repeats (so that machine noise hits every
// level alike), the peak memory of one step and of one whole generation (measured by the
// tracking allocator or CUDA's allocator statistics), each beside its ratio to level 0; and a
// "no gates" row: a second U-Net loaded without any pruning machinery, run on the same inputs.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <limits>
#include <optional>

#include <time.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "cli/progress.h"
#include "model/io/model_folder.h"
#include "model/io/weights.h"
#include "model/models/unets/unet_2d_condition.h"
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

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double process_cpu_seconds() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

struct BenchArgs {
  std::string model, gates, scores = "magnitude", levels = "0,0.25,0.5,0.75", device = "cpu",
                            dtype = "auto", json, sampler = "pndm", linear_backend = "auto",
                            prompt = "a photograph of an astronaut riding a horse";
  int64_t width = 0, height = 0, batch = 1, steps = 20, repeats = 5, threads = 0;
  double guidance = 7.5;
  uint64_t seed = 0;
  bool no_ungated = false, no_generation = false, channels_last = true;
};

// One row of the table: a pruning level, or the U-Net without gates.
struct Config {
  std::string name;
  std::optional<double> level;  // nullopt: the ungated U-Net
  pruning::LevelPlan plan;
  int64_t unet_macs = 0;  // per guided step (whole U-Net batch)
  std::vector<double> step_seconds;
  // The process's CPU time (user + system, every thread) over the step: on a machine shared
  // with other work the wall time grows with their load, this much less (it still counts
  // OpenMP threads spinning while a sibling waits for a core).
  std::vector<double> step_cpu_seconds;
  int64_t step_peak_above = 0, step_peak_total = 0;
  int64_t generation_peak_above = -1, generation_peak_total = -1;
  double generation_seconds = kNaN, pruned_flops_fraction = kNaN;
};

void run_bench(const BenchArgs& args) {
  // Everything that can be checked before the (slow) model load.
  pipelines::PipelineOptions options;
  options.device = runtime::parse_device(args.device);
  options.dtype = parse_dtype(args.dtype, options.device);
  options.gates_file = args.gates;
  options.score_source = args.scores;
  options.channels_last = args.channels_last;
  options.linear_backend = args.linear_backend;
  const auto levels = parse_levels(args.levels, "--levels");
  if (args.threads > 0) torch::set_num_threads(static_cast<int>(args.threads));

  // The meter first: on the CPU it installs the tracking allocator, so that the weights loaded
  // next are counted in the resident figure.
  runtime::MemoryMeter meter(options.device);
  const int64_t before_load = meter.stats().allocated_bytes;
  std::cerr << "loading " << args.model << "\n";
  auto pipeline = pipelines::StableDiffusionPipeline::load(args.model, options);
  print_linear_backend(args.linear_backend, *pipeline);
  const int64_t resident = meter.stats().allocated_bytes - before_load;

  pipelines::GenerationParams params;
  params.prompt = args.prompt;
  params.width = args.width > 0 ? args.width : pipeline->native_resolution();
  params.height = args.height > 0 ? args.height : pipeline->native_resolution();
  params.steps = args.steps;
  params.guidance_scale = args.guidance;
  params.sampler = args.sampler;
  params.seed = args.seed;
  params.num_images = args.batch;
  pipeline->validate(params);
  const bool guided = args.guidance > 1.0;
  const int64_t unet_batch = (guided ? 2 : 1) * args.batch;

  std::vector<Config> configs;
  for (double level : levels) {
    Config c;
    c.name = fixed(level, 2);
    c.level = level;
    c.plan = pipeline->pruner().plan(level);
    configs.push_back(std::move(c));
  }
  auto level0 = std::find_if(configs.begin(), configs.end(),
                             [](const Config& c) { return c.level && *c.level == 0.0; });
  if (level0 == configs.end()) {
    Config c;
    c.name = fixed(0.0, 2);
    c.level = 0.0;
    c.plan = pipeline->pruner().plan(0.0);
    configs.insert(configs.begin(), std::move(c));
  }

  // Whole generations first, while only the pipeline's weights are resident: their peaks are
  // the pipeline's own (the generation then also warms up every level's shapes).
  if (!args.no_generation) {
    Progress progress("generations", static_cast<int64_t>(configs.size()));
    int64_t done = 0;
    for (auto& c : configs) {
      auto p = params;
      p.pruning = pruning::PruningSchedule::fixed(*c.level);
      auto result = pipeline->generate(p);
      c.generation_peak_above = result.peak_memory_above_weights_bytes;
      c.generation_peak_total = resident + result.peak_memory_above_weights_bytes;
      c.generation_seconds = result.timings.total_s;
      c.pruned_flops_fraction = result.pruned_flops_fraction;
      progress.update(++done, "level " + c.name);
    }
    progress.finish();
  }

  // The same U-Net with no gates attached at all: level 0 must cost what it costs.
  models::UNet2DConditionModel ungated{nullptr};
  if (!args.no_ungated) {
    std::cerr << "loading the U-Net again without gates\n";
    io::LoadOptions load_options;
    load_options.channels_last = options.channels_last;
    ungated = models::load_unet(io::ModelFolder::open(args.model).unet, load_options);
    ungated->eval();
    ungated->to(options.device, options.dtype);
    Config c;
    c.name = "no gates";
    configs.insert(configs.begin(), std::move(c));
  }

  // One step's inputs, shared by every configuration.
  torch::NoGradGuard no_grad;
  const auto scheduler_config = io::ModelFolder::open(args.model).scheduler_config();
  auto make_scheduler = [&] {
    auto s = schedulers::make_scheduler(args.sampler, scheduler_config);
    s->set_timesteps(args.steps);
    return s;
  };
  auto probe = make_scheduler();
  const auto all_timesteps = probe->timesteps();
  const int64_t scale = pipeline->vae_scale_factor();
  const auto& unet_config = pipeline->unet().config();
  auto generator = at::make_generator<at::CPUGeneratorImpl>(args.seed);
  StepInputs inputs;
  inputs.latents =
      at::randn({args.batch, unet_config.in_channels, params.height / scale, params.width / scale},
                generator, at::TensorOptions().dtype(options.dtype))
          .to(options.device) *
      probe->init_noise_sigma();
  inputs.embeddings = pipeline->encode_prompt(args.prompt, "", args.batch, guided);
  inputs.timestep = all_timesteps[all_timesteps.size(0) / 2];
  inputs.guidance_scale = args.guidance;

  auto run = [&](Config& c, bool count_macs, runtime::MemoryMeter* m) {
    auto scheduler = make_scheduler();
    models::UNet2DConditionModelImpl* unet = &pipeline->unet();
    if (c.level) {
      pipeline->pruner().apply(c.plan);
    } else {
      unet = ungated.get();
    }
    return guided_step(*unet, *scheduler, inputs, options.device, generator, count_macs, m);
  };

  // Warm-up and FLOP count: one untimed step per configuration.
  for (auto& c : configs) c.unet_macs = run(c, /*count_macs=*/true, nullptr).unet_macs;
  const int64_t gated_macs = pipeline->pruner().gated_macs_last_forward() * unet_batch;

  // Timed steps, interleaved: repeat r runs every configuration once, starting at a different
  // one each time, so drifts and neighbours' load fall on all of them alike.
  Progress progress("timed steps", args.repeats * static_cast<int64_t>(configs.size()));
  int64_t done = 0;
  for (int64_t r = 0; r < args.repeats; ++r) {
    for (size_t k = 0; k < configs.size(); ++k) {
      auto& c = configs[(k + static_cast<size_t>(r)) % configs.size()];
      const double cpu_before = process_cpu_seconds();
      const auto outcome = run(c, false, &meter);
      c.step_cpu_seconds.push_back(process_cpu_seconds() - cpu_before);
      c.step_seconds.push_back(outcome.seconds);
      c.step_peak_above = std::max(c.step_peak_above, outcome.peak_above_bytes);
      progress.update(++done, c.name);
    }
  }
  progress.finish();
  pipeline->pruner().reset();
  for (auto& c : configs) c.step_peak_total = resident + c.step_peak_above;

  // The table: each figure beside its ratio to level 0.
  const auto& ref = *std::find_if(configs.begin(), configs.end(),
                                  [](const Config& c) { return c.level && *c.level == 0.0; });
  const double ref_latency = median(ref.step_seconds);
  const double ref_min = min_of(ref.step_seconds);
  const double ref_cpu = median(ref.step_cpu_seconds);
  auto d = [](int64_t v) { return static_cast<double>(v); };
  std::vector<std::vector<std::string>> rows;
  for (const auto& c : configs) {
    const double latency = median(c.step_seconds);
    std::vector<std::string> row = {
        c.name,
        c.level ? fixed(100 * c.plan.dropped_macs_fraction, 1) + "%" : "-",
        fixed(2e-9 * d(c.unet_macs), 2e-9 * d(ref.unet_macs) < 10 ? 3 : 1),
        ratio_text(d(c.unet_macs), d(ref.unet_macs)),
        fixed(1e3 * latency, 1),
        ratio_text(latency, ref_latency),
        fixed(1e3 * min_of(c.step_seconds), 1),
        ratio_text(min_of(c.step_seconds), ref_min),
        fixed(median(c.step_cpu_seconds), 2),
        ratio_text(median(c.step_cpu_seconds), ref_cpu),
        fixed(mib(c.step_peak_above), 1),
        ratio_text(d(c.step_peak_above), d(ref.step_peak_above)),
        fixed(mib(c.step_peak_total), 1)};
    if (!args.no_generation) {
      const bool has = c.generation_peak_above >= 0;
      row.push_back(has ? fixed(mib(c.generation_peak_above), 1) : "-");
      row.push_back(has ? ratio_text(d(c.generation_peak_above), d(ref.generation_peak_above))
                        : "-");
      row.push_back(has ? fixed(mib(c.generation_peak_total), 1) : "-");
      row.push_back(has ? fixed(c.generation_seconds, 2) : "-");
    }
    rows.push_back(std::move(row));
  }
  std::vector<std::string> header = {"level",
                                     "gated FLOPs dropped",
                                     "U-Net GFLOPs/step",
                                     "x L0",
                                     "step ms (median)",
                                     "x L0",
                                     "step ms (min)",
                                     "x L0",
                                     "step CPU s (median)",
                                     "x L0",
                                     "step peak above weights MiB",
                                     "x L0",
                                     "step peak MiB"};
  if (!args.no_generation) {
    for (const char* h :
         {"generation peak above weights MiB", "x L0", "generation peak MiB", "generation s"}) {
      header.push_back(h);
    }
  }
  std::printf(
      "ldcp bench: %s, %lldx%lld, batch %lld (U-Net batch %lld), %s on %s, %d threads, scores "
      "%s, sampler %s at t=%g of %lld steps, %lld repeats (levels interleaved)\n"
      "weights resident: %.1f MiB; gated layers: %.1f%% of the U-Net's FLOPs at this size\n\n",
      args.model.c_str(), static_cast<long long>(params.width),
      static_cast<long long>(params.height), static_cast<long long>(args.batch),
      static_cast<long long>(unet_batch), runtime::dtype_name(options.dtype).c_str(),
      options.device.str().c_str(), torch::get_num_threads(),
      pipeline->pruner().scores().source.c_str(), args.sampler.c_str(),
      inputs.timestep.item<double>(), static_cast<long long>(args.steps),
      static_cast<long long>(args.repeats), mib(resident),
      100.0 * ratio(d(gated_macs), d(ref.unet_macs)));
  std::printf("%s", markdown_table(header, rows).c_str());
  if (!args.no_generation) {
    std::printf(
        "\n(generation: one %lld-step generation per level including text encoding and "
        "decoding, not repeated)\n",
        static_cast<long long>(args.steps));
  }
  std::fflush(stdout);

  if (!args.json.empty()) {
    nlohmann::json j;
    j["model"] = args.model;
    j["width"] = params.width;
    j["height"] = params.height;
    j["batch"] = args.batch;
    j["unet_batch"] = unet_batch;
    j["dtype"] = runtime::dtype_name(options.dtype);
    j["linear_backend"] = runtime::linear_backend_name(pipeline->linear_backend_choice().backend);
    j["device"] = options.device.str();
    j["threads"] = torch::get_num_threads();
    j["scores"] = pipeline->pruner().scores().source;
    j["sampler"] = args.sampler;
    j["steps"] = args.steps;
    j["timestep"] = inputs.timestep.item<double>();
    j["repeats"] = args.repeats;
    j["guidance_scale"] = args.guidance;
    j["resident_weights_bytes"] = resident;
    j["gated_macs_per_step"] = gated_macs;
    j["gated_fraction_of_unet_macs"] = ratio(d(gated_macs), d(ref.unet_macs));
    auto num = [](double v) { return std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(); };
    for (const auto& c : configs) {
      nlohmann::json row;
      row["name"] = c.name;
      row["level"] = c.level ? nlohmann::json(*c.level) : nlohmann::json();
      row["gates"] = c.level.has_value();
      if (c.level) {
        row["dropped_gated_macs_fraction"] = c.plan.dropped_macs_fraction;
        row["dropped_gated_channel_fraction"] = c.plan.dropped_channel_fraction;
      }
      const double latency = median(c.step_seconds);
      row["unet_macs_per_step"] = c.unet_macs;
      row["unet_flops_per_step"] = 2 * c.unet_macs;
      row["flops_ratio"] = num(ratio(d(c.unet_macs), d(ref.unet_macs)));
      row["step_seconds"] = c.step_seconds;
      row["step_seconds_median"] = latency;
      row["step_latency_ratio"] = num(ratio(latency, ref_latency));
      row["step_seconds_min"] = min_of(c.step_seconds);
      row["step_min_latency_ratio"] = num(ratio(min_of(c.step_seconds), ref_min));
      row["step_cpu_seconds"] = c.step_cpu_seconds;
      row["step_cpu_seconds_median"] = median(c.step_cpu_seconds);
      row["step_cpu_ratio"] = num(ratio(median(c.step_cpu_seconds), ref_cpu));
      row["step_peak_above_weights_bytes"] = c.step_peak_above;
      row["step_peak_above_weights_ratio"] =
          num(ratio(d(c.step_peak_above), d(ref.step_peak_above)));
      row["step_peak_bytes"] = c.step_peak_total;
      if (c.generation_peak_above >= 0) {
        row["generation_peak_above_weights_bytes"] = c.generation_peak_above;
        row["generation_peak_above_weights_ratio"] =
            num(ratio(d(c.generation_peak_above), d(ref.generation_peak_above)));
        row["generation_peak_bytes"] = c.generation_peak_total;
        row["generation_seconds"] = c.generation_seconds;
        row["generation_pruned_flops_fraction"] = c.pruned_flops_fraction;
      }
      j["rows"].push_back(std::move(row));
    }
    std::ofstream out(args.json);
    out << j.dump(2) << "\n";
    if (!out) throw std::runtime_error("cannot write " + args.json);
    std::cerr << "wrote " << args.json << "\n";
  }
}

}  // namespace

void add_bench_command(CLI::App& app) {
  auto args = std::make_shared<BenchArgs>();
  auto& a = *args;
  auto* bench =
      app.add_subcommand("bench", "Measure FLOPs, step latency and peak memory per pruning level");
  bench->add_option("--model", a.model, "Model folder in diffusers format")
      ->required()
      ->check(CLI::ExistingDirectory);
  bench->add_option("--gates", a.gates, "Gates file with learned scores (ldcp train-gates)")
      ->check(CLI::ExistingFile);
  bench->add_option("--scores", a.scores, "Scores without a gates file: magnitude or random")
      ->capture_default_str()
      ->check(CLI::IsMember({"magnitude", "random"}));
  bench->add_option("--levels", a.levels, "Pruning levels, comma-separated (0 is always run)")
      ->capture_default_str();
  bench->add_option("--width", a.width, "Width in pixels (0: the model's native size)")
      ->capture_default_str();
  bench->add_option("--height", a.height, "Height in pixels (0: the model's native size)")
      ->capture_default_str();
  bench->add_option("--batch", a.batch, "Images per request (U-Net batch 2 x this when guided)")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  bench
      ->add_option("--steps", a.steps,
                   "Steps of the whole generation (the timed step is the middle one)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  bench->add_option("--repeats", a.repeats, "Timed steps per level")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  bench
      ->add_option("--guidance", a.guidance, "Guidance scale (<= 1: unguided, U-Net batch = batch)")
      ->capture_default_str();
  bench->add_option("--sampler", a.sampler, "Sampler")
      ->capture_default_str()
      ->check(CLI::IsMember(schedulers::sampler_names()));
  bench->add_option("--prompt", a.prompt, "Prompt of the measured request")->capture_default_str();
  bench->add_option("--seed", a.seed, "Seed of the latents")->capture_default_str();
  bench->add_option("--device", a.device, "cpu, cuda or cuda:N")->capture_default_str();
  add_dtype_option(bench, a.dtype, "");
  bench->add_option("--threads", a.threads, "Intra-op threads (0: libtorch's default)")
      ->capture_default_str()
      ->check(CLI::Range(0, 1024));
  add_memory_format_option(*bench, a.channels_last);
  add_linear_backend_option(*bench, a.linear_backend);
  bench->add_option("--json", a.json, "Write every figure to this JSON file");
  bench->add_flag("--no-ungated", a.no_ungated,
                  "Skip the no-gates baseline (it loads a second U-Net)");
  bench->add_flag("--no-generation", a.no_generation,
                  "Skip the whole-generation peak memory (steps only)");
  bench->final_callback([args] { run_bench(*args); });
}

}  // namespace ldcp::tools
