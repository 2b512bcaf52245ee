// The U-Net against diffusers' UNet2DConditionModel: the references come from
// tests/parity/ref_unet.py (fixture parity_unet) on the model folders of make_models.py.

#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/io/json_file.h"
#include "model/io/safetensors.h"
#include "model/io/weights.h"
#include "model/models/embeddings.h"
#include "model/models/layers.h"
#include "model/models/unets/unet_2d_condition.h"
#include "model/runtime/memory_meter.h"
#include "tests/common/test_util.h"

namespace {

namespace fs = std::filesystem;
using ldcp::io::ConfigError;
using ldcp::models::UNet2DConditionConfig;
using ldcp::models::UNet2DConditionModel;
using ldcp::testing::parity_dir;
using ldcp::testing::parity_model;

fs::path ref_dir() { return parity_dir() / "ref" / "unet"; }

// The unet folder of a tiny model (make_models.py) or of a variant (ref_unet.py).
fs::path unet_dir(const std::string& model) {
  if (model.rfind("variant-", 0) == 0) return ref_dir() / "models" / model / "unet";
  return parity_model(model) / "unet";
}

nlohmann::json unet_config_json(const std::string& model) {
  return ldcp::io::read_json_file(unet_dir(model) / "config.json");
}

std::set<std::string> module_keys(torch::nn::Module& module) {
  std::set<std::string> keys;
  for (const auto& item : module.named_parameters()) keys.insert(item.key());
  for (const auto& item : module.named_buffers()) keys.insert(item.key());
  return keys;
}

std::string describe_difference(const std::set<std::string>& actual,
                                const std::set<std::string>& expected) {
  std::string out;
  for (const auto& key : expected)
    if (!actual.count(key)) out += " missing:" + key;
  for (const auto& key : actual)
    if (!expected.count(key)) out += " unexpected:" + key;
  return out;
}

class UNetModelTest : public ::testing::TestWithParam<std::string> {};

// named_parameters() equals the checkpoint's keys exactly, with equal shapes.
TEST_P(UNetModelTest, ParameterNamesAndShapesEqualCheckpoint) {
  const auto model = GetParam();
  UNet2DConditionModel unet(UNet2DConditionConfig::from_json(unet_config_json(model)));
  ldcp::io::SafetensorsFile weights(ldcp::io::find_weight_file(unet_dir(model)));
  const auto names = weights.names();
  const std::set<std::string> expected(names.begin(), names.end());
  const auto actual = module_keys(*unet);
  EXPECT_EQ(actual, expected) << describe_difference(actual, expected);
  for (const auto& item : unet->named_parameters()) {
    if (!weights.contains(item.key())) continue;
    EXPECT_EQ(item.value().sizes().vec(), weights.info(item.key()).shape) << item.key();
  }
}

// Every reference case: the output, the timestep projection and the time embedding.
TEST_P(UNetModelTest, MatchesDiffusers) {
  const auto model = GetParam();
  torch::NoGradGuard no_grad;
  auto unet = ldcp::models::load_unet(unet_dir(model));
  const auto ref = ldcp::io::load_safetensors(ref_dir() / (model + ".safetensors"));
  const auto cases = ldcp::io::read_json_file(ref_dir() / "cases.json").at(model);
  ASSERT_GE(cases.size(), 3u);
  for (const auto& c : cases) {
    const auto name = c.at("name").get<std::string>();
    SCOPED_TRACE("case " + name);
    auto timestep = ref.at(name + ".timestep");
    // ref_unet.py saves integer timesteps as int64 and float ones as float32.
    ASSERT_EQ(timestep.is_floating_point(), c.at("timestep_float").get<bool>());
    if (c.at("timestep_0d").get<bool>()) timestep = timestep.reshape({});
    const auto& sample = ref.at(name + ".sample");
    const auto& context = ref.at(name + ".encoder_hidden_states");

    auto t_emb = unet->get_time_embed(sample, timestep);
    EXPECT_ALLCLOSE(t_emb, ref.at(name + ".t_emb"));
    EXPECT_ALLCLOSE(unet->time_embedding(t_emb), ref.at(name + ".emb"));
    EXPECT_ALLCLOSE(unet->forward(sample, timestep, context), ref.at(name + ".out"));
  }
}

// The first down block and the mid block alone, fed like forward feeds them: a mismatch in
// the full output is localised by these.
TEST_P(UNetModelTest, DownAndMidBlocksMatchDiffusers) {
  const auto model = GetParam();
  torch::NoGradGuard no_grad;
  auto unet = ldcp::models::load_unet(unet_dir(model));
  const auto ref = ldcp::io::load_safetensors(ref_dir() / (model + ".safetensors"));
  const std::string name = "b2_t999";
  const auto& context = ref.at(name + ".encoder_hidden_states");
  auto sample = ref.at(name + ".sample");
  if (unet->config().center_input_sample) sample = 2 * sample - 1.0;
  const auto emb = unet->time_embedding(unet->get_time_embed(sample, ref.at(name + ".timestep")));
  auto hidden = unet->conv_in(sample);
  for (size_t i = 0; i < unet->down_blocks->size(); ++i) {
    const auto& block = unet->down_blocks->ptr(i);
    ldcp::models::DownBlockOutput out;
    if (auto* cross = block->as<ldcp::models::CrossAttnDownBlock2DImpl>()) {
      out = cross->forward(hidden, emb, context);
    } else {
      out = block->as<ldcp::models::DownBlock2DImpl>()->forward(hidden, emb);
    }
    hidden = out.hidden_states;
    if (i == 0) {
      EXPECT_ALLCLOSE(hidden, ref.at(name + ".down_blocks.0"));
    }
  }
  if (unet->mid_block) {
    EXPECT_ALLCLOSE(unet->mid_block(hidden, emb, context), ref.at(name + ".mid_block"));
  } else {
    EXPECT_FALSE(ref.count(name + ".mid_block"));
  }
}

INSTANTIATE_TEST_SUITE_P(Models, UNetModelTest,
                         ::testing::Values("tiny-a", "tiny-b", "variant-c", "variant-d"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (auto& ch : name)
                             if (ch == '-') ch = '_';
                           return name;
                         });

// The parts of down_blocks.0.attentions.0 on inputs scaled x3, at a tolerance 10x tighter than
// the U-Net's: catches approximations (e.g. a tanh GELU) that the whole model's output hides.
class UNetPartsTest : public ::testing::TestWithParam<std::string> {};

TEST_P(UNetPartsTest, TransformerPartsMatchDiffusers) {
  const auto model = GetParam();
  torch::NoGradGuard no_grad;
  auto unet = ldcp::models::load_unet(unet_dir(model));
  const auto ref = ldcp::io::load_safetensors(ref_dir() / (model + ".safetensors"));
  auto* down = unet->down_blocks->ptr(0)->as<ldcp::models::CrossAttnDownBlock2DImpl>();
  ASSERT_NE(down, nullptr);
  auto transformer = down->attention_modules.at(0);
  auto block = transformer->block_modules.at(0);
  const auto& x = ref.at("block.x");
  const auto& context = ref.at("block.context");
  constexpr double tol = 1e-5;
  EXPECT_ALLCLOSE(block->attn1(x), ref.at("block.attn1"), tol);
  EXPECT_ALLCLOSE(block->attn2(x, context), ref.at("block.attn2"), tol);
  EXPECT_ALLCLOSE(block->ff(x), ref.at("block.ff"), tol);
  EXPECT_ALLCLOSE(block(x, context), ref.at("block.out"), tol);
  EXPECT_ALLCLOSE(transformer(ref.at("transformer.x"), context), ref.at("transformer.out"), tol);
}

INSTANTIATE_TEST_SUITE_P(Models, UNetPartsTest, ::testing::Values("tiny-a", "tiny-b"),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (auto& ch : name)
                             if (ch == '-') ch = '_';
                           return name;
                         });

// The real SD1.5 U-Net configuration builds exactly diffusers' module tree: the same parameter
// names and shapes (about 860 M parameters: 3.4 GB for the few seconds this test runs).
TEST(UNetArchitecture, SD15MatchesDiffusersNamesAndShapes) {
  const auto dir = ref_dir() / "sd15-architecture";
  const auto config =
      UNet2DConditionConfig::from_json(ldcp::io::read_json_file(dir / "config.json"));
  const auto shapes = ldcp::io::read_json_file(dir / "shapes.json");
  UNet2DConditionModel unet(config);
  std::set<std::string> expected;
  for (const auto& [key, value] : shapes.items()) expected.insert(key);
  const auto actual = module_keys(*unet);
  EXPECT_EQ(actual, expected) << describe_difference(actual, expected);
  for (const auto& item : unet->named_parameters()) {
    if (!shapes.contains(item.key())) continue;
    EXPECT_EQ(item.value().sizes().vec(), shapes.at(item.key()).get<std::vector<int64_t>>())
        << item.key();
  }
}

TEST(TimestepEmbedding, MatchesDiffusersForOtherSettings) {
  const auto ref = ldcp::io::load_safetensors(ref_dir() / "timestep_embedding.safetensors");
  const auto& t = ref.at("timesteps");
  using ldcp::models::get_timestep_embedding;
  EXPECT_ALLCLOSE(get_timestep_embedding(t, 7, false, 1), ref.at("dim7_noflip_shift1"));
  EXPECT_ALLCLOSE(get_timestep_embedding(t, 32, true, 0), ref.at("dim32_flip_shift0"));
  EXPECT_ALLCLOSE(get_timestep_embedding(t, 10, true, 1, 2.0, 100),
                  ref.at("dim10_flip_shift1_scale2"));
  // Integer timesteps give the same embedding as their float values.
  EXPECT_TRUE(torch::equal(get_timestep_embedding(torch::tensor({0, 1, 999}), 32, true, 0),
                           get_timestep_embedding(torch::tensor({0.f, 1.f, 999.f}), 32, true, 0)));
}

// ---------------------------------------------------------------------------------------------
// Configuration handling

TEST(UNetConfig, ReadsTinyConfigs) {
  const auto a = UNet2DConditionConfig::from_json(unet_config_json("tiny-a"));
  EXPECT_EQ(a.block_out_channels, (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(a.num_attention_heads(0), 8);  // attention_head_dim 8 is the head count
  EXPECT_EQ(a.layers(1), 1);
  EXPECT_EQ(a.norm_num_groups, 8);
  EXPECT_FALSE(a.use_linear_projection);
  ASSERT_TRUE(a.sample_size.has_value());
  EXPECT_EQ(a.sample_size->first, 8);

  const auto b = UNet2DConditionConfig::from_json(unet_config_json("tiny-b"));
  EXPECT_EQ(b.num_attention_heads(0), 2);
  EXPECT_EQ(b.num_attention_heads(1), 3);
  EXPECT_EQ(b.num_attention_heads(2), 4);
  EXPECT_EQ(b.cross_attention_dim_of(2), 48);
  EXPECT_TRUE(b.use_linear_projection);
  EXPECT_EQ(b.time_embed_dim(), 128);

  UNet2DConditionModel unet_a(a), unet_b(b);
  // tiny-a: 8 heads of 4 channels in the 32-channel block; 1x1-conv projections.
  auto* down_a = unet_a->down_blocks->ptr(0)->as<ldcp::models::CrossAttnDownBlock2DImpl>();
  ASSERT_NE(down_a, nullptr);
  const auto& transformer_a = down_a->attention_modules.at(0);
  EXPECT_TRUE(transformer_a->proj_in_conv);
  EXPECT_EQ(transformer_a->block_modules.at(0)->attn1->config().heads, 8);
  EXPECT_EQ(transformer_a->block_modules.at(0)->attn1->config().dim_head, 4);
  // tiny-b: Linear projections; the up path mirrors the down path's head counts.
  auto* up_b = unet_b->up_blocks->ptr(1)->as<ldcp::models::CrossAttnUpBlock2DImpl>();
  ASSERT_NE(up_b, nullptr);
  EXPECT_TRUE(up_b->attention_modules.at(0)->proj_in_linear);
  EXPECT_EQ(up_b->attention_modules.at(0)->block_modules.at(0)->attn2->config().heads, 3);
  EXPECT_EQ(up_b->resnet_modules.size(), 3u);  // layers_per_block + 1
  EXPECT_EQ(unet_b->num_upsamplers(), 2);
}

// Each edit makes the tiny-a config unsupported or invalid; the error names the key.
TEST(UNetConfig, RejectsUnsupportedConfigsNamingTheKey) {
  const std::vector<std::pair<std::string, nlohmann::json>> edits = {
      {"addition_embed_type", "text"},
      {"class_embed_type", "timestep"},
      {"num_class_embeds", 10},
      {"encoder_hid_dim", 32},
      {"time_cond_proj_dim", 16},
      {"num_attention_heads", 8},
      {"time_embedding_type", "fourier"},
      {"resnet_time_scale_shift", "scale_shift"},
      {"attention_type", "gated"},
      {"dual_cross_attention", true},
      {"act_fn", "gelu"},
      {"mid_block_type", "UNetMidBlock2DSimpleCrossAttn"},
      {"down_block_types", nlohmann::json::array({"AttnDownBlock2D", "DownBlock2D"})},
      {"up_block_types", nlohmann::json::array({"UpBlock2D", "AttnUpBlock2D"})},
      {"layers_per_block", nlohmann::json::array({1, 1, 1})},
      {"attention_head_dim", 5},  // 32 channels do not split into 5 heads
      {"transformer_layers_per_block", nlohmann::json::parse("[[1, 1], [1]]")},
      {"block_out_channels", nlohmann::json::array({32, 64, 64})},
      {"in_channels", "four"},
  };
  for (const auto& [key, value] : edits) {
    auto config = unet_config_json("tiny-a");
    config[key] = value;
    try {
      UNet2DConditionConfig::from_json(config);
      ADD_FAILURE() << key << " = " << value.dump() << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("\"" + key + "\""), std::string::npos)
          << key << ": " << e.what();
    }
  }
  auto config = unet_config_json("tiny-a");
  config["_class_name"] = "UNet2DModel";
  EXPECT_THROW(UNet2DConditionConfig::from_json(config), ConfigError);
}

TEST(UNetConfig, DefaultsAreDiffusers) {
  const auto c = UNet2DConditionConfig::from_json(nlohmann::json::object());
  EXPECT_EQ(c.block_out_channels, (std::vector<int64_t>{320, 640, 1280, 1280}));
  EXPECT_EQ(c.layers(3), 2);
  EXPECT_EQ(c.cross_attention_dim_of(0), 1280);
  EXPECT_EQ(c.num_attention_heads(2), 8);
  EXPECT_EQ(c.norm_num_groups, 32);
  EXPECT_DOUBLE_EQ(c.norm_eps, 1e-5);
  EXPECT_TRUE(c.flip_sin_to_cos);
  EXPECT_EQ(c.mid_block_type, "UNetMidBlock2DCrossAttn");
  EXPECT_EQ(c.time_embed_dim(), 1280);
  EXPECT_FALSE(c.sample_size.has_value());
}

TEST(LoadUNet, ErrorsNameTheFile) {
  const auto dir = ldcp::testing::temp_dir("unet-load");
  auto config = unet_config_json("tiny-a");
  config["addition_embed_type"] = "text";
  std::ofstream(dir / "config.json") << config.dump();
  try {
    ldcp::models::load_unet(dir);
    ADD_FAILURE() << "an unsupported config was loaded";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "config.json").string()), std::string::npos)
        << e.what();
  }

  // A config that disagrees with the weights: the loader's strict check reports it.
  const auto dir2 = ldcp::testing::temp_dir("unet-load-mismatch");
  fs::copy_file(ldcp::io::find_weight_file(unet_dir("tiny-a")),
                dir2 / "diffusion_pytorch_model.safetensors");
  config = unet_config_json("tiny-a");
  config["layers_per_block"] = 2;
  std::ofstream(dir2 / "config.json") << config.dump();
  EXPECT_THROW(ldcp::models::load_unet(dir2), ldcp::io::WeightLoadError);
}

// ---------------------------------------------------------------------------------------------
// Inputs

TEST(UNetForward, RejectsMalformedInputs) {
  torch::NoGradGuard no_grad;
  UNet2DConditionModel unet(UNet2DConditionConfig::from_json(unet_config_json("tiny-a")));
  const auto sample = torch::randn({2, 4, 8, 8});
  const auto context = torch::randn({2, 77, 32});
  EXPECT_EQ(unet->forward(sample, torch::tensor(5), context).sizes(), sample.sizes());
  EXPECT_THROW(unet->forward(torch::randn({2, 3, 8, 8}), torch::tensor(5), context),
               std::invalid_argument);
  EXPECT_THROW(unet->forward(sample, torch::tensor({1, 2, 3}), context), std::invalid_argument);
  EXPECT_THROW(unet->forward(sample, torch::tensor(5), torch::randn({1, 77, 32})),
               std::invalid_argument);
}

// A reduced-precision U-Net runs in its dtype end to end (the float32 timestep projection is
// cast, as diffusers does). bfloat16: CPU kernels exist for all its operations.
TEST(UNetForward, RunsInTheSampleDtype) {
  torch::NoGradGuard no_grad;
  auto unet = ldcp::models::load_unet(unet_dir("tiny-a"));
  const auto ref = ldcp::io::load_safetensors(ref_dir() / "tiny-a.safetensors");
  const auto sample = ref.at("b2_t500.sample");
  const auto context = ref.at("b2_t500.encoder_hidden_states");
  const auto timestep = ref.at("b2_t500.timestep").reshape({});
  unet->to(torch::kBFloat16);
  const auto out =
      unet->forward(sample.to(torch::kBFloat16), timestep, context.to(torch::kBFloat16));
  EXPECT_EQ(out.scalar_type(), torch::kBFloat16);
  // bfloat16 keeps ~3 significant digits; the tiny model's output stays close to float32's.
  EXPECT_ALLCLOSE(out.to(torch::kFloat32), ref.at("b2_t500.out"), 0.1);
}

// ---------------------------------------------------------------------------------------------
// Layer factories: loaders build networks without libtorch's random initialisation

TEST(LayerFactories, UninitializedScopeGivesTheSameLayersWithoutDrawingWeights) {
  namespace m = ldcp::models;
  const auto conv_options = torch::nn::Conv2dOptions(6, 8, 3).padding(1).groups(2);
  const auto linear_options = torch::nn::LinearOptions(5, 7).bias(false);
  const auto embedding_options = torch::nn::EmbeddingOptions(11, 4);
  EXPECT_FALSE(m::UninitializedParameters::active());
  auto drawn_conv = m::conv2d(conv_options);
  EXPECT_GT(drawn_conv->weight.abs().sum().item<float>(), 0);  // libtorch's Kaiming init

  torch::nn::Conv2d conv{nullptr};
  torch::nn::Linear linear{nullptr};
  torch::nn::Embedding embedding{nullptr};
  {
    m::UninitializedParameters outer;
    {
      m::UninitializedParameters inner;
      conv = m::conv2d(conv_options);
    }
    EXPECT_TRUE(m::UninitializedParameters::active());  // nested scopes restore, not reset
    linear = m::linear(linear_options);
    embedding = m::embedding(embedding_options);
  }
  EXPECT_FALSE(m::UninitializedParameters::active());

  // Same shapes, options and parameter names as libtorch's own layers.
  EXPECT_EQ(conv->weight.sizes(), drawn_conv->weight.sizes());
  EXPECT_EQ(conv->bias.sizes(), drawn_conv->bias.sizes());
  EXPECT_EQ(conv->options.in_channels(), 6);
  EXPECT_EQ(conv->options.out_channels(), 8);
  EXPECT_EQ(conv->named_parameters().keys(), drawn_conv->named_parameters().keys());
  EXPECT_EQ(linear->weight.sizes(), (std::vector<int64_t>{7, 5}));
  EXPECT_FALSE(linear->bias.defined());
  EXPECT_EQ(linear->named_parameters().size(), 1u);
  EXPECT_EQ(embedding->weight.sizes(), (std::vector<int64_t>{11, 4}));
  EXPECT_EQ(embedding->options.num_embeddings(), 11);

  // Given weights, they compute what the functional ops compute.
  torch::NoGradGuard no_grad;
  conv->weight.copy_(drawn_conv->weight);
  conv->bias.copy_(drawn_conv->bias);
  const auto x = torch::randn({2, 6, 5, 5});
  EXPECT_TRUE(torch::allclose(conv(x), drawn_conv(x)));
  linear->weight.normal_();
  const auto y = torch::randn({3, 5});
  EXPECT_TRUE(torch::allclose(linear(y), torch::matmul(y, linear->weight.t())));
  embedding->weight.normal_();
  EXPECT_TRUE(torch::equal(embedding(torch::tensor({3, 10})),
                           embedding->weight.index_select(0, torch::tensor({3, 10}))));
}

TEST(LayerFactories, UninitializedScopeBuildsParametersInItsDtype) {
  namespace m = ldcp::models;
  const auto conv_options = torch::nn::Conv2dOptions(4, 8, 3);
  torch::nn::Conv2d bf16_conv{nullptr}, inherited{nullptr}, plain{nullptr};
  torch::nn::Linear half_linear{nullptr};
  {
    m::UninitializedParameters outer(torch::kBFloat16);
    bf16_conv = m::conv2d(conv_options);
    {
      m::UninitializedParameters inner;  // no dtype: the module's own (fp32)
      plain = m::conv2d(conv_options);
      EXPECT_FALSE(m::UninitializedParameters::dtype().has_value());
    }
    EXPECT_EQ(m::UninitializedParameters::dtype(), torch::kBFloat16);  // restored
    inherited = m::conv2d(conv_options);
    m::UninitializedParameters fp16(torch::kHalf);
    half_linear = m::linear(torch::nn::LinearOptions(3, 5));
  }
  EXPECT_FALSE(m::UninitializedParameters::dtype().has_value());
  EXPECT_EQ(bf16_conv->weight.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(bf16_conv->bias.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(inherited->weight.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(plain->weight.scalar_type(), torch::kFloat);
  EXPECT_EQ(half_linear->weight.scalar_type(), torch::kHalf);
  EXPECT_EQ(bf16_conv->weight.sizes(), plain->weight.sizes());
}

// A bf16 load converts each tensor as it is read: the result equals an fp32 load converted
// afterwards, and the tensor memory it ever holds is the bf16 weights plus one staging tensor,
// never the fp32 weights (issue 13: a bf16 run's max RSS was the fp32 model's).
TEST(LoadUNet, ConvertsWhileReadingWithoutHoldingTheFp32Weights) {
  const auto dir = unet_dir("tiny-a");
  auto reference = ldcp::models::load_unet(dir);
  int64_t fp32_bytes = 0, largest_fp32_tensor = 0, vector_fp32_bytes = 0;
  for (const auto& p : reference->parameters()) {
    fp32_bytes += p.numel() * 4;
    largest_fp32_tensor = std::max<int64_t>(largest_fp32_tensor, p.numel() * 4);
    if (p.dim() == 1) vector_fp32_bytes += p.numel() * 4;
  }
  reference->to(torch::kBFloat16);

  ldcp::runtime::MemoryMeter meter{c10::Device(c10::kCPU)};
  ldcp::runtime::release_free_cpu_memory();
  meter.reset_peak();
  const int64_t before = meter.stats().allocated_bytes;
  ldcp::io::LoadOptions options;
  options.dtype = torch::kBFloat16;
  auto unet = ldcp::models::load_unet(dir, options);
  const int64_t peak = meter.stats().peak_allocated_bytes - before;

  const auto expected = reference->named_parameters();
  for (const auto& item : unet->named_parameters()) {
    SCOPED_TRACE(item.key());
    EXPECT_EQ(item.value().scalar_type(), torch::kBFloat16);
    EXPECT_TRUE(torch::equal(item.value(), expected[item.key()]));
  }
  // The bound: bf16 weights + the staging buffer (at most the largest fp32 tensor) + the
  // norms' vectors, which libtorch's GroupNorm/LayerNorm build in fp32 before they are
  // converted (bounded here by every 1-D parameter, biases included) + a little.
  const int64_t bound = fp32_bytes / 2 + largest_fp32_tensor + vector_fp32_bytes + 16 * 1024;
  ASSERT_LT(bound, fp32_bytes) << "the model is too small for the bound to mean anything";
  EXPECT_LE(peak, bound) << "peak " << peak << " bytes while loading; fp32 weights " << fp32_bytes;
}

}  // namespace
