#include "tests/pipeline/pipeline_parity.h"

#include <map>
#include <memory>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "model/io/json_file.h"
#include "model/io/safetensors.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "tests/common/test_util.h"

namespace ldcp::testing {

void check_pipeline_cases(const std::string& part) {
  const auto ref = parity_dir() / "ref" / part;
  const auto cases = io::read_json_file(ref / "cases.json");
  const auto images = io::load_safetensors(ref / "images.safetensors");
  ASSERT_FALSE(cases.empty());
  std::map<std::string, std::unique_ptr<pipelines::StableDiffusionPipeline>> loaded;
  for (const auto& c : cases) {
    const std::string name = c.at("name");
    SCOPED_TRACE("case " + name);
    const std::string model = c.at("model");
    if (!loaded.count(model)) loaded[model] = pipelines::StableDiffusionPipeline::load(parity_model(model));
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
    const auto result = loaded[model]->generate(p);
    const auto& expected = images.at(name);
    ASSERT_EQ(result.images.sizes(), expected.sizes());
    const auto diff = (result.images - expected).abs();
    const double max_diff = diff.max().item<double>();
    const double mean_diff = diff.mean().item<double>();
    std::printf("%-28s max |diff| %.2e (%.3f/255), mean %.2e (%.4f/255)\n", name.c_str(), max_diff,
                max_diff * 255, mean_diff, mean_diff * 255);
    EXPECT_LE(max_diff, 2.0 / 255) << name;
    EXPECT_LE(mean_diff, 0.5 / 255) << name;
    // The images must not be trivially equal (e.g. both saturated): a different seed differs.
    EXPECT_GT(expected.std().item<double>(), 1e-3) << name;
  }
}

}  // namespace ldcp::testing
