// LoRA against diffusers' load_lora_weights + set_adapters (tests/parity/ref_lora.py: kohya and
// PEFT layouts, kohya U-Net names of the original LDM layout, U-Net and text encoder, linear and
// convolution LoRAs, two at once); a pruned level computes the LoRA branch on the kept channels
// only (sliced == masked with a LoRA); batching, the base weights untouched for other requests,
// the cache, hostile files.
#include <cstdio>
#include <fstream>
#include <set>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/io/safetensors.h"
#include "model/lora/lora_cache.h"
#include "model/lora/lora_weights.h"
#include "model/models/unets/unet_2d_condition.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "model/pruning/gated_layer.h"
#include "model/pruning/unet_pruner.h"
#include "tests/common/pruning_masks.h"
#include "tests/common/test_util.h"
#include "tests/pipeline/pipeline_parity.h"

namespace ldcp::testing {
namespace {

const std::filesystem::path& ref() {
  static const auto dir = parity_dir() / "ref" / "lora";
  return dir;
}

pipelines::GenerationParams params(const std::string& lora = "", double weight = 1.0) {
  pipelines::GenerationParams p;
  p.prompt = "a photo of an astronaut riding a horse on mars";
  p.width = p.height = 64;
  p.steps = 3;
  p.sampler = "euler";
  p.seed = 11;
  if (!lora.empty()) p.loras.push_back({(ref() / lora).string(), weight});
  return p;
}

TEST(LoraParity, CasesMatchDiffusers) { check_pipeline_cases("lora"); }

// The references must differ with and without each LoRA by far more than the tolerance, so
// that a LoRA path that adds nothing fails CasesMatchDiffusers.
TEST(LoraParity, EachLoraChangesTheReferenceImageMeasurably) {
  const auto images = io::load_safetensors(ref() / "images.safetensors");
  const auto run = pipeline_run_from_env();
  const auto tolerance = pipeline_tolerance(run.dtype, run.reference_dtype, run.device);
  for (const char* name : {"kohya-a", "peft-a", "both-a", "kohya-b", "kohya-ldm-b"}) {
    const auto diff = (images.at(name) - images.at(std::string(name) + "-none")).abs();
    std::printf("%s: mean |LoRA - none| %.4f, max %.4f\n", name, diff.mean().item<double>(),
                diff.max().item<double>());
    EXPECT_GT(diff.mean().item<double>(), 10 * tolerance.mean_diff) << name;
    EXPECT_GT(diff.max().item<double>(), 2 * tolerance.max_diff) << name;
  }
}

// The LDM-named file adapts the layers the diffusers-named one does (but up_blocks.0's upsampler,
// which ref_lora.py leaves out), through the U-Net's depth that LoraTargets passes on.
TEST(LoraParity, LdmNamedKohyaFileAdaptsTheSameLayers) {
  auto pipeline = pipelines::StableDiffusionPipeline::load(parity_model("tiny-b"));
  const auto& targets = pipeline->lora_targets();
  const auto diffusers_named = targets.read(ref() / "kohya-b.safetensors");
  const auto ldm_named = targets.read(ref() / "kohya-ldm-b.safetensors");
  std::set<std::string> a, b;
  for (const auto& l : diffusers_named->layers) a.insert(targets.layers()[l.target].path);
  for (const auto& l : ldm_named->layers) b.insert(targets.layers()[l.target].path);
  a.erase("up_blocks.0.upsamplers.0.conv");
  EXPECT_EQ(a, b);
  EXPECT_EQ(ldm_named->unet_layers, diffusers_named->unet_layers - 1);
}

// sliced == masked (tests/pruning) with a LoRA on every layer, the gated ones included: the
// LoRA's rows and columns follow the gates' permutation and a pruned level slices them.
TEST(Lora, SlicedForwardEqualsMaskedWithALora) {
  pipelines::PipelineOptions options;
  options.score_source = "random";  // a permutation far from the identity
  options.random_scores_seed = 7;
  auto pipeline = pipelines::StableDiffusionPipeline::load(parity_model("tiny-a"), options);
  auto& unet = pipeline->unet();
  auto& pruner = pipeline->pruner();
  const auto& targets = pipeline->lora_targets();
  const auto adapters = targets.adapters({{targets.read(ref() / "kohya-a.safetensors"), 1.0}});
  torch::NoGradGuard no_grad;
  torch::manual_seed(3);
  const auto& config = unet.config();
  const auto sample = torch::randn({2, config.in_channels, 16, 16});
  const auto timestep = torch::tensor(421, torch::kLong);
  const auto context = torch::randn({2, 77, config.cross_attention_dim_of(0)});
  const auto base = unet.forward(sample, timestep, context);
  lora::ScopedAdapters scope(adapters.get());
  const auto full = unet.forward(sample, timestep, context);
  EXPECT_GT((full - base).abs().max().item<double>(), 1e-2) << "the LoRA changed nothing";
  for (double level : {0.3, 0.6}) {
    SCOPED_TRACE("level " + std::to_string(level));
    const auto plan = pruner.plan(level);
    pruner.apply(plan);
    const auto sliced = unet.forward(sample, timestep, context);
    pruner.reset();
    ldcp::testing::set_plan_masks(pruner, plan);
    const auto masked = unet.forward(sample, timestep, context);
    ldcp::testing::clear_masks(pruner);
    const double diff = (sliced - masked).abs().max().item<double>();
    const double scale = std::max(1.0, masked.abs().max().item<double>());
    std::printf("level %.2f with a LoRA: max |sliced - masked| %.3e (scale %.2f)\n", level, diff,
                scale);
    EXPECT_LE(diff, 1e-5 * scale);
    EXPECT_GT((sliced - full).abs().max().item<double>(), 1e-3) << "pruning changed nothing";
  }
}

TEST(Lora, BatchesOnlyWithTheSameLorasAndLeavesOtherRequestsAlone) {
  auto pipeline = pipelines::StableDiffusionPipeline::load(parity_model("tiny-a"));
  const auto plain = params();
  const auto with = params("kohya-a.safetensors", 0.8);
  auto other_weight = params("kohya-a.safetensors", 0.9);
  EXPECT_FALSE(pipelines::batchable(plain, with));
  EXPECT_FALSE(pipelines::batchable(with, other_weight));
  auto with_b = with;
  with_b.seed = 12;
  with_b.prompt = "a red house";
  ASSERT_TRUE(pipelines::batchable(with, with_b));

  const auto before = pipeline->generate(plain);
  const auto lora_alone = pipeline->generate(with);
  const auto after = pipeline->generate(plain);
  EXPECT_TRUE(torch::equal(before.images, after.images)) << "a LoRA request changed the model";
  EXPECT_GT((lora_alone.images - before.images).abs().mean().item<double>(), 1e-2);
  const auto batch = pipeline->generate_batch({with, with_b});
  EXPECT_LE((batch[0].images - lora_alone.images).abs().max().item<double>(), 1e-4);
  EXPECT_LE((batch[1].images - pipeline->generate(with_b).images).abs().max().item<double>(), 1e-4);
  // The cache holds the file once.
  EXPECT_EQ(pipeline->lora_cache().entries(), 1u);
}

void expect_invalid(pipelines::StableDiffusionPipeline& pipeline,
                    const pipelines::GenerationParams& p, const std::vector<std::string>& parts) {
  try {
    pipeline.validate(p);
    FAIL() << "no error";
  } catch (const std::invalid_argument& e) {
    const std::string m = e.what();
    for (const auto& part : parts) {
      EXPECT_NE(m.find(part), std::string::npos) << "'" << part << "' not in: " << m;
    }
  }
}

TEST(Lora, BadRequestsAndHostileFilesNameTheFieldAndTheFile) {
  const auto dir = std::filesystem::temp_directory_path() / "ldcp-lora-test";
  std::filesystem::create_directories(dir);
  pipelines::PipelineOptions options;
  options.lora_dir = dir;
  auto pipeline = pipelines::StableDiffusionPipeline::load(parity_model("tiny-a"), options);
  auto p = params();
  p.loras = {{"missing", 1.0}};
  expect_invalid(*pipeline, p, {"loras[0].name", "no LoRA named 'missing'"});
  p.loras = {{"kohya-a", std::nan("")}};
  expect_invalid(*pipeline, p, {"loras[0].weight"});
  p.loras = {{"x", 9.0}};
  expect_invalid(*pipeline, p, {"loras[0].weight"});

  // Wrong shapes, an unknown layer and a non-finite factor: one error naming the file.
  io::TensorMap bad = {
      {"lora_unet_conv_in.lora_down.weight", torch::ones({4, 3, 3, 3})},
      {"lora_unet_conv_in.lora_up.weight", torch::ones({7, 4, 1, 1})},
      {"lora_unet_nowhere.lora_down.weight", torch::ones({4, 3})},
  };
  io::save_safetensors(dir / "bad.safetensors", bad);
  p.loras = {{"ok", 1.0}, {"bad", 1.0}};
  io::save_safetensors(dir / "ok.safetensors", io::load_safetensors(ref() / "kohya-a.safetensors"));
  expect_invalid(*pipeline, p,
                 {"loras[1].name", "bad.safetensors", "lora_unet_nowhere", "conv_in.lora_down"});
  io::TensorMap nan = {
      {"lora_unet_conv_in.lora_down.weight",
       torch::full({4, pipeline->unet().config().in_channels, 3, 3}, std::nan(""))},
      {"lora_unet_conv_in.lora_up.weight",
       torch::ones({pipeline->unet().conv_in->options.out_channels(), 4, 1, 1})},
  };
  io::save_safetensors(dir / "nan.safetensors", nan);
  p.loras = {{"nan", 1.0}};
  expect_invalid(*pipeline, p, {"loras[0].name", "non-finite"});
  { std::ofstream(dir / "junk.safetensors") << "not a safetensors file at all"; }
  p.loras = {{"junk", 1.0}};
  expect_invalid(*pipeline, p, {"loras[0].name", "junk.safetensors"});
  std::filesystem::remove_all(dir);
}

TEST(Lora, CacheKeepsTheMostRecentlyUsedUnderItsBound) {
  lora::LoraCache cache(ref(), 250);
  int reads = 0;
  auto reader = [&](int64_t bytes) {
    return [&reads, bytes](const std::filesystem::path& f) {
      ++reads;
      auto w = std::make_shared<lora::LoraWeights>();
      w->file = f;
      w->bytes = bytes;
      return std::shared_ptr<const lora::LoraWeights>(w);
    };
  };
  const auto a = cache.resolve("kohya-a"), b = cache.resolve("kohya-b"),
             c = cache.resolve("peft-a");
  cache.get(a, reader(100));
  cache.get(b, reader(100));
  cache.get(a, reader(100));  // a is now the most recent
  EXPECT_EQ(reads, 2);
  cache.get(c, reader(100));  // evicts b
  EXPECT_EQ(cache.entries(), 2u);
  EXPECT_LE(cache.bytes(), 250);
  cache.get(a, reader(100));
  EXPECT_EQ(reads, 3);
  cache.get(b, reader(100));
  EXPECT_EQ(reads, 4);
  cache.get(c, reader(1000));  // larger than the bound: used, not kept
  EXPECT_LE(cache.bytes(), 250);
  EXPECT_THROW(cache.resolve("no-such-lora"), std::invalid_argument);
}

}  // namespace
}  // namespace ldcp::testing
