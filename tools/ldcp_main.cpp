// ldcp: the offline command-line tool.
//   ldcp generate --model DIR --prompt TEXT --out FILE.png [options]
//   ldcp init-demo-model DIR [--config tiny|sd15]

#include <cstdio>
#include <iostream>
#include <random>
#include <string>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "model/pipelines/demo_model.h"
#include "model/pipelines/image_io.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "model/schedulers/scheduler.h"
#include "tools/progress.h"

namespace {

using namespace ldcp;

c10::ScalarType parse_dtype(const std::string& name) {
  if (name == "fp32" || name == "float32") return torch::kFloat;
  if (name == "fp16" || name == "float16") return torch::kHalf;
  if (name == "bf16" || name == "bfloat16") return torch::kBFloat16;
  throw std::invalid_argument("--dtype must be fp32, fp16 or bf16, got \"" + name + "\"");
}

c10::Device parse_device(const std::string& name) {
  c10::Device device(c10::kCPU);
  try {
    device = c10::Device(name);
  } catch (const std::exception&) {
    throw std::invalid_argument("--device must be cpu, cuda or cuda:N, got \"" + name + "\"");
  }
  if (device.is_cuda() && !torch::cuda::is_available()) {
    throw std::invalid_argument("--device " + name + ": CUDA is not available on this machine");
  }
  if (!device.is_cpu() && !device.is_cuda()) {
    throw std::invalid_argument("--device must be cpu, cuda or cuda:N, got \"" + name + "\"");
  }
  return device;
}

// FILE.png for one image; FILE-0.png, FILE-1.png, ... for several.
std::filesystem::path output_path(const std::filesystem::path& out, int64_t index, int64_t count) {
  if (count == 1) return out;
  auto name = out.stem().string() + "-" + std::to_string(index) + out.extension().string();
  return out.parent_path() / name;
}

struct GenerateArgs {
  std::string model, out, device = "cpu", dtype = "fp32";
  pipelines::GenerationParams params;
  std::optional<uint64_t> seed;
  bool fp16_weights = false;
};

int run_generate(GenerateArgs& args) {
  pipelines::PipelineOptions options;
  options.device = parse_device(args.device);
  options.dtype = parse_dtype(args.dtype);
  options.prefer_fp16_weights = args.fp16_weights;
  auto& params = args.params;
  params.seed = args.seed ? *args.seed : std::random_device{}();

  auto pipeline = pipelines::StableDiffusionPipeline::load(args.model, options);
  // 0 means the model's native size, as diffusers' default (unet sample_size x VAE factor).
  if (params.width == 0 || params.height == 0) {
    const auto native = pipeline->native_resolution();
    if (params.width == 0) params.width = native;
    if (params.height == 0) params.height = native;
  }
  pipeline->validate(params);

  tools::Progress progress("denoising", params.steps);
  auto result = pipeline->generate(params, [&](const pipelines::StepInfo& step) {
    progress.update(step.step + 1, "t=" + std::to_string(static_cast<int64_t>(step.timestep)));
    return true;
  });
  progress.finish();

  const auto images = pipelines::to_uint8(result.images);
  for (int64_t i = 0; i < images.size(0); ++i) {
    const auto path = output_path(args.out, i, images.size(0));
    pipelines::write_png(path, images[i]);
    std::cout << "wrote " << path.string() << "\n";
  }
  std::printf("seed %llu, %lldx%lld, %zu steps, text %.2fs, denoise %.2fs, decode %.2fs, total %.2fs\n",
              static_cast<unsigned long long>(params.seed), static_cast<long long>(params.width),
              static_cast<long long>(params.height), result.timesteps.size(),
              result.timings.text_encoding_s, result.timings.denoising_s,
              result.timings.decoding_s, result.timings.total_s);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ldcp: Stable Diffusion 1.5 on libtorch with learned dynamic channel pruning"};
  app.require_subcommand(1);

  GenerateArgs gen;
  gen.params.width = gen.params.height = 0;
  auto* generate = app.add_subcommand("generate", "Generate images from a text prompt");
  generate->add_option("--model", gen.model, "Model folder in diffusers format")
      ->required()
      ->check(CLI::ExistingDirectory);
  generate->add_option("--prompt", gen.params.prompt, "Text prompt")->required();
  generate->add_option("--out", gen.out, "Output PNG (FILE-0.png, FILE-1.png, ... for several)")
      ->required();
  generate->add_option("--negative-prompt", gen.params.negative_prompt, "Negative prompt");
  generate->add_option("--width", gen.params.width, "Width in pixels, multiple of 8 (0: model's)")
      ->capture_default_str();
  generate->add_option("--height", gen.params.height, "Height in pixels, multiple of 8 (0: model's)")
      ->capture_default_str();
  generate->add_option("--steps", gen.params.steps, "Denoising steps")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  generate->add_option("--guidance", gen.params.guidance_scale,
                       "Classifier-free guidance scale (<= 1 turns guidance off)")
      ->capture_default_str();
  generate->add_option("--guidance-rescale", gen.params.guidance_rescale,
                       "Guidance rescale factor in [0, 1]")
      ->capture_default_str();
  generate->add_option("--sampler", gen.params.sampler, "Sampler")
      ->capture_default_str()
      ->check(CLI::IsMember(schedulers::sampler_names()));
  generate->add_option("--eta", gen.params.eta, "DDIM eta")->capture_default_str();
  generate->add_option("--seed", gen.seed, "Random seed (default: a random one, printed)");
  generate->add_option("--num-images", gen.params.num_images, "Images to generate")
      ->capture_default_str()
      ->check(CLI::Range(1, 64));
  generate->add_option("--device", gen.device, "cpu, cuda or cuda:N")->capture_default_str();
  generate->add_option("--dtype", gen.dtype, "fp32, fp16 or bf16")
      ->capture_default_str()
      ->check(CLI::IsMember({"fp32", "fp16", "bf16", "float32", "float16", "bfloat16"}));
  generate->add_flag("--fp16-weights", gen.fp16_weights,
                     "Load *.fp16.safetensors weight variants when present");

  std::string demo_dir;
  pipelines::DemoModelOptions demo;
  auto* init_demo = app.add_subcommand(
      "init-demo-model", "Write a random-weight model folder in diffusers format");
  init_demo->add_option("dir", demo_dir, "Folder to write")->required();
  init_demo->add_option("--config", demo.config, "tiny or sd15 (the exact SD1.5 architecture)")
      ->capture_default_str()
      ->check(CLI::IsMember(pipelines::demo_model_configs()));
  init_demo->add_option("--seed", demo.seed, "Seed of the random weights")->capture_default_str();

  CLI11_PARSE(app, argc, argv);
  try {
    if (generate->parsed()) return run_generate(gen);
    if (init_demo->parsed()) {
      pipelines::write_demo_model(demo_dir, demo);
      std::cout << "wrote " << demo.config << " demo model to " << demo_dir << "\n";
      return 0;
    }
  } catch (const std::exception& e) {
    std::cerr << "ldcp: error: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
