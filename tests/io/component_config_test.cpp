// The component configs' readers on hostile values (no libtorch): each case here was found by
// tests/fuzz/fuzz_json_config as undefined behaviour (UBSan) or an escaped exception.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/clip/configuration_clip.h"
#include "model/io/json_file.h"
#include "model/models/autoencoders/autoencoder_kl_config.h"
#include "model/models/unets/unet_2d_condition_config.h"
#include "tests/common/error_text.h"

namespace ldcp::io {
namespace {

std::string config_error(const std::function<void()>& action) {
  return ldcp::testing::error_text<ConfigError>(action);
}

nlohmann::json parse(const std::string& text) { return parse_json_text(text, "config.json"); }

// crash-fe9bb817: "pad_token_id": NaN reached nlohmann's float-to-integer cast (undefined for
// NaN and out-of-range values; 3.5 silently became 3).
TEST(ConfigIntegers, FloatsThatAreNotIntegersAreRefused) {
  EXPECT_CONTAINS(
      config_error([] { clip::ClipTextConfig::from_json(parse(R"({"pad_token_id": NaN})")); }),
      "\"pad_token_id\"");
  for (const char* value : {"3.5", "1e300", "-1e300", "Infinity", "9.3e18"}) {
    const auto config = parse(std::string(R"({"n": )") + value + "}");
    EXPECT_CONTAINS(config_error([&] { get_or<int64_t>(config, "n", 0); }), "\"n\"");
  }
  EXPECT_EQ(get_or<int64_t>(parse(R"({"n": 77.0})"), "n", 0), 77);
  EXPECT_CONTAINS(config_error([] { get_or<int>(parse(R"({"n": 4294967296})"), "n", 0); }),
                  "out of range");
  EXPECT_CONTAINS(
      config_error([] { get_or<int64_t>(parse(R"({"n": 18446744073709551615})"), "n", 0); }),
      "out of range");
  EXPECT_CONTAINS(
      config_error([] { get_or<std::vector<int64_t>>(parse(R"({"l": [1, 2.5]})"), "l", {}); }),
      "\"l\"");
  EXPECT_EQ(get_or<std::vector<double>>(parse(R"({"l": [1, 2.5]})"), "l", {}),
            (std::vector<double>{1, 2.5}));
}

TEST(ConfigIntegers, EveryComponentRefusesNonIntegralSizes) {
  EXPECT_CONTAINS(config_error([] {
                    models::UNet2DConditionConfig::from_json(parse(R"({"sample_size": [NaN, 8]})"));
                  }),
                  "\"sample_size\"");
  EXPECT_CONTAINS(config_error([] {
                    models::UNet2DConditionConfig::from_json(
                        parse(R"({"layers_per_block": [1, 2, 1e300, 1]})"));
                  }),
                  "\"layers_per_block\"");
  EXPECT_CONTAINS(
      config_error([] {
        models::AutoencoderKLConfig::from_json(parse(R"({"block_out_channels": [-Infinity]})"));
      }),
      "\"block_out_channels\"");
}

// 4 x block_out_channels[0] (the time embedding's width) overflowed for 2^62; widths are bounded.
TEST(UNetConfig, HugeWidthsAreRefused) {
  const auto message = config_error([] {
    models::UNet2DConditionConfig::from_json(
        parse(R"({"block_out_channels": [4611686018427387904, 4611686018427387904,)"
              R"( 4611686018427387904, 4611686018427387904]})"));
  });
  EXPECT_CONTAINS(message, "\"block_out_channels\" = 4611686018427387904 exceeds 65536");
  EXPECT_CONTAINS(
      config_error(
          [] { models::UNet2DConditionConfig::from_json(parse(R"({"time_embedding_dim": -4})")); }),
      "\"time_embedding_dim\"");
  EXPECT_EQ(models::UNet2DConditionConfig::from_json(parse("{}")).time_embed_dim(), 1280);
}

// 2^(blocks - 1) is the VAE's spatial scale: 64 or more blocks overflowed the shift.
TEST(VaeConfig, TooManyBlocksAreRefused) {
  nlohmann::json config = nlohmann::json::object();
  config["block_out_channels"] = std::vector<int64_t>(64, 32);
  config["down_block_types"] = std::vector<std::string>(64, "DownEncoderBlock2D");
  config["up_block_types"] = std::vector<std::string>(64, "UpDecoderBlock2D");
  EXPECT_CONTAINS(config_error([&] { models::AutoencoderKLConfig::from_json(config); }),
                  "more than 16");
  config["block_out_channels"] = std::vector<int64_t>(4, 32);
  config["down_block_types"] = std::vector<std::string>(4, "DownEncoderBlock2D");
  config["up_block_types"] = std::vector<std::string>(4, "UpDecoderBlock2D");
  EXPECT_EQ(models::AutoencoderKLConfig::from_json(config).spatial_scale(), 8);
}

// The size caps (the config headers' kMax*): SD1.5's and SDXL's sizes pass; a value above a cap
// names its key; sizes under every cap that together describe too many weights are refused.
TEST(ConfigCaps, ClipText) {
  const auto from = [](const std::string& text) {
    return clip::ClipTextConfig::from_json(parse(text));
  };
  EXPECT_NO_THROW(from(R"({"hidden_size": 768, "intermediate_size": 3072,)"
                       R"( "num_attention_heads": 12})"));  // SD1.5's
  EXPECT_NO_THROW(from(R"({"hidden_size": 1280, "intermediate_size": 5120,)"
                       R"( "num_hidden_layers": 32, "num_attention_heads": 20})"));  // SDXL's 2nd
  EXPECT_CONTAINS(config_error([&] { from(R"({"vocab_size": 1048577})"); }),
                  "\"vocab_size\" = 1048577 exceeds 1048576");
  EXPECT_CONTAINS(config_error([&] { from(R"({"max_position_embeddings": 100000})"); }),
                  "\"max_position_embeddings\" = 100000 exceeds 8192");
  EXPECT_CONTAINS(config_error([&] { from(R"({"num_hidden_layers": 129})"); }),
                  "\"num_hidden_layers\" = 129 exceeds 128");
  EXPECT_CONTAINS(config_error([&] {
                    from(R"({"vocab_size": 1048576, "hidden_size": 16384,)"
                         R"( "intermediate_size": 65536, "num_attention_heads": 16})");
                  }),
                  "weights, more than 4294967296");
}

TEST(ConfigCaps, Vae) {
  const auto four = [](int64_t width, int64_t layers) {
    nlohmann::json config = nlohmann::json::object();
    config["block_out_channels"] = {width / 4, width / 2, width, width};
    config["down_block_types"] = std::vector<std::string>(4, "DownEncoderBlock2D");
    config["up_block_types"] = std::vector<std::string>(4, "UpDecoderBlock2D");
    config["layers_per_block"] = layers;
    return config;
  };
  EXPECT_NO_THROW(models::AutoencoderKLConfig::from_json(four(512, 2)));  // SD1.5's and SDXL's
  EXPECT_CONTAINS(config_error([&] { models::AutoencoderKLConfig::from_json(four(512, 33)); }),
                  "\"layers_per_block\" = 33 exceeds 32");
  EXPECT_CONTAINS(config_error([&] { models::AutoencoderKLConfig::from_json(four(8192, 2)); }),
                  "\"block_out_channels\" = 8192 exceeds 4096");
  EXPECT_CONTAINS(config_error([&] { models::AutoencoderKLConfig::from_json(four(4096, 8)); }),
                  "weights, more than 4294967296");
  auto latent = four(512, 2);
  latent["latent_channels"] = 5000;
  EXPECT_CONTAINS(config_error([&] { models::AutoencoderKLConfig::from_json(latent); }),
                  "\"latent_channels\" = 5000 exceeds 4096");
}

TEST(ConfigCaps, UNet) {
  const auto from = [](const std::string& text) {
    return models::UNet2DConditionConfig::from_json(parse(text));
  };
  EXPECT_NO_THROW(from("{}"));  // SD1.5's
  // SDXL's sizes (its added text-time embedding aside, which this U-Net does not support).
  EXPECT_NO_THROW(
      from(R"({"block_out_channels": [320, 640, 1280],)"
           R"( "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D",)"
           R"( "CrossAttnDownBlock2D"], "up_block_types": ["CrossAttnUpBlock2D",)"
           R"( "CrossAttnUpBlock2D", "UpBlock2D"], "attention_head_dim": [5, 10, 20],)"
           R"( "transformer_layers_per_block": [1, 2, 10], "cross_attention_dim": 2048,)"
           R"( "use_linear_projection": true})"));
  EXPECT_CONTAINS(config_error([&] { from(R"({"transformer_layers_per_block": 65})"); }),
                  "\"transformer_layers_per_block\" = 65 exceeds 64");
  EXPECT_CONTAINS(config_error([&] { from(R"({"layers_per_block": 1000000})"); }),
                  "\"layers_per_block\" = 1000000 exceeds 64");
  EXPECT_CONTAINS(config_error([&] { from(R"({"conv_in_kernel": 33})"); }),
                  "\"conv_in_kernel\" = 33 must be odd and at most 31");
  nlohmann::json many = nlohmann::json::object();
  many["down_block_types"] = std::vector<std::string>(17, "DownBlock2D");
  EXPECT_CONTAINS(config_error([&] { models::UNet2DConditionConfig::from_json(many); }),
                  "\"down_block_types\" has 17 entries, more than 16");
  EXPECT_CONTAINS(
      config_error([&] { from(R"({"block_out_channels": [65536, 65536, 65536, 65536]})"); }),
      "weights, more than 8589934592");
}

}  // namespace
}  // namespace ldcp::io
