// Pipeline behaviour beyond parity: validation, step callbacks and stopping, determinism.
#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/models/unets/unet_2d_condition.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "tests/common/test_util.h"

namespace ldcp::pipelines {
namespace {

class PipelineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    pipeline_ = StableDiffusionPipeline::load(ldcp::testing::parity_model("tiny-a")).release();
  }
  static void TearDownTestSuite() { delete pipeline_; }

  static GenerationParams small() {
    GenerationParams p;
    p.prompt = "a red bicycle";
    p.width = p.height = 64;
    p.steps = 3;
    p.seed = 5;
    return p;
  }

  static void expect_invalid(GenerationParams p, const std::string& field) {
    try {
      pipeline_->validate(p);
      ADD_FAILURE() << "expected std::invalid_argument naming " << field;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(field), std::string::npos) << e.what();
    }
    EXPECT_THROW(pipeline_->generate(p), std::invalid_argument);
  }

  static StableDiffusionPipeline* pipeline_;
};
StableDiffusionPipeline* PipelineTest::pipeline_ = nullptr;

TEST_F(PipelineTest, RejectsInvalidParametersNamingTheField) {
  auto p = small();
  p.width = 60;
  expect_invalid(p, "width");
  p = small();
  p.height = 0;
  expect_invalid(p, "height");
  p = small();
  p.steps = 0;
  expect_invalid(p, "steps");
  p = small();
  p.guidance_scale = std::numeric_limits<double>::quiet_NaN();
  expect_invalid(p, "guidance_scale");
  p = small();
  p.guidance_rescale = 1.5;
  expect_invalid(p, "guidance_rescale");
  p = small();
  p.num_images = 0;
  expect_invalid(p, "num_images");
  p = small();
  p.sampler = "heun";
  expect_invalid(p, "sampler");
}

TEST_F(PipelineTest, CallbackSeesEveryStepInOrder) {
  std::vector<int64_t> steps;
  std::vector<double> timesteps;
  int64_t num_steps = -1;
  auto result = pipeline_->generate(small(), [&](const StepInfo& info) {
    steps.push_back(info.step);
    timesteps.push_back(info.timestep);
    EXPECT_EQ(info.latents->size(0), 1);
    num_steps = info.num_steps;
    return true;
  });
  ASSERT_EQ(steps.size(), result.timesteps.size());
  EXPECT_EQ(num_steps, static_cast<int64_t>(steps.size()));
  for (size_t i = 0; i < steps.size(); ++i) EXPECT_EQ(steps[i], static_cast<int64_t>(i));
  EXPECT_EQ(timesteps, result.timesteps);
  EXPECT_FALSE(result.stopped);
  EXPECT_EQ(result.images.sizes(), (std::vector<int64_t>{1, 64, 64, 3}));
}

TEST_F(PipelineTest, CallbackCanStopTheRun) {
  int calls = 0;
  auto result = pipeline_->generate(small(), [&](const StepInfo& info) {
    ++calls;
    return info.step < 1;  // stop after the second step
  });
  EXPECT_TRUE(result.stopped);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(result.timesteps.size(), 2u);
  EXPECT_FALSE(result.images.defined());
}

TEST_F(PipelineTest, SameSeedSameImageOtherSeedOtherImage) {
  auto a = pipeline_->generate(small()).images;
  auto b = pipeline_->generate(small()).images;
  auto p = small();
  p.seed = 6;
  auto c = pipeline_->generate(p).images;
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_GT((a - c).abs().max().item<double>(), 1e-3);
}

TEST_F(PipelineTest, SeveralImagesDiffer) {
  auto p = small();
  p.num_images = 2;
  auto images = pipeline_->generate(p).images;
  ASSERT_EQ(images.size(0), 2);
  EXPECT_GT((images[0] - images[1]).abs().max().item<double>(), 1e-3);
  auto u8 = to_uint8(images);
  EXPECT_EQ(u8.scalar_type(), torch::kUInt8);
  EXPECT_EQ(u8.sizes(), images.sizes());
}

TEST_F(PipelineTest, NativeResolutionIsSampleSizeTimesVaeFactor) {
  EXPECT_EQ(pipeline_->vae_scale_factor(), 8);
  EXPECT_EQ(pipeline_->native_resolution(), 64);  // tiny-a: sample_size 8
}

// Tiled decoding (diffusers' enable_vae_tiling): off when the image fits one tile, and when on,
// the decoder's measured peak is that of a tile, so the whole run's peak falls.
TEST(PipelineVaeTiling, TilesOnlyLargerImagesAndLowersThePeak) {
  const auto model = ldcp::testing::parity_model("tiny-a");
  auto whole = StableDiffusionPipeline::load(model);
  PipelineOptions options;
  options.vae_tile_size = 32;
  auto tiled = StableDiffusionPipeline::load(model, options);
  GenerationParams p;
  p.prompt = "a lighthouse";
  p.steps = 2;
  p.seed = 3;
  p.width = p.height = 32;  // one tile: decoded whole, the same image
  EXPECT_TRUE(torch::equal(whole->generate(p).images, tiled->generate(p).images));
  p.width = p.height = 128;
  const auto a = whole->generate(p);
  const auto b = tiled->generate(p);
  ASSERT_EQ(b.images.sizes(), a.images.sizes());
  EXPECT_FALSE(torch::equal(a.images, b.images));  // the seams are blended: not bit-equal
  EXPECT_LT(b.peak_memory_above_weights_bytes, a.peak_memory_above_weights_bytes / 2);

  options.vae_tile_size = 36;
  try {
    StableDiffusionPipeline::load(model, options);
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("vae_tile_size"), std::string::npos) << e.what();
  }
}

// Channels-last weights (the default) change only the layout: the same image, up to float
// rounding, as with contiguous (NCHW) weights, at level 0 and pruned.
TEST(PipelineMemoryFormat, ChannelsLastEqualsContiguous) {
  const auto model = ldcp::testing::parity_model("tiny-a");
  auto channels_last = StableDiffusionPipeline::load(model);
  PipelineOptions options;
  options.channels_last = false;
  auto contiguous = StableDiffusionPipeline::load(model, options);
  const auto& conv = channels_last->unet().conv_in->weight;
  EXPECT_TRUE(conv.is_contiguous(at::MemoryFormat::ChannelsLast));
  EXPECT_FALSE(conv.is_contiguous());
  EXPECT_TRUE(contiguous->unet().conv_in->weight.is_contiguous());
  GenerationParams p;
  p.prompt = "a lighthouse";
  p.steps = 3;
  p.seed = 5;
  p.width = p.height = 64;
  for (const double level : {0.0, 0.5}) {
    p.pruning = ldcp::pruning::PruningSchedule::fixed(level);
    const auto a = channels_last->generate(p).images;
    const auto b = contiguous->generate(p).images;
    EXPECT_LT((a - b).abs().max().item<float>(), 1e-4) << "level " << level;
  }
}

// The server runs batches on several threads (--workers) through one pipeline: each run's
// pruning level must stay its own (the gates' keep counts are shared model state).
TEST(PipelineThreads, ConcurrentRunsAtDifferentLevelsEqualRunsAlone) {
  auto pipeline = StableDiffusionPipeline::load(ldcp::testing::parity_model("tiny-a"));
  std::vector<GenerationParams> params(3);
  const double levels[] = {0.0, 0.3, 0.6};
  for (size_t i = 0; i < params.size(); ++i) {
    params[i].prompt = "a lighthouse";
    params[i].width = params[i].height = 64;
    params[i].steps = 6;
    params[i].seed = 40 + i;
    params[i].pruning = levels[i] > 0 ? pruning::PruningSchedule::fixed(levels[i])
                                      : pruning::PruningSchedule::off();
  }
  std::vector<at::Tensor> alone;
  for (const auto& p : params) alone.push_back(pipeline->generate(p).images);
  for (int round = 0; round < 2; ++round) {
    std::vector<at::Tensor> together(params.size());
    std::vector<std::string> errors(params.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < params.size(); ++i) {
      threads.emplace_back([&, i] {
        try {
          together[i] = pipeline->generate(params[i]).images;
        } catch (const std::exception& e) {
          errors[i] = e.what();
        }
      });
    }
    for (auto& t : threads) t.join();
    for (size_t i = 0; i < params.size(); ++i) {
      ASSERT_TRUE(together[i].defined()) << "run " << i << ": " << errors[i].substr(0, 300);
      EXPECT_LT((together[i] - alone[i]).abs().max().item<double>(), 1e-5) << "run " << i;
    }
  }
}

TEST(PipelineLoad, MissingFolderNamesThePath) {
  try {
    StableDiffusionPipeline::load("/nonexistent/model");
    FAIL() << "expected an error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/model"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace ldcp::pipelines
