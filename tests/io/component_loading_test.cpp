// The component loaders on a hostile config.json: the error is a ConfigError that names the file
// and the key, raised before the model (or any of its weights) is allocated. Folders hold only
// config.json: a loader that got past the config would fail on the missing weights instead.

#include <fstream>
#include <functional>
#include <string>

#include <gtest/gtest.h>

#include "model/clip/modeling_clip.h"
#include "model/io/json_file.h"
#include "model/models/autoencoders/autoencoder_kl.h"
#include "model/models/unets/unet_2d_condition.h"
#include "tests/common/error_text.h"
#include "tests/common/test_util.h"

namespace ldcp::io {
namespace {
namespace fs = std::filesystem;

fs::path component(const std::string& name, const std::string& config) {
  const auto dir = ldcp::testing::temp_dir("hostile-config") / name;
  fs::create_directories(dir);
  std::ofstream(dir / "config.json") << config;
  return dir;
}

void expect_named(const std::function<void(const fs::path&)>& load, const std::string& name,
                  const std::string& config, const std::string& key) {
  const auto dir = component(name, config);
  const auto message = ldcp::testing::error_text<ConfigError>([&] { load(dir); });
  EXPECT_CONTAINS(message, (dir / "config.json").string());
  EXPECT_CONTAINS(message, "\"" + key + "\"");
}

TEST(HostileComponentConfig, ClipTextEncoder) {
  const auto load = [](const fs::path& dir) { clip::load_clip_text_model(dir); };
  expect_named(load, "text_encoder", R"({"vocab_size": 4294967296})", "vocab_size");
  expect_named(load, "text_encoder", R"({"num_hidden_layers": 100000})", "num_hidden_layers");
  expect_named(load, "text_encoder", R"({"hidden_size": 65536, "intermediate_size": 65536})",
               "hidden_size");
}

TEST(HostileComponentConfig, Vae) {
  const auto load = [](const fs::path& dir) { models::load_vae(dir); };
  expect_named(load, "vae", R"({"latent_channels": 1000000000})", "latent_channels");
  expect_named(load, "vae", R"({"layers_per_block": 1000000})", "layers_per_block");
  expect_named(load, "vae",
               R"({"block_out_channels": [16384, 16384, 16384, 16384],)"
               R"( "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D",)"
               R"( "DownEncoderBlock2D", "DownEncoderBlock2D"],)"
               R"( "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D",)"
               R"( "UpDecoderBlock2D", "UpDecoderBlock2D"], "layers_per_block": 8})",
               "block_out_channels");
}

TEST(HostileComponentConfig, UNetKernels) {
  const auto load = [](const fs::path& dir) { models::load_unet(dir); };
  expect_named(load, "unet", R"({"conv_in_kernel": 40001})", "conv_in_kernel");
  expect_named(load, "unet", R"({"conv_out_kernel": 101})", "conv_out_kernel");
}

}  // namespace
}  // namespace ldcp::io
