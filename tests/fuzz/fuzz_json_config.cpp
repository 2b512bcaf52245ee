// libFuzzer target: JSON config files (model/io/json_file.h) and the config readers of each
// component: UNet2DConditionConfig, AutoencoderKLConfig, ClipTextConfig. Malformed input may
// only throw ConfigError; nothing may crash, recurse without bound or overflow.

#include <cstdint>
#include <cstdlib>
#include <string>

#include <nlohmann/json.hpp>

#include "model/clip/configuration_clip.h"
#include "model/io/json_file.h"
#include "model/models/autoencoders/autoencoder_kl_config.h"
#include "model/models/unets/unet_2d_condition_config.h"

namespace {

template <typename F>
void expect_config_error_only(F&& read) {
  try {
    read();
  } catch (const ldcp::io::ConfigError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nlohmann::json json;
  try {
    json = ldcp::io::parse_json_text(std::string(reinterpret_cast<const char*>(data), size),
                                     "fuzz/config.json");
  } catch (const ldcp::io::ConfigError& e) {
    if (std::string(e.what()).rfind("fuzz/config.json: ", 0) != 0) std::abort();
    return 0;
  }
  expect_config_error_only([&] {
    const auto unet = ldcp::models::UNet2DConditionConfig::from_json(json);
    for (size_t block = 0; block < unet.num_blocks(); ++block) {
      unet.num_attention_heads(block);
      unet.layers(block);
      unet.cross_attention_dim_of(block);
      unet.transformer_layers(block);
      unet.only_cross_attention_of(block);
    }
    unet.time_embed_dim();
  });
  expect_config_error_only([&] {
    const auto vae = ldcp::models::AutoencoderKLConfig::from_json(json);
    if (vae.spatial_scale() < 1) std::abort();
  });
  expect_config_error_only([&] { ldcp::clip::ClipTextConfig::from_json(json); });
  return 0;
}
