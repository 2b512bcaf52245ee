// Single-file checkpoints in the original layout (model/io/original_checkpoint*.h,
// model/pipelines/model_components.h), on the files tests/parity/ref_single_file.py writes from
// the tiny parity models: every weight lands where the diffusers folder has it (fp32, fp16, both
// CLIP layouts, a full file with an EMA copy), the run's dtype is reached while reading, the
// errors (missing and unexpected keys together, pickle files, hostile headers and names), and
// SD1.5's full key set against the built-in SD1.5 modules.

#include <cstring>
#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "model/clip/configuration_clip.h"
#include "model/io/json_file.h"
#include "model/io/original_checkpoint_loader.h"
#include "model/io/safetensors.h"
#include "model/models/layers.h"
#include "model/pipelines/demo_model.h"
#include "model/pipelines/model_components.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "tests/common/test_util.h"

namespace ldcp {
namespace {

namespace fs = std::filesystem;
using pipelines::load_model_components;
using pipelines::ModelComponents;
using testing::parity_model;
using testing::temp_dir;

fs::path ref_file(const std::string& name) {
  return testing::parity_dir() / "ref" / "single_file" / name;
}

io::LoadOptions in_dtype(c10::ScalarType dtype) {
  io::LoadOptions options;
  options.dtype = dtype;
  return options;
}

std::map<std::string, at::Tensor> tensors_of(torch::nn::Module& module) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : module.named_parameters()) out.emplace(item.key(), item.value());
  for (const auto& item : module.named_buffers()) out.emplace(item.key(), item.value());
  return out;
}

// Every tensor of `actual` equals `expected`'s after `round` (e.g. to fp16), exactly.
void expect_same_weights(torch::nn::Module& actual, torch::nn::Module& expected,
                         c10::ScalarType dtype, std::optional<c10::ScalarType> round = {}) {
  const auto want = tensors_of(expected);
  const auto got = tensors_of(actual);
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, tensor] : want) {
    SCOPED_TRACE(name);
    ASSERT_TRUE(got.count(name));
    const auto& value = got.at(name);
    if (value.is_floating_point()) {
      EXPECT_EQ(value.scalar_type(), dtype);
    }
    auto reference = round ? tensor.to(*round) : tensor;
    EXPECT_TRUE(torch::equal(value, reference.to(value.scalar_type())));
  }
}

void expect_same_model(ModelComponents& actual, ModelComponents& expected, c10::ScalarType dtype,
                       std::optional<c10::ScalarType> round = {}) {
  {
    SCOPED_TRACE("unet");
    expect_same_weights(*actual.unet, *expected.unet, dtype, round);
  }
  {
    SCOPED_TRACE("vae");
    expect_same_weights(*actual.vae, *expected.vae, dtype, round);
  }
  {
    SCOPED_TRACE("text_encoder");
    expect_same_weights(*actual.text_encoder, *expected.text_encoder, dtype, round);
  }
}

std::string load_error(const fs::path& file, const fs::path& config = parity_model("tiny-a"),
                       c10::ScalarType dtype = c10::kFloat) {
  try {
    load_model_components(file, in_dtype(dtype), false, config);
  } catch (const std::exception& e) {
    return e.what();
  }
  ADD_FAILURE() << file << " loaded";
  return {};
}

bool has(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

TEST(OriginalCheckpointLoad, FullFileGivesTheFolderWeights) {
  auto folder = load_model_components(parity_model("tiny-a"), {}, false);
  auto file =
      load_model_components(ref_file("tiny-a-full.safetensors"), {}, true, parity_model("tiny-a"));
  // The EMA copy (perturbed) is not used: the non-EMA model.diffusion_model.* weights are.
  expect_same_model(file, folder, c10::kFloat);
  EXPECT_EQ(file.scheduler_config, folder.scheduler_config);
  EXPECT_EQ(file.tokenizer->encode("a photo of a cat"),
            folder.tokenizer->encode("a photo of a cat"));
}

TEST(OriginalCheckpointLoad, Fp16FileIsConvertedToTheRunsDtypeWhileReading) {
  auto folder = load_model_components(parity_model("tiny-b"), {}, false);
  const auto file = ref_file("tiny-b-fp16.safetensors");
  for (const auto dtype : {c10::kFloat, c10::kBFloat16, c10::kHalf}) {
    SCOPED_TRACE(c10::toString(dtype));
    auto loaded = load_model_components(file, in_dtype(dtype), false, parity_model("tiny-b"));
    expect_same_model(loaded, folder, dtype, c10::kHalf);
  }
}

TEST(OriginalCheckpointLoad, TextEncoderKeysWithoutTextModelLevel) {
  auto folder = load_model_components(parity_model("tiny-a"), {}, false);
  auto file = load_model_components(ref_file("tiny-a-old-clip.safetensors"), {}, false,
                                    parity_model("tiny-a"));
  expect_same_model(file, folder, c10::kFloat);
}

TEST(OriginalCheckpointLoad, MissingUnexpectedAndMismatchedKeysInOneError) {
  auto tensors = io::load_safetensors(ref_file("tiny-a-old-clip.safetensors"));
  ASSERT_EQ(tensors.erase("model.diffusion_model.out.2.weight"), 1u);
  ASSERT_EQ(tensors.erase("first_stage_model.decoder.mid.attn_1.q.bias"), 1u);
  tensors["model.diffusion_model.bogus.weight"] = torch::zeros({2});
  tensors["cond_stage_model.transformer.encoder.layers.9.mlp.fc1.weight"] = torch::zeros({2});
  tensors["model.diffusion_model.out.2.bias"] = torch::zeros({5});
  const auto file = temp_dir("original-keys") / "broken.safetensors";
  io::save_safetensors(file, tensors);

  const auto message = load_error(file);
  EXPECT_EQ(message.rfind(file.string() + ": ", 0), 0u) << message;
  EXPECT_TRUE(has(message,
                  "2 missing weights: unet conv_out.weight, vae "
                  "decoder.mid_block.attentions.0.to_q.bias"))
      << message;
  EXPECT_TRUE(has(message,
                  "2 unexpected keys: model.diffusion_model.bogus.weight, "
                  "cond_stage_model.transformer.encoder.layers.9.mlp.fc1.weight "
                  "(text_encoder encoder.layers.9.mlp.fc1.weight)"))
      << message;
  EXPECT_TRUE(has(message,
                  "1 shape mismatches: model.diffusion_model.out.2.bias [5] (unet "
                  "conv_out.bias [4])"))
      << message;
}

TEST(OriginalCheckpointLoad, PickleFilesAreRefusedBeforeReading) {
  const auto dir = temp_dir("original-pickle");
  std::ofstream(dir / "model.ckpt") << "PK\x03\x04 anything";
  std::ofstream(dir / "model.safetensors", std::ios::binary) << std::string("\x80\x02\x8a\x0a", 4);
  for (const auto& file : {dir / "model.ckpt", dir / "model.safetensors"}) {
    const auto message = load_error(file);
    EXPECT_EQ(message.rfind(file.string() + ": ", 0), 0u) << message;
    EXPECT_TRUE(has(message, "pickle")) << message;
    EXPECT_TRUE(has(message, "weights_only=True")) << message;
    // The pipeline (ldcp, ldcp-server) refuses it with the same message.
    try {
      pipelines::StableDiffusionPipeline::load(file);
      ADD_FAILURE() << "loaded";
    } catch (const io::OriginalCheckpointError& e) {
      EXPECT_EQ(std::string(e.what()), message);
    }
  }
}

TEST(OriginalCheckpointLoad, HostileHeaderAndNames) {
  const auto dir = temp_dir("original-hostile");
  // A header length beyond the file: refused before any allocation of that size.
  {
    std::string bytes(8, '\0');
    const uint64_t length = uint64_t{1} << 62;
    std::memcpy(bytes.data(), &length, 8);
    std::ofstream(dir / "length.safetensors", std::ios::binary) << bytes << "{}";
    const auto message = load_error(dir / "length.safetensors");
    EXPECT_EQ(message.rfind((dir / "length.safetensors").string() + ": ", 0), 0u) << message;
    EXPECT_TRUE(has(message, "header length")) << message;
  }
  // Many unknown keys, one long and with control bytes: the message stays short and escaped.
  io::TensorMap tensors;
  tensors[std::string("model.diffusion_model.\x01") + std::string(5000, 'x')] = torch::zeros({1});
  for (int i = 0; i < 1000; ++i) tensors["zz.junk." + std::to_string(i)] = torch::zeros({1});
  io::save_safetensors(dir / "names.safetensors", tensors);
  const auto message = load_error(dir / "names.safetensors");
  EXPECT_TRUE(has(message, "1001 unexpected keys")) << message.substr(0, 500);
  EXPECT_TRUE(has(message, "and 981 more")) << message.substr(0, 500);
  EXPECT_TRUE(has(message, "model.diffusion_model.\\x01xxx")) << message.substr(0, 500);
  EXPECT_FALSE(has(message, std::string(200, 'x')));
  EXPECT_LT(message.size(), 12000u);
}

// SD1.5's keys (ref_single_file.py: the SD1.5 architecture written in the original layout and
// checked against diffusers' converters) map onto the built-in SD1.5 modules, shapes included.
TEST(OriginalCheckpointLoad, Sd15KeysMapOntoTheBuiltInModules) {
  const auto keys = io::read_json_file(ref_file("sd15_keys.json"));
  std::vector<std::string> names;
  for (const auto& item : keys.items()) names.push_back(item.key());
  names.insert(names.end(), {"model_ema.decay", "model_ema.num_updates", "alphas_cumprod", "betas",
                             "posterior_log_variance_clipped"});
  const auto mapped = io::map_original_keys(names, io::OriginalLayout{2, 4}, "sd15");
  EXPECT_TRUE(mapped.unknown.empty()) << mapped.unknown.front();
  EXPECT_FALSE(mapped.has_ema_copy);

  const auto configs = pipelines::sd15_model_configs();
  auto unet = models::make_uninitialized<models::UNet2DConditionModel>(
      c10::kBFloat16, models::UNet2DConditionConfig::from_json(configs.unet));
  auto vae = models::make_uninitialized<models::AutoencoderKL>(
      c10::kBFloat16, models::AutoencoderKLConfig::from_json(configs.vae));
  auto text = models::make_uninitialized<clip::ClipTextModel>(
      c10::kBFloat16, clip::ClipTextConfig::from_json(configs.text_encoder));
  std::map<io::OriginalPart, io::WeightSources> sources;
  for (const auto& [key, target] : mapped.tensors) {
    auto shape = keys.at(key).get<std::vector<int64_t>>();
    if (target.conv_to_linear) {
      ASSERT_EQ(shape.size(), 4u) << key;
      shape.resize(2);
    }
    sources[target.part].emplace(target.name, io::WeightSource{key, shape, {}});
  }
  const std::pair<io::OriginalPart, torch::nn::Module*> parts[] = {
      {io::OriginalPart::kUNet, unet.get()},
      {io::OriginalPart::kVae, vae.get()},
      {io::OriginalPart::kTextEncoder, text->text_model.get()}};
  for (const auto& [part, module] : parts) {
    SCOPED_TRACE(io::original_part_name(part));
    const auto mismatch = io::check_weight_sources(*module, sources[part]);
    EXPECT_TRUE(mismatch.missing.empty()) << mismatch.missing.front();
    EXPECT_TRUE(mismatch.unexpected.empty()) << mismatch.unexpected.front();
    EXPECT_TRUE(mismatch.mismatched.empty()) << mismatch.mismatched.front().name;
  }
}

// Without a config folder the file is read as SD1.5: a tiny model's file is refused, naming the
// architecture, with the lists cut short.
TEST(OriginalCheckpointLoad, BuiltInSd15ConfigsRefuseATinyModel) {
  const auto message = load_error(ref_file("tiny-a-full.safetensors"), {}, c10::kBFloat16);
  EXPECT_TRUE(has(message, "Stable Diffusion 1.5 (the built-in configs)")) << message;
  EXPECT_TRUE(has(message, "missing weights")) << message;
  EXPECT_TRUE(has(message, "more")) << message;
}

}  // namespace
}  // namespace ldcp
