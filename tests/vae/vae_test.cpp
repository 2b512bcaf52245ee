// The VAE against diffusers' AutoencoderKL: references written by tests/parity/ref_vae.py.

#include <algorithm>
#include <fstream>
#include <set>
#include <string>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "model/io/json_file.h"
#include "model/io/safetensors.h"
#include "model/io/weights.h"
#include "model/models/autoencoders/autoencoder_kl.h"
#include "tests/common/test_util.h"

namespace {

using ldcp::io::TensorMap;
using ldcp::models::AutoencoderKLConfig;
using ldcp::models::load_vae;
using ldcp::testing::parity_dir;
using ldcp::testing::parity_model;

std::filesystem::path vae_ref_dir() { return parity_dir() / "ref" / "vae"; }

TensorMap load_ref(const std::string& model) {
  return ldcp::io::load_safetensors(vae_ref_dir() / (model + ".safetensors"));
}

const at::Tensor& ref(const TensorMap& refs, const std::string& key) {
  auto it = refs.find(key);
  if (it == refs.end()) throw std::runtime_error("reference tensor " + key + " is missing");
  return it->second;
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream(path) << text;
}

class VaeParity : public ::testing::TestWithParam<std::string> {
 protected:
  torch::NoGradGuard no_grad_;
};

TEST_P(VaeParity, ConfigFromJson) {
  const auto json = ldcp::io::read_json_file(parity_model(GetParam()) / "vae" / "config.json");
  const auto config = AutoencoderKLConfig::from_json(json);
  EXPECT_EQ(config.block_out_channels, json.at("block_out_channels").get<std::vector<int64_t>>());
  EXPECT_EQ(config.layers_per_block, json.at("layers_per_block").get<int64_t>());
  EXPECT_EQ(config.norm_num_groups, json.at("norm_num_groups").get<int64_t>());
  EXPECT_EQ(config.latent_channels, 4);
  EXPECT_DOUBLE_EQ(config.scaling_factor, 0.18215);
  EXPECT_FALSE(config.shift_factor.has_value());
  EXPECT_TRUE(config.force_upcast);
  EXPECT_EQ(config.spatial_scale(), 8);
}

// The module tree mirrors diffusers': named parameters equal the checkpoint's keys and shapes.
TEST_P(VaeParity, ParameterNamesEqualCheckpointKeys) {
  const auto dir = parity_model(GetParam()) / "vae";
  ldcp::models::AutoencoderKL vae(
      AutoencoderKLConfig::from_json(ldcp::io::read_json_file(dir / "config.json")));
  const auto checkpoint = ldcp::io::load_safetensors(ldcp::io::find_weight_file(dir));
  std::set<std::string> module_keys, checkpoint_keys;
  for (const auto& item : vae->named_parameters()) {
    module_keys.insert(item.key());
    auto it = checkpoint.find(item.key());
    if (it != checkpoint.end()) {
      EXPECT_EQ(item.value().sizes(), it->second.sizes()) << item.key();
    }
  }
  for (const auto& [key, value] : checkpoint) checkpoint_keys.insert(key);
  EXPECT_EQ(module_keys, checkpoint_keys);
  EXPECT_TRUE(vae->named_buffers().is_empty());
}

TEST_P(VaeParity, Decode) {
  auto vae = load_vae(parity_model(GetParam()) / "vae");
  const auto refs = load_ref(GetParam());
  for (const std::string key : {"a", "b"}) {
    SCOPED_TRACE("latents_" + key);
    EXPECT_ALLCLOSE(vae->decode(ref(refs, "latents_" + key)), ref(refs, "decoded_" + key));
  }
}

TEST_P(VaeParity, Encode) {
  auto vae = load_vae(parity_model(GetParam()) / "vae");
  const auto refs = load_ref(GetParam());
  const auto posterior = vae->encode(ref(refs, "image"));
  EXPECT_ALLCLOSE(posterior.mean, ref(refs, "mean"));
  EXPECT_ALLCLOSE(posterior.logvar, ref(refs, "logvar"));
  EXPECT_ALLCLOSE(posterior.std, ref(refs, "std"));
  EXPECT_TRUE(posterior.mode().equal(posterior.mean));

  const auto posterior_b = vae->encode(ref(refs, "image_b"));
  EXPECT_ALLCLOSE(posterior_b.mean, ref(refs, "mean_b"));
  EXPECT_ALLCLOSE(posterior_b.logvar, ref(refs, "logvar_b"));
}

// sample() draws its noise as diffusers' randn_tensor with a seeded CPU torch.Generator.
TEST_P(VaeParity, SampleWithGenerator) {
  auto vae = load_vae(parity_model(GetParam()) / "vae");
  const auto refs = load_ref(GetParam());
  const auto posterior = vae->encode(ref(refs, "image"));
  const auto seed = static_cast<uint64_t>(ref(refs, "sample_seed").item<int64_t>());
  const auto sample = posterior.sample(at::make_generator<at::CPUGeneratorImpl>(seed));
  EXPECT_ALLCLOSE(sample, ref(refs, "sample"));
  // A different seed gives different noise, and no generator still samples around the mean.
  const auto other = posterior.sample(at::make_generator<at::CPUGeneratorImpl>(seed + 1));
  EXPECT_FALSE(other.allclose(sample));
  const auto unseeded = posterior.sample();
  EXPECT_EQ(unseeded.sizes(), posterior.mean.sizes());
  EXPECT_FALSE(unseeded.allclose(posterior.mean));
}

TEST_P(VaeParity, DecodeTiled) {
  auto vae = load_vae(parity_model(GetParam()) / "vae");
  const auto refs = load_ref(GetParam());
  const auto& latents = ref(refs, "tiled_latents");
  const auto tile = ref(refs, "tile_latent_size").item<int64_t>();
  const auto overlap = ref(refs, "tile_overlap").item<double>();
  const auto tiled = vae->decode_tiled(latents, tile, overlap);
  EXPECT_ALLCLOSE(tiled, ref(refs, "tiled_decoded"));
  // Tiling really happened: the plain decode differs.
  EXPECT_FALSE(tiled.allclose(vae->decode(latents), 1e-3, 1e-3));
}

INSTANTIATE_TEST_SUITE_P(TinyModels, VaeParity, ::testing::Values("tiny-a", "tiny-b"),
                         [](const auto& info) {
                           auto name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

// A VAE saved with the legacy attention names (query, key, value, proj_attn) loads and decodes
// as the current names do.
TEST(Vae, LegacyAttentionKeys) {
  torch::NoGradGuard no_grad;
  const auto legacy_dir = vae_ref_dir() / "legacy-vae";
  const auto legacy_keys = ldcp::io::load_safetensors(ldcp::io::find_weight_file(legacy_dir));
  ASSERT_TRUE(legacy_keys.count("encoder.mid_block.attentions.0.query.weight"));
  ASSERT_TRUE(legacy_keys.count("decoder.mid_block.attentions.0.proj_attn.bias"));
  auto vae = load_vae(legacy_dir);
  const auto refs = load_ref("tiny-a");
  EXPECT_ALLCLOSE(vae->decode(ref(refs, "latents_a")), ref(refs, "decoded_a"));
  EXPECT_ALLCLOSE(vae->encode(ref(refs, "image")).mean, ref(refs, "mean"));
}

// tiny-a-fp16 holds tiny-a's weights as .fp16.safetensors only: they load into the float32
// module and decode as tiny-a does, up to the weights' float16 rounding.
TEST(Vae, LoadsFloat16Weights) {
  torch::NoGradGuard no_grad;
  auto vae = load_vae(parity_model("tiny-a-fp16") / "vae");
  EXPECT_EQ(vae->decoder->conv_out->weight.scalar_type(), torch::kFloat32);
  const auto refs = load_ref("tiny-a");
  const auto decoded = vae->decode(ref(refs, "latents_a"));
  EXPECT_ALLCLOSE(decoded, ref(refs, "decoded_a"), 2e-2);
  EXPECT_FALSE(decoded.equal(ref(refs, "decoded_a")));
}

TEST(Vae, DecodeTiledMatchesDecodeWhenOneTileCoversAll) {
  torch::NoGradGuard no_grad;
  auto vae = load_vae(parity_model("tiny-a") / "vae");
  const auto refs = load_ref("tiny-a");
  const auto& latents = ref(refs, "latents_b");  // [2, 4, 9, 7]
  // Tiles of 12 latents start every int(12 * 0.75) = 9: a single tile, cropped to 9 * 8 pixels.
  EXPECT_ALLCLOSE(vae->decode_tiled(latents, 12, 0.25), ref(refs, "decoded_b"));
  EXPECT_THROW(vae->decode_tiled(latents, 0, 0.25), std::invalid_argument);
  EXPECT_THROW(vae->decode_tiled(latents, 4, 1.0), std::invalid_argument);
}

TEST(Vae, RejectsWrongInputShapes) {
  torch::NoGradGuard no_grad;
  auto vae = load_vae(parity_model("tiny-a") / "vae");
  EXPECT_THROW(vae->decode(torch::zeros({1, 3, 8, 8})), std::invalid_argument);
  EXPECT_THROW(vae->encode(torch::zeros({1, 4, 16, 16})), std::invalid_argument);
  EXPECT_THROW(vae->encode(torch::zeros({3, 16, 16})), std::invalid_argument);
}

TEST(VaeConfig, DefaultsAndOptionalFields) {
  auto config = AutoencoderKLConfig::from_json(nlohmann::json::object());
  EXPECT_EQ(config.block_out_channels, std::vector<int64_t>{64});
  EXPECT_EQ(config.layers_per_block, 1);
  EXPECT_EQ(config.norm_num_groups, 32);
  EXPECT_DOUBLE_EQ(config.scaling_factor, 0.18215);
  EXPECT_TRUE(config.use_quant_conv);
  EXPECT_TRUE(config.mid_block_add_attention);

  config = AutoencoderKLConfig::from_json(nlohmann::json::parse(
      R"({"sample_size": [96, 64], "shift_factor": 0.1159, "scaling_factor": 0.3611,
          "use_quant_conv": false, "use_post_quant_conv": false,
          "mid_block_add_attention": false, "latents_mean": [0.5, 0.25]})"));
  EXPECT_EQ(config.sample_size, 96);
  ASSERT_TRUE(config.shift_factor.has_value());
  EXPECT_DOUBLE_EQ(*config.shift_factor, 0.1159);
  EXPECT_DOUBLE_EQ(config.scaling_factor, 0.3611);
  ASSERT_TRUE(config.latents_mean.has_value());
  EXPECT_EQ(config.latents_mean->size(), 2u);
  EXPECT_FALSE(config.latents_std.has_value());

  // Without quant convs and mid-block attention those modules hold no weights.
  config.block_out_channels = {8, 8};
  config.norm_num_groups = 4;
  ldcp::models::AutoencoderKL vae(config);
  for (const auto& item : vae->named_parameters()) {
    EXPECT_EQ(item.key().find("quant_conv"), std::string::npos) << item.key();
    EXPECT_EQ(item.key().find("attentions"), std::string::npos) << item.key();
  }
  torch::NoGradGuard no_grad;
  EXPECT_EQ(vae->decode(torch::randn({1, 4, 3, 5})).sizes(), (std::vector<int64_t>{1, 3, 6, 10}));
  EXPECT_EQ(vae->encode(torch::randn({1, 3, 6, 10})).mean.sizes(),
            (std::vector<int64_t>{1, 4, 3, 5}));
}

TEST(VaeConfig, RejectsUnsupportedConfigs) {
  using ldcp::io::ConfigError;
  using nlohmann::json;
  EXPECT_THROW(AutoencoderKLConfig::from_json(json{{"block_out_channels", "64"}}), ConfigError);
  EXPECT_THROW(AutoencoderKLConfig::from_json(json{{"act_fn", "gelu"}}), ConfigError);
  EXPECT_THROW(AutoencoderKLConfig::from_json(json{{"_class_name", "AutoencoderTiny"}}),
               ConfigError);
  EXPECT_THROW(AutoencoderKLConfig::from_json(
                   json{{"down_block_types", json::array({"AttnDownEncoderBlock2D"})}}),
               ConfigError);
  EXPECT_THROW(AutoencoderKLConfig::from_json(
                   json{{"block_out_channels", json::array({32, 64})},
                        {"down_block_types", json::array({"DownEncoderBlock2D"})}}),
               ConfigError);
  EXPECT_THROW(AutoencoderKLConfig::from_json(
                   json{{"block_out_channels", json::array({48})}, {"norm_num_groups", 32}}),
               ConfigError);
}

TEST(Vae, LoadErrorsNameTheFile) {
  const auto dir = ldcp::testing::temp_dir("vae-errors");
  // No config.json.
  try {
    load_vae(dir);
    FAIL() << "expected ConfigError";
  } catch (const ldcp::io::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
  }
  // A config with an unsupported block: the message names the file and the key.
  write_text(dir / "config.json", R"({"up_block_types": ["AttnUpDecoderBlock2D"]})");
  try {
    load_vae(dir);
    FAIL() << "expected ConfigError";
  } catch (const ldcp::io::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "config.json").string()), std::string::npos)
        << e.what();
    EXPECT_NE(std::string(e.what()).find("up_block_types"), std::string::npos) << e.what();
  }
  // A valid config without weights.
  write_text(dir / "config.json", R"({"block_out_channels": [8], "norm_num_groups": 4})");
  EXPECT_THROW(load_vae(dir), ldcp::io::WeightLoadError);
}

}  // namespace
