// Whole pipeline runs from single-file checkpoints in the original layout against diffusers'
// StableDiffusionPipeline.from_single_file on the same files (tests/parity/ref_single_file.py):
// a full fp32 file with an EMA copy, an fp16 file, and the older CLIP layout (against the full
// file's image of the same weights). Tolerance: the pipeline suites' fp32 one, max per-pixel
// |diff| <= 2/255 and mean <= 0.5/255.

#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "model/io/json_file.h"
#include "model/io/safetensors.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "model/runtime/device.h"
#include "tests/common/test_util.h"

namespace ldcp {
namespace {

constexpr double kMaxDiff = 2.0 / 255, kMeanDiff = 0.5 / 255;

TEST(SingleFileParity, ImagesMatchDiffusersFromSingleFile) {
  const auto ref = testing::parity_dir() / "ref" / "single_file";
  const auto cases = io::read_json_file(ref / "cases.json");
  const auto images = io::load_safetensors(ref / "images.safetensors");
  ASSERT_FALSE(cases.empty());
  const char* device = std::getenv("LDCP_TEST_DEVICE");
  pipelines::PipelineOptions options;
  options.device = ldcp::runtime::parse_device(
      device != nullptr && *device != '\0' ? device : "cpu", "LDCP_TEST_DEVICE");
  std::map<std::string, std::unique_ptr<pipelines::StableDiffusionPipeline>> loaded;
  for (const auto& c : cases) {
    const std::string name = c.at("name");
    SCOPED_TRACE("case " + name);
    const std::string file = c.at("file");
    if (!loaded.count(file)) {
      auto file_options = options;
      file_options.single_file_config = testing::parity_model(c.at("config"));
      loaded[file] = pipelines::StableDiffusionPipeline::load(ref / file, file_options);
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
    const auto result = loaded[file]->generate(p);
    const auto& expected = images.at(c.at("reference").get<std::string>());
    ASSERT_EQ(result.images.sizes(), expected.sizes());
    const auto diff = (result.images.to(torch::kFloat) - expected).abs();
    const double max_diff = diff.max().item<double>(), mean_diff = diff.mean().item<double>();
    std::printf("%-16s %-28s max |diff| %.3f/255, mean %.4f/255\n", name.c_str(), file.c_str(),
                max_diff * 255, mean_diff * 255);
    EXPECT_LE(max_diff, kMaxDiff);
    EXPECT_LE(mean_diff, kMeanDiff);
    EXPECT_GT(expected.std().item<double>(), 1e-3);  // not trivially equal (e.g. saturated)
  }
}

}  // namespace
}  // namespace ldcp
