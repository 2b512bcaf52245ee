// `ldcp init-demo-model`'s folders load and generate; unknown configs are refused.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/io/model_folder.h"
#include "model/io/safetensors.h"
#include "model/pipelines/demo_model.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "tests/common/test_util.h"

namespace ldcp::pipelines {
namespace {

TEST(DemoModel, TinyFolderLoadsAndGenerates) {
  const auto dir = ldcp::testing::temp_dir("demo") / "tiny";
  DemoModelOptions options;
  options.vocab_dir = ldcp::testing::source_dir() / "data" / "clip";
  write_demo_model(dir, options);
  auto folder = io::ModelFolder::open(dir);
  EXPECT_TRUE(std::filesystem::exists(folder.tokenizer / "vocab.json"));

  auto pipeline = StableDiffusionPipeline::load(dir);
  EXPECT_EQ(pipeline->native_resolution(), 256);
  GenerationParams p;
  p.prompt = "a lighthouse";
  p.width = p.height = 64;
  p.steps = 2;
  auto result = pipeline->generate(p);
  EXPECT_EQ(result.images.sizes(), (std::vector<int64_t>{1, 64, 64, 3}));
  EXPECT_TRUE(result.images.isfinite().all().item<bool>());
}

TEST(DemoModel, WeightsAreAFunctionOfTheSeed) {
  const auto root = ldcp::testing::temp_dir("demo-seed");
  DemoModelOptions options;
  options.vocab_dir = ldcp::testing::source_dir() / "data" / "clip";
  write_demo_model(root / "a", options);
  write_demo_model(root / "b", options);
  options.seed = 1;
  write_demo_model(root / "c", options);
  const auto file = std::filesystem::path("vae") / "diffusion_pytorch_model.safetensors";
  auto a = io::load_safetensors(root / "a" / file);
  auto b = io::load_safetensors(root / "b" / file);
  auto c = io::load_safetensors(root / "c" / file);
  const std::string key = "decoder.conv_in.weight";
  EXPECT_TRUE(torch::equal(a.at(key), b.at(key)));
  EXPECT_FALSE(torch::equal(a.at(key), c.at(key)));
}

TEST(DemoModel, UnknownConfigIsRefused) {
  DemoModelOptions options;
  options.config = "sdxl";
  EXPECT_THROW(write_demo_model(ldcp::testing::temp_dir("demo-bad"), options),
               std::invalid_argument);
}

}  // namespace
}  // namespace ldcp::pipelines
