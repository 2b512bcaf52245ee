// `ldcp train-gates`: learns the gate scores of a model from a folder of images.
#include <cstdio>
#include <iostream>
#include <memory>
#include <optional>

#include <unistd.h>

#include <torch/torch.h>

#include "cli/progress.h"
#include "model/pruning/gate_trainer.h"
#include "model/runtime/device.h"
#include "model/runtime/dtype.h"
#include "tools/commands.h"

namespace ldcp::tools {

using cli::Progress;
namespace {

struct TrainGatesArgs {
  pruning::TrainerOptions options;
  std::string model, data, out, cache_dir, checkpoint, resume, captions;
  std::string device = "cpu", dtype = "auto", levels = "0.1,0.25,0.5,0.75";
};

std::string format_errors(const pruning::ValidationReport& report) {
  std::string out;
  char item[64];
  for (size_t i = 0; i < report.levels.size(); ++i) {
    std::snprintf(item, sizeof item, "%s%.2f: %.4f", out.empty() ? "" : ", ", report.levels[i],
                  report.relative_error[i]);
    out += item;
  }
  return out;
}

void run_train_gates(TrainGatesArgs& args) {
  auto& o = args.options;
  o.model_dir = args.model;
  o.data_dir = args.data;
  o.out = args.out;
  o.cache_dir = args.cache_dir;
  o.checkpoint = args.checkpoint;
  o.resume = args.resume;
  o.captions = args.captions;
  o.device = runtime::parse_device(args.device);
  // auto: bf16 autocast on CUDA (fp16's range needs loss scaling), fp32 on the CPU (no autocast
  // there: the gates' gradients stay in full precision).
  o.dtype = args.dtype == "auto" ? (o.device.is_cuda() ? c10::kBFloat16 : c10::kFloat)
                                 : parse_dtype(args.dtype, o.device);
  if (args.dtype == "auto") {
    std::fprintf(stderr, "dtype: %s (auto: %s)\n", runtime::dtype_name(o.dtype).c_str(),
                 o.device.is_cuda() ? "bf16 autocast on CUDA" : "fp32 on the CPU");
  }
  o.levels = parse_levels(args.levels, "--levels");

  // Log lines replace a progress bar being drawn on a terminal (it is redrawn on its next update).
  const bool terminal = ::isatty(::fileno(stderr)) != 0;
  auto print = [terminal](const std::string& line) {
    std::fprintf(stderr, "%s%s\n", terminal ? "\r\033[K" : "", line.c_str());
  };
  std::unique_ptr<Progress> encode, train;
  int64_t first_step = 0;
  pruning::TrainerCallbacks callbacks;
  callbacks.log = print;
  bool all_cached = false;
  callbacks.encode = [&](int64_t done, int64_t total) {
    if (!encode && !all_cached) {
      all_cached = done == total;  // read back from the cache at once: nothing to show
      if (all_cached) return;
      encode = std::make_unique<Progress>("encoding latents", total);
    }
    if (!encode) return;
    encode->update(done);
    if (done == total) encode->finish();
  };
  callbacks.step = [&](const pruning::StepReport& r) {
    if (!train) {
      first_step = r.step - 1;
      train = std::make_unique<Progress>(
          first_step ? "training (resumed at " + std::to_string(first_step) + ")" : "training",
          r.steps - first_step);
    }
    // Every step on a terminal; about 200 lines in a log.
    const int64_t every = terminal ? 1 : std::max<int64_t>(1, (r.steps - first_step) / 200);
    if ((r.step - first_step) % every == 0 || r.step == r.steps) {
      char detail[96];
      std::snprintf(detail, sizeof detail, "loss %.4f (avg %.4f, distill %.4f, resource %.2e)",
                    r.loss, r.loss_ema, r.distill, r.resource);
      train->update(r.step - first_step, detail);
    }
  };
  callbacks.validation = [&](const pruning::ValidationReport& r) {
    print("validation at step " + std::to_string(r.step) +
          ", relative noise-prediction error per level: " + format_errors(r));
  };

  const auto result = pruning::train_gates(o, callbacks);
  if (train) train->finish();
  if (!result.finished) {
    std::printf("stopped at step %lld of %lld; checkpoint %s (continue with --resume %s)\n",
                static_cast<long long>(result.last_step), static_cast<long long>(o.steps),
                result.checkpoint.string().c_str(), result.checkpoint.string().c_str());
    return;
  }
  if (result.validations.size() >= 2) {
    std::printf(
        "held-out relative noise-prediction error per level:\n  at step %lld%s: %s\n  learned:  "
        "%s\n  random scores (a control): %s\n",
        static_cast<long long>(result.validations.front().step),
        result.validations.front().step == 0 ? " (magnitude order)" : "",
        format_errors(result.validations.front()).c_str(),
        format_errors(result.validations.back()).c_str(),
        format_errors(result.random_validation).c_str());
  }
  std::printf("wrote %s (learned scores of %zu layers, %lld steps on %lld images; checkpoint %s)\n",
              result.out.string().c_str(), result.scores.layers.size(),
              static_cast<long long>(result.last_step), static_cast<long long>(result.images),
              result.checkpoint.string().c_str());
}

}  // namespace

void add_train_gates_command(CLI::App& app) {
  auto args = std::make_shared<TrainGatesArgs>();
  auto& a = *args;
  auto& o = a.options;
  auto* cmd = app.add_subcommand(
      "train-gates", "Learn the U-Net's gate scores from a folder of images (distillation)");
  cmd->add_option("--model", a.model, "Model folder in diffusers format")
      ->required()
      ->check(CLI::ExistingDirectory);
  cmd->add_option("--data", a.data, "Folder tree of PNG / JPEG training images")->required();
  cmd->add_option("--out", a.out, "Gates file to write (safetensors)")->required();
  cmd->add_option("--resolution", o.resolution, "Training resolution in pixels (centre crop)")
      ->capture_default_str()
      ->check(CLI::Range(8, 4096));
  cmd->add_option("--steps", o.steps, "Optimisation steps")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{100000000}));
  cmd->add_option("--batch", o.batch, "Images per step")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  cmd->add_option("--lr", o.lr, "Adam learning rate of the logits")->capture_default_str();
  cmd->add_option("--final-lr-fraction", o.final_lr_fraction,
                  "The learning rate decays (cosine) to lr times this at the last step")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  cmd->add_option("--seed", o.seed, "Random seed (the run is deterministic for it)")
      ->capture_default_str();
  cmd->add_option("--prompt", o.prompt, "Text condition of every image (without --captions)");
  cmd->add_option("--captions", a.captions,
                  "Captions file, lines \"relative/path<TAB>caption\" (others use --prompt)")
      ->check(CLI::ExistingFile);
  cmd->add_option("--levels", a.levels,
                  "Pruning levels: training samples between the smallest and the largest; "
                  "validation reports each")
      ->capture_default_str();
  cmd->add_option("--temperature", o.temperature, "Temperature of the sigmoid relaxation")
      ->capture_default_str();
  cmd->add_option("--resource-weight", o.resource_weight, "Weight of the resource term")
      ->capture_default_str();
  cmd->add_option("--cost-normalized", o.cost_normalized,
                  "Divide each unit's gradient by its MAC cost (logits learn importance per cost)")
      ->capture_default_str();
  cmd->add_option("--global-adam", o.global_adam,
                  "One Adam second moment for all logits (a unit moves with its gradient's size); "
                  "false: per-logit Adam")
      ->capture_default_str();
  cmd->add_option("--resume", a.resume, "Continue from this checkpoint")->check(CLI::ExistingFile);
  cmd->add_option("--checkpoint", a.checkpoint, "Checkpoint file (default: OUT.ckpt)");
  cmd->add_option("--checkpoint-every", o.checkpoint_every,
                  "Steps between checkpoints (0: steps/10)")
      ->capture_default_str();
  cmd->add_option("--stop-after", o.stop_after,
                  "Stop after this step with a checkpoint (0: run all steps)")
      ->capture_default_str();
  cmd->add_option("--val-images", o.val_images, "Held-out images (-1: min(64, N/10))")
      ->capture_default_str();
  cmd->add_option("--val-every", o.val_every, "Steps between validations (0: at checkpoints)")
      ->capture_default_str();
  cmd->add_option("--cache-dir", a.cache_dir,
                  "Latent cache root (default: $LDCP_CACHE_DIR or ~/.cache/ldcp)");
  cmd->add_option("--encode-batch", o.encode_batch, "Images per VAE call when caching latents")
      ->capture_default_str()
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--device", a.device, "cpu, cuda or cuda:N")->capture_default_str();
  add_dtype_option(
      cmd, a.dtype,
      "Autocast dtype on CUDA: auto (bf16 on CUDA, fp32 on the CPU), fp32, bf16 or fp16");
  cmd->add_flag("--fp16-weights", o.prefer_fp16_weights,
                "Load *.fp16.safetensors weight variants when present");
  cmd->final_callback([args] { run_train_gates(*args); });
}

}  // namespace ldcp::tools
