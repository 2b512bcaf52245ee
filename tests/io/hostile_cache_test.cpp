// The latent cache (model/pruning/latent_cache.h) reads its own files back, and they are untrusted
// like any other: a manifest that does not parse or holds a bad shard_size stops the run with the
// file and the key named (and is left for the user to look at), and a shard whose metadata or
// tensors are not what the cache writes is encoded again. The VAE is built from its default config
// (one block: latents as large as the 8x8 image), its weights never loaded: only its fingerprint
// and shapes matter here.

#include <fstream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/io/json_file.h"
#include "model/io/safetensors.h"
#include "model/models/autoencoders/autoencoder_kl.h"
#include "model/pipelines/image_codec.h"
#include "model/pruning/image_dataset.h"
#include "model/pruning/latent_cache.h"
#include "tests/common/error_text.h"
#include "tests/common/test_util.h"

namespace ldcp::pruning {
namespace {
namespace fs = std::filesystem;

constexpr int64_t kResolution = 8;

std::string file_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

class HostileLatentCache : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ldcp::testing::temp_dir("hostile-cache");
    fs::create_directories(data());
    const std::vector<uint8_t> gray(kResolution * kResolution * 3, 128);
    std::ofstream(data() / "a.png", std::ios::binary)
        << pipelines::encode_png(gray.data(), kResolution, kResolution);
    options_.cache_dir = dir_ / "cache";
    options_.resolution = kResolution;
    const auto key =
        latent_cache_key(data(), list_images(data()), kResolution, vae_fingerprint(*vae_));
    entry_ = options_.cache_dir / key;
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path data() const { return dir_ / "data"; }
  LatentSet build() { return build_latent_cache(data(), *vae_, options_); }

  fs::path dir_, entry_;
  models::AutoencoderKL vae_{models::AutoencoderKLConfig{}};
  LatentCacheOptions options_;
};

TEST_F(HostileLatentCache, BadManifestsNameTheFileAndTheKey) {
  const auto manifest = entry_ / "manifest.json";
  fs::create_directories(entry_);
  const std::pair<std::string, std::string> cases[] = {
      {std::string(200000, '['), "nests deeper than 128"},
      {R"({"shard_size": "many"})", "\"shard_size\" has the wrong type"},
      {R"({"shard_size": 1e300})", "\"shard_size\" has the wrong type"},
      {R"({"shard_size": 2.5})", "\"shard_size\" has the wrong type"},
      {R"({"shard_size": 0})", "\"shard_size\" = 0 is not in [1, 1048576]"},
      {R"({"shard_size": 4294967296})", "\"shard_size\" = 4294967296 is not in"},
      {R"({"images": []})", "\"shard_size\" is missing"},
      {"[256]", "not a JSON object"},
      {R"({"shard_size": )", "malformed JSON"}};
  for (const auto& [text, expected] : cases) {
    std::ofstream(manifest, std::ios::trunc) << text;
    const auto message = ldcp::testing::error_text<DataError>([&] { build(); });
    EXPECT_CONTAINS(message, manifest.string());
    EXPECT_CONTAINS(message, expected);
    EXPECT_CONTAINS(message, "remove " + entry_.string() + " to encode the images again");
    EXPECT_EQ(file_text(manifest), text) << "the manifest was replaced";
  }
  // A manifest the cache wrote: its shard size is kept, the image encoded.
  std::ofstream(manifest, std::ios::trunc) << R"({"shard_size": 3})";
  const auto set = build();
  EXPECT_EQ(set.encoded, 1);
  EXPECT_EQ(io::read_json_file(manifest).at("shard_size"), 3);
  EXPECT_EQ(build().reused, 1);
}

TEST_F(HostileLatentCache, ShardsThatAreNotTheCachesAreEncodedAgain) {
  const auto first = build();
  ASSERT_EQ(first.encoded, 1);
  const auto shard = entry_ / "shard-00000.safetensors";
  io::Metadata metadata;
  const auto tensors = io::load_safetensors(shard, &metadata);
  ASSERT_EQ(build().reused, 1);

  const auto rewrite = [&](const io::TensorMap& t, const io::Metadata& m) {
    io::save_safetensors(shard, t, m);
    return build();
  };
  auto deep = metadata;
  deep["errors"] = std::string(200000, '[');  // nested past the reader's bound
  auto numbers = metadata;
  numbers["errors"] = "[1]";  // not the strings the cache writes
  auto short_list = metadata;
  short_list["errors"] = "[]";
  for (const auto& m : {deep, numbers, short_list}) {
    const auto again = rewrite(tensors, m);
    EXPECT_EQ(again.encoded, 1) << m.at("errors").substr(0, 16);
    EXPECT_EQ(again.reused, 0);
  }
  auto other_shape = tensors;
  other_shape["mean"] = torch::zeros({1, 4, 4, 4}, torch::kHalf);
  auto other_dtype = tensors;
  other_dtype["valid"] = torch::ones({1}, torch::kFloat);
  auto other_rows = tensors;
  other_rows["std"] = torch::zeros({2, 4, kResolution, kResolution}, torch::kHalf);
  for (const auto& t : {other_shape, other_dtype, other_rows}) {
    const auto again = rewrite(t, metadata);
    EXPECT_EQ(again.encoded, 1);
    EXPECT_EQ(again.reused, 0);
  }
  // Each time the shard was written anew: now it is the cache's own again.
  EXPECT_EQ(build().reused, 1);
}

}  // namespace
}  // namespace ldcp::pruning
