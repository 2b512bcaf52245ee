#include "tests/pipeline/pipeline_parity.h"

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <stdexcept>

#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "model/io/json_file.h"
#include "model/io/safetensors.h"
#include "model/pipelines/image_io.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "model/runtime/device.h"
#include "model/runtime/dtype.h"
#include "tests/common/test_util.h"

namespace ldcp::testing {
namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* value = std::getenv(name);
  return value == nullptr || *value == '\0' ? fallback : std::string(value);
}

}  // namespace

PipelineTolerance pipeline_tolerance(c10::ScalarType dtype, c10::ScalarType reference_dtype,
                                     const c10::Device& device) {
  const std::string where = device.is_cpu() ? "" : " (measured on the CPU; unmeasured on CUDA)";
  if (dtype == c10::kFloat && reference_dtype == c10::kFloat) {
    // The fp32 tolerance. On CUDA the run turns TF32 off (check_pipeline_cases), so
    // fp32 is fp32 there too.
    return {2.0 / 255, 0.5 / 255,
            std::string("fp32 against fp32: the issue's tolerance") +
                (device.is_cpu() ? "" : " (TF32 off; unmeasured on CUDA)")};
  }
  if (dtype == c10::kBFloat16 && reference_dtype == c10::kBFloat16) {
    // Measured 2026-12-02 on an AMX/avx512_bf16 CPU (oneDNN's bf16 kernels, as diffusers'):
    // worst max 3.98/255 and mean 0.57/255 on the tiny suite, 11.95/255 and 1.38/255 on the
    // SD1.5 architecture (random weights amplify rounding-order differences over the steps).
    return {16.0 / 255, 2.0 / 255,
            "bf16 against diffusers in bf16: measured worst 11.95/255 max, 1.38/255 mean" + where};
  }
  if (dtype == c10::kHalf && reference_dtype == c10::kFloat) {
    // Meant for CUDA (gpu_check.sh); measured only on the CPU (2026-12-02): worst 1.25/255 max,
    // 0.15/255 mean over both suites, except two-images-odd-size at 58.96/255 max, 2.87/255 mean
    // (a few pixels of one image; not investigated, CPU fp16 is no supported path).
    return {4.0 / 255, 0.5 / 255,
            "fp16 against fp32: from CPU figures (worst 1.25/255 max but for one odd-size case)" +
                where};
  }
  throw std::invalid_argument("no pipeline tolerance for " + runtime::dtype_name(dtype) +
                              " against " + runtime::dtype_name(reference_dtype) + " references");
}

PipelineRun pipeline_run_from_env(std::optional<c10::ScalarType> forced_dtype) {
  PipelineRun run;
  run.device = runtime::parse_device(env_or("LDCP_TEST_DEVICE", "cpu"), "LDCP_TEST_DEVICE");
  if (forced_dtype) {
    run.dtype = *forced_dtype;
  } else {
    const std::string name = env_or("LDCP_TEST_DTYPE", "fp32");
    const auto dtype = runtime::dtype_from_name(name);
    if (!dtype || *dtype == c10::kBFloat16) {
      throw std::invalid_argument("LDCP_TEST_DTYPE=" + name +
                                  ": the suites against fp32 references run fp32 or fp16 (the "
                                  "bf16 suites, *_bf16, always run bf16)");
    }
    run.dtype = *dtype;
  }
  run.reference_dtype = run.dtype == c10::kBFloat16 ? c10::kBFloat16 : c10::kFloat;
  return run;
}

void check_pipeline_cases(const std::string& part, const PipelineRun& run) {
  const auto ref = parity_dir() / "ref" / part;
  const auto cases = io::read_json_file(ref / "cases.json");
  const auto images = io::load_safetensors(ref / "images.safetensors");
  ASSERT_FALSE(cases.empty());
  const auto tolerance = pipeline_tolerance(run.dtype, run.reference_dtype, run.device);
  std::printf(
      "%s: %s on %s against diffusers' %s images; tolerance max %.2f/255, mean %.2f/255 "
      "(%s)\n",
      part.c_str(), runtime::dtype_name(run.dtype).c_str(), run.device.str().c_str(),
      runtime::dtype_name(run.reference_dtype).c_str(), tolerance.max_diff * 255,
      tolerance.mean_diff * 255, tolerance.basis.c_str());
  if (run.device.is_cuda()) {
    // libtorch lets cuDNN run fp32 convolutions in TF32 by default (10-bit mantissas): an fp32
    // run against fp32 references is meant at fp32's precision.
    at::globalContext().setAllowTF32CuDNN(false);
    at::globalContext().setAllowTF32CuBLAS(false);
  }
  pipelines::PipelineOptions options;
  options.device = run.device;
  options.dtype = run.dtype;
  std::map<std::string, std::unique_ptr<pipelines::StableDiffusionPipeline>> loaded;
  double worst_max = 0, worst_mean = 0;
  for (const auto& c : cases) {
    const std::string name = c.at("name");
    SCOPED_TRACE("case " + name);
    const std::string model = c.at("model");
    if (!loaded.count(model)) {
      loaded[model] = pipelines::StableDiffusionPipeline::load(parity_model(model), options);
    }
    pipelines::GenerationParams p;
    p.prompt = c.at("prompt");
    p.negative_prompt = c.at("negative_prompt");
    p.width = c.at("width");
    p.height = c.at("height");
    p.steps = c.at("steps");
    p.guidance_scale = c.at("guidance_scale");
    p.guidance_rescale = c.at("guidance_rescale");
    p.sampler = c.at("sampler");
    p.eta = c.at("eta");
    p.seed = c.at("seed");
    p.num_images = c.at("num_images");
    // img2img and inpainting cases (ref_img2img.py): PNG files beside the references.
    if (c.contains("init_image")) {
      p.init_image = pipelines::read_png(ref / c.at("init_image").get<std::string>());
      p.strength = c.at("strength").get<double>();
      const std::string mask = c.at("mask_image");
      if (!mask.empty()) p.mask_image = pipelines::read_png(ref / mask);
    }
    // LoRA cases (ref_lora.py): files beside the references, each at its adapter weight.
    if (c.contains("loras")) {
      for (const auto& l : c.at("loras")) {
        p.loras.push_back({(ref / l.at("name").get<std::string>()).string(), l.at("weight")});
      }
    }
    const auto result = loaded[model]->generate(p);
    const auto& expected = images.at(name);
    ASSERT_EQ(result.images.sizes(), expected.sizes());
    const auto diff = (result.images.to(torch::kFloat) - expected).abs();
    const double max_diff = diff.max().item<double>();
    const double mean_diff = diff.mean().item<double>();
    worst_max = std::max(worst_max, max_diff);
    worst_mean = std::max(worst_mean, mean_diff);
    std::printf("%-28s max |diff| %.2e (%.3f/255), mean %.2e (%.4f/255)\n", name.c_str(), max_diff,
                max_diff * 255, mean_diff, mean_diff * 255);
    EXPECT_LE(max_diff, tolerance.max_diff) << name;
    EXPECT_LE(mean_diff, tolerance.mean_diff) << name;
    // The images must not be trivially equal (e.g. both saturated): a different seed differs.
    EXPECT_GT(expected.std().item<double>(), 1e-3) << name;
  }
  std::printf("%s: worst case max |diff| %.3f/255, worst mean %.4f/255\n", part.c_str(),
              worst_max * 255, worst_mean * 255);
}

}  // namespace ldcp::testing
