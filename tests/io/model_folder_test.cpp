// JSON config files and model folders: the parity models open, broken folders are refused
// with errors naming the missing path.

#include "model/io/model_folder.h"
#include "model/io/json_file.h"

#include <fstream>

#include <cmath>
#include <limits>

#include <gtest/gtest.h>

#include "tests/common/error_text.h"
#include "tests/common/test_util.h"

namespace ldcp::io {
namespace {

namespace fs = std::filesystem;
using ldcp::testing::parity_model;
using ldcp::testing::temp_dir;

void write_text(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}

std::string config_error(const std::function<void()>& action) {
  return ldcp::testing::error_text<ConfigError>(action);
}

// ---------------------------------------------------------------------------------------------
// read_json_file, get_or, get_required

TEST(ReadJsonFile, ParsesAFile) {
  const auto path = temp_dir("json") / "config.json";
  write_text(path, R"({"a": 1, "b": [1, 2], "c": "x"})");
  const auto json = read_json_file(path);
  EXPECT_EQ(json["a"], 1);
  EXPECT_EQ(json["b"].size(), 2u);
}

// Python's json writes NaN / Infinity / -Infinity (diffusers' DPMSolverMultistepScheduler
// config); they are read as doubles, while the same words inside strings stay text.
TEST(ReadJsonFile, ReadsPythonsNonFiniteNumbers) {
  const auto path = temp_dir("json-inf") / "scheduler_config.json";
  write_text(path,
             R"({"lambda_min_clipped": -Infinity, "x": Infinity, "y": NaN, "l": [1, -Infinity],)"
             R"( "s": "NaN and -Infinity \" Infinity", "n": -1.5})");
  const auto json = read_json_file(path);
  EXPECT_EQ(json["lambda_min_clipped"].get<double>(), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(json["x"].get<double>(), std::numeric_limits<double>::infinity());
  EXPECT_TRUE(std::isnan(json["y"].get<double>()));
  EXPECT_EQ(json["l"][1].get<double>(), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(json["s"].get<std::string>(), "NaN and -Infinity \" Infinity");
  EXPECT_EQ(json["n"].get<double>(), -1.5);
}

TEST(ReadJsonFile, MissingFileNamesIt) {
  const auto path = temp_dir("json-missing") / "config.json";
  const auto message = config_error([&] { read_json_file(path); });
  EXPECT_CONTAINS(message, path.string());
  EXPECT_CONTAINS(message, "not found");
}

TEST(ReadJsonFile, DirectoryIsNotAFile) {
  const auto dir = temp_dir("json-dir");
  EXPECT_CONTAINS(config_error([&] { read_json_file(dir); }), dir.string());
}

TEST(ReadJsonFile, MalformedNamesFileAndPosition) {
  const auto path = temp_dir("json-bad") / "config.json";
  write_text(path, "{\n  \"a\": 1,\n  \"b\": ]\n}");
  const auto message = config_error([&] { read_json_file(path); });
  EXPECT_CONTAINS(message, path.string());
  EXPECT_CONTAINS(message, "line 3");
  write_text(path, "");
  EXPECT_CONTAINS(config_error([&] { read_json_file(path); }), path.string());
}

TEST(GetOr, DefaultsAndTypeErrors) {
  const auto config = nlohmann::json::parse(R"({"n": 3, "s": "text", "z": null, "l": [1, 2]})");
  EXPECT_EQ(get_or<int>(config, "n", 7), 3);
  EXPECT_EQ(get_or<int>(config, "absent", 7), 7);
  EXPECT_EQ(get_or<int>(config, "z", 7), 7);
  EXPECT_EQ(get_or<std::vector<int>>(config, "l", {}), (std::vector<int>{1, 2}));
  EXPECT_CONTAINS(config_error([&] { get_or<int>(config, "s", 7); }), "\"s\"");
  EXPECT_EQ(get_required<std::string>(config, "s"), "text");
  EXPECT_CONTAINS(config_error([&] { get_required<int>(config, "absent"); }), "\"absent\"");
  EXPECT_CONTAINS(config_error([&] { get_required<int>(config, "z"); }), "\"z\"");
}

// ---------------------------------------------------------------------------------------------
// ModelFolder

TEST(ModelFolder, OpensTinyA) {
  const auto root = parity_model("tiny-a");
  const auto folder = ModelFolder::open(root);
  EXPECT_EQ(folder.root, root);
  EXPECT_EQ(folder.unet, root / "unet");
  EXPECT_EQ(folder.vae, root / "vae");
  EXPECT_EQ(folder.text_encoder, root / "text_encoder");
  EXPECT_EQ(folder.tokenizer, root / "tokenizer");
  EXPECT_EQ(folder.scheduler, root / "scheduler");
  EXPECT_EQ(folder.model_index["_class_name"], "StableDiffusionPipeline");
  // The values make_models.py configured.
  EXPECT_EQ(folder.unet_config()["block_out_channels"], nlohmann::json({32, 64}));
  EXPECT_EQ(folder.vae_config()["block_out_channels"], nlohmann::json({32, 32, 64, 64}));
  EXPECT_EQ(folder.text_encoder_config()["hidden_size"], 32);
  EXPECT_EQ(folder.scheduler_config()["beta_schedule"], "scaled_linear");
}

TEST(ModelFolder, OpensTinyBWithTokenizerJsonOnly) {
  const auto root = parity_model("tiny-b");
  ASSERT_FALSE(fs::exists(root / "tokenizer" / "vocab.json"));
  const auto folder = ModelFolder::open(root);
  EXPECT_EQ(folder.text_encoder_config()["hidden_size"], 48);
}

// A copy of tiny-a's configuration and tokenizer files (no weights: open does not read them).
fs::path copy_of_tiny_a(const std::string& tag) {
  const auto source = parity_model("tiny-a");
  const auto dest = temp_dir(tag) / "model";
  for (const auto& entry : fs::recursive_directory_iterator(source)) {
    if (!entry.is_regular_file()) continue;
    const auto ext = entry.path().extension();
    if (ext != ".json" && ext != ".txt") continue;
    const auto target = dest / fs::relative(entry.path(), source);
    fs::create_directories(target.parent_path());
    fs::copy_file(entry.path(), target);
  }
  return dest;
}

TEST(ModelFolder, CopyOpens) { EXPECT_NO_THROW(ModelFolder::open(copy_of_tiny_a("mf-copy"))); }

TEST(ModelFolder, MissingRoot) {
  const auto root = temp_dir("mf-root") / "absent";
  EXPECT_CONTAINS(config_error([&] { ModelFolder::open(root); }), root.string());
}

TEST(ModelFolder, MissingModelIndex) {
  const auto root = copy_of_tiny_a("mf-index");
  fs::remove(root / "model_index.json");
  EXPECT_CONTAINS(config_error([&] { ModelFolder::open(root); }),
                  (root / "model_index.json").string());
}

TEST(ModelFolder, MalformedModelIndex) {
  const auto root = copy_of_tiny_a("mf-index-bad");
  write_text(root / "model_index.json", "[1, 2]");
  EXPECT_CONTAINS(config_error([&] { ModelFolder::open(root); }), "model_index.json");
  write_text(root / "model_index.json", "{\"unet\": ");
  EXPECT_CONTAINS(config_error([&] { ModelFolder::open(root); }), "model_index.json");
}

TEST(ModelFolder, MissingComponentConfig) {
  for (const std::string file : {"unet/config.json", "vae/config.json", "text_encoder/config.json",
                                 "scheduler/scheduler_config.json"}) {
    const auto root = copy_of_tiny_a("mf-config");
    fs::remove(root / file);
    EXPECT_CONTAINS(config_error([&] { ModelFolder::open(root); }), (root / file).string());
  }
}

TEST(ModelFolder, MissingComponentFolder) {
  for (const std::string component : {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}) {
    const auto root = copy_of_tiny_a("mf-folder");
    fs::remove_all(root / component);
    EXPECT_CONTAINS(config_error([&] { ModelFolder::open(root); }), (root / component).string());
  }
}

TEST(ModelFolder, TokenizerNeedsVocabularyFiles) {
  const auto root = copy_of_tiny_a("mf-tok");
  fs::remove(root / "tokenizer" / "tokenizer.json");
  EXPECT_NO_THROW(ModelFolder::open(root));  // vocab.json + merges.txt suffice
  fs::remove(root / "tokenizer" / "merges.txt");
  EXPECT_CONTAINS(config_error([&] { ModelFolder::open(root); }), (root / "tokenizer").string());
}

TEST(ModelFolder, DisabledComponentInIndex) {
  const auto root = copy_of_tiny_a("mf-null");
  auto index = read_json_file(root / "model_index.json");
  index["vae"] = {nullptr, nullptr};
  write_text(root / "model_index.json", index.dump());
  const auto message = config_error([&] { ModelFolder::open(root); });
  EXPECT_CONTAINS(message, "model_index.json");
  EXPECT_CONTAINS(message, "\"vae\"");
}

}  // namespace
}  // namespace ldcp::io
