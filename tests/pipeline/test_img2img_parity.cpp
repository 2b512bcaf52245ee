// img2img and inpainting against diffusers' StableDiffusionImg2ImgPipeline and
// StableDiffusionInpaintPipeline (tests/parity/ref_img2img.py): two strengths and more, a
// 9-channel inpainting U-Net and 4-channel U-Nets (latent blending); the mask's grayscale and
// binarisation exactly; batching and pruning of img2img steps.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/io/safetensors.h"
#include "model/pipelines/image_conditioning.h"
#include "model/pipelines/image_io.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "tests/common/test_util.h"
#include "tests/pipeline/pipeline_parity.h"

namespace ldcp::testing {
namespace {

const std::filesystem::path& ref() {
  static const auto dir = parity_dir() / "ref" / "img2img";
  return dir;
}

pipelines::GenerationParams img2img_params() {
  pipelines::GenerationParams p;
  p.prompt = "a red house";
  p.width = p.height = 64;
  p.steps = 6;
  p.sampler = "euler";
  p.seed = 3;
  p.init_image = pipelines::read_png(ref() / "init.png");
  p.strength = 0.5;
  return p;
}

TEST(Img2ImgParity, CasesMatchDiffusers) { check_pipeline_cases("img2img"); }

TEST(Img2ImgParity, MaskGrayscaleAndBinarisationMatchDiffusers) {
  const auto expected = io::load_safetensors(ref() / "mask.safetensors").at("mask");
  const auto mask = pipelines::preprocess_mask(pipelines::read_png(ref() / "mask.png"));
  ASSERT_EQ(mask.sizes(), expected.sizes());
  EXPECT_TRUE(torch::equal(mask, expected))
      << (mask != expected).sum().item<int64_t>() << " pixels differ";
}

TEST(Img2Img, BatchedRequestsEqualEachAlone) {
  auto pipeline = pipelines::StableDiffusionPipeline::load(parity_model("tiny-a"));
  auto a = img2img_params();
  auto b = img2img_params();
  b.seed = 4;
  b.prompt = "a blue boat";
  b.mask_image = pipelines::read_png(ref() / "mask.png");
  EXPECT_FALSE(pipelines::batchable(a, b)) << "img2img and inpainting must not batch";
  auto text = a;
  text.init_image = at::Tensor();
  text.strength.reset();
  EXPECT_FALSE(pipelines::batchable(a, text)) << "img2img and text-to-image must not batch";
  auto c = a;
  c.strength = 0.9;
  EXPECT_FALSE(pipelines::batchable(a, c)) << "different first steps must not batch";
  b.mask_image = at::Tensor();
  ASSERT_TRUE(pipelines::batchable(a, b));
  const auto batch = pipeline->generate_batch({a, b});
  const auto alone_a = pipeline->generate(a);
  const auto alone_b = pipeline->generate(b);
  EXPECT_LE((batch[0].images - alone_a.images).abs().max().item<double>(), 1e-4);
  EXPECT_LE((batch[1].images - alone_b.images).abs().max().item<double>(), 1e-4);
  EXPECT_EQ(batch[0].timesteps.size(), 3u);  // int(6 * 0.5)
}

TEST(Img2Img, PruningAppliesToTheStepsThatRun) {
  auto pipeline = pipelines::StableDiffusionPipeline::load(parity_model("tiny-a"));
  auto p = img2img_params();
  const auto full = pipeline->generate(p);
  // Step k of the full 6-step schedule keeps its level: the run takes steps 3, 4, 5.
  p.pruning = pruning::PruningSchedule::steps({0.0, 0.0, 0.0, 0.5, 0.0, 0.3});
  const auto pruned = pipeline->generate(p);
  EXPECT_EQ(pruned.step_levels, (std::vector<double>{0.5, 0.0, 0.3}));
  EXPECT_GT(pruned.pruned_flops_fraction, 0.0);
  EXPECT_GT((pruned.images - full.images).abs().max().item<double>(), 1e-4);
}

TEST(Img2Img, BadImageFieldsNameTheField) {
  auto pipeline = pipelines::StableDiffusionPipeline::load(parity_model("tiny-a"));
  auto expect_error = [&](const pipelines::GenerationParams& p, const std::string& field) {
    try {
      pipeline->validate(p);
      ADD_FAILURE() << "no error for " << field;
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()).rfind(field + ":", 0), 0u) << e.what();
    }
  };
  auto p = img2img_params();
  p.strength = 0.0;
  expect_error(p, "strength");
  p.strength = 1.5;
  expect_error(p, "strength");
  p.strength = 0.1;  // int(6 * 0.1) = 0 steps
  expect_error(p, "strength");
  p = img2img_params();
  p.width = 72;
  expect_error(p, "init_image");
  p = img2img_params();
  p.mask_image = torch::zeros({32, 32, 3}, torch::kUInt8);
  expect_error(p, "mask_image");
  p = img2img_params();
  p.init_image = at::Tensor();
  p.strength.reset();
  p.mask_image = pipelines::read_png(ref() / "mask.png");
  expect_error(p, "mask_image");
  p.mask_image = at::Tensor();
  p.strength = 0.5;
  expect_error(p, "strength");
  // An inpainting model needs both images.
  auto inpaint = pipelines::StableDiffusionPipeline::load(parity_model("tiny-inpaint"));
  p = img2img_params();
  try {
    inpaint->validate(p);
    ADD_FAILURE() << "a 9-channel model ran without a mask";
  } catch (const std::invalid_argument& e) {
    EXPECT_EQ(std::string(e.what()).rfind("mask_image:", 0), 0u) << e.what();
  }
}

}  // namespace
}  // namespace ldcp::testing
