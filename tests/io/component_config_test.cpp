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

}  // namespace
}  // namespace ldcp::io
