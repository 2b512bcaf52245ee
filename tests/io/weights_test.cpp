// Loading component folders into modules: weight file selection, strict key checking, dtype
// conversion, legacy VAE key names and sharded checkpoints; on the parity model folders too.

#include "model/io/weights.h"

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "tests/common/test_util.h"
#include "tests/io/io_test_util.h"

namespace ldcp::io {
namespace {

namespace fs = std::filesystem;
using ldcp::testing::parity_model;
using ldcp::testing::temp_dir;

// A module whose tree is built from checkpoint key names, so whole component files can be
// loaded without the component's own module (which other libraries provide).
class TreeModuleImpl : public torch::nn::Module {
 public:
  std::shared_ptr<TreeModuleImpl> child(const std::string& name) {
    auto it = children_.find(name);
    if (it != children_.end()) return it->second;
    auto module = register_module(name, std::make_shared<TreeModuleImpl>());
    children_.emplace(name, module);
    return module;
  }
  void add_parameter(const std::string& name, at::Tensor value) {
    register_parameter(name, std::move(value));
  }
  void add_buffer(const std::string& name, at::Tensor value) {
    register_buffer(name, std::move(value));
  }

 private:
  std::map<std::string, std::shared_ptr<TreeModuleImpl>> children_;
};

// One zero parameter per key (shape from `shapes`), in `dtype`.
std::shared_ptr<TreeModuleImpl> tree_for(const std::map<std::string, std::vector<int64_t>>& shapes,
                                         at::ScalarType dtype = at::kFloat) {
  auto root = std::make_shared<TreeModuleImpl>();
  for (const auto& [key, shape] : shapes) {
    auto node = root;
    size_t start = 0;
    for (size_t dot = key.find('.'); dot != std::string::npos; dot = key.find('.', start)) {
      node = node->child(key.substr(start, dot - start));
      start = dot + 1;
    }
    node->add_parameter(key.substr(start), at::zeros(shape, dtype));
  }
  return root;
}

std::map<std::string, std::vector<int64_t>> shapes_of(const TensorMap& tensors) {
  std::map<std::string, std::vector<int64_t>> out;
  for (const auto& [name, t] : tensors) out.emplace(name, t.sizes().vec());
  return out;
}

std::map<std::string, at::Tensor> params_of(torch::nn::Module& module) {
  std::map<std::string, at::Tensor> out;
  for (const auto& item : module.named_parameters()) out.emplace(item.key(), item.value());
  for (const auto& item : module.named_buffers()) out.emplace(item.key(), item.value());
  return out;
}

void touch(const fs::path& path) { ldcp::io::testing::write_bytes(path, ""); }

// A small module: linear (weight, bias), block.norm (weight, bias), buffer "stats".
struct Small : torch::nn::Module {
  Small() {
    linear = register_module("linear", torch::nn::Linear(3, 4));
    block = register_module("block", std::make_shared<torch::nn::Module>());
    norm = block->register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({4})));
    stats = register_buffer("stats", at::zeros({2}));
  }
  torch::nn::Linear linear{nullptr};
  std::shared_ptr<torch::nn::Module> block;
  torch::nn::LayerNorm norm{nullptr};
  at::Tensor stats;
};

TensorMap small_weights(at::ScalarType dtype = at::kFloat) {
  return {{"linear.weight", at::randn({4, 3}).to(dtype)},
          {"linear.bias", at::randn({4}).to(dtype)},
          {"block.norm.weight", at::randn({4}).to(dtype)},
          {"block.norm.bias", at::randn({4}).to(dtype)},
          {"stats", at::randn({2}).to(dtype)}};
}

void expect_loaded(torch::nn::Module& module, const TensorMap& expected) {
  const auto params = params_of(module);
  ASSERT_EQ(params.size(), expected.size());
  for (const auto& [name, value] : expected) {
    ASSERT_TRUE(params.count(name)) << name;
    const auto& param = params.at(name);
    EXPECT_TRUE(at::equal(param, value.to(param.scalar_type()))) << name;
  }
}

std::string message_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const WeightLoadError& e) {
    return e.what();
  }
  ADD_FAILURE() << "no WeightLoadError";
  return {};
}

// ---------------------------------------------------------------------------------------------
// find_weight_file

TEST(FindWeightFile, PrefersPlainThenFp16Variant) {
  const auto dir = temp_dir("find");
  EXPECT_THROW(find_weight_file(dir), WeightLoadError);
  touch(dir / "diffusion_pytorch_model.fp16.safetensors");
  EXPECT_EQ(find_weight_file(dir), dir / "diffusion_pytorch_model.fp16.safetensors");
  EXPECT_EQ(find_weight_file(dir, true), dir / "diffusion_pytorch_model.fp16.safetensors");
  touch(dir / "diffusion_pytorch_model.safetensors");
  EXPECT_EQ(find_weight_file(dir), dir / "diffusion_pytorch_model.safetensors");
  EXPECT_EQ(find_weight_file(dir, true), dir / "diffusion_pytorch_model.fp16.safetensors");
}

TEST(FindWeightFile, TransformersName) {
  const auto dir = temp_dir("find-tf");
  touch(dir / "model.fp16.safetensors");
  EXPECT_EQ(find_weight_file(dir), dir / "model.fp16.safetensors");
  touch(dir / "model.safetensors");
  EXPECT_EQ(find_weight_file(dir), dir / "model.safetensors");
  EXPECT_EQ(find_weight_file(dir, true), dir / "model.fp16.safetensors");
}

TEST(FindWeightFile, ShardIndex) {
  const auto dir = temp_dir("find-shard");
  touch(dir / "diffusion_pytorch_model.safetensors.index.fp16.json");
  EXPECT_EQ(find_weight_file(dir), dir / "diffusion_pytorch_model.safetensors.index.fp16.json");
  touch(dir / "diffusion_pytorch_model.safetensors.index.json");
  EXPECT_EQ(find_weight_file(dir), dir / "diffusion_pytorch_model.safetensors.index.json");
}

TEST(FindWeightFile, ErrorsNameTheFolder) {
  const auto dir = temp_dir("find-none");
  touch(dir / "diffusion_pytorch_model.bin");  // pickles are not read
  auto message = message_of([&] { find_weight_file(dir); });
  EXPECT_NE(message.find(dir.string()), std::string::npos) << message;
  message = message_of([&] { find_weight_file(dir / "absent"); });
  EXPECT_NE(message.find((dir / "absent").string()), std::string::npos) << message;
}

// ---------------------------------------------------------------------------------------------
// load_state_dict

TEST(LoadStateDict, CopiesParametersAndBuffers) {
  Small module;
  const auto weights = small_weights();
  load_state_dict(module, weights, "mem");
  expect_loaded(module, weights);
  // Copied into the existing tensors: the module's handles see the values.
  EXPECT_TRUE(at::equal(module.stats, weights.at("stats")));
  EXPECT_TRUE(at::equal(module.linear->weight, weights.at("linear.weight")));
  EXPECT_TRUE(module.linear->weight.requires_grad());
}

TEST(LoadStateDict, ListsAllProblemsInOneError) {
  Small module;
  const auto before = module.linear->weight.clone();
  auto weights = small_weights();
  weights.erase("block.norm.bias");
  weights.erase("stats");
  weights.emplace("extra.weight", at::zeros({1}));
  weights["linear.weight"] = at::zeros({3, 4});
  const auto message = message_of([&] { load_state_dict(module, weights, "my/source.file"); });
  for (const std::string fragment :
       {"my/source.file", "2 missing keys", "block.norm.bias", "stats", "1 unexpected key",
        "extra.weight", "1 shape mismatch", "linear.weight (checkpoint [3, 4], module [4, 3])"}) {
    EXPECT_NE(message.find(fragment), std::string::npos) << fragment << " not in: " << message;
  }
  // Nothing was copied.
  EXPECT_TRUE(at::equal(module.linear->weight, before));
}

TEST(LoadStateDict, IgnoredUnexpectedAndMissing) {
  Small module;
  auto weights = small_weights();
  weights.emplace("text_model.embeddings.position_ids", at::arange(77));
  EXPECT_THROW(load_state_dict(module, weights, "mem"), WeightLoadError);
  LoadOptions options;
  options.ignored_unexpected = {"text_model.embeddings.position_ids"};
  load_state_dict(module, weights, "mem", options);
  EXPECT_TRUE(at::equal(module.linear->bias, weights.at("linear.bias")));

  // A missing buffer keeps its value when ignored, and only then.
  weights.erase("stats");
  module.stats.fill_(7);
  EXPECT_THROW(load_state_dict(module, weights, "mem", options), WeightLoadError);
  options.ignored_missing = {"stats"};
  load_state_dict(module, weights, "mem", options);
  EXPECT_TRUE(at::equal(module.stats, at::full({2}, 7.0)));
  // Ignoring is by exact name: a prefix does not match.
  weights.erase("linear.bias");
  options.ignored_missing = {"stats", "linear"};
  EXPECT_THROW(load_state_dict(module, weights, "mem", options), WeightLoadError);
}

TEST(LoadStateDict, ConvertsDtype) {
  Small module;
  const auto weights = small_weights(at::kBFloat16);
  load_state_dict(module, weights, "mem");
  EXPECT_EQ(module.linear->weight.scalar_type(), at::kFloat);
  expect_loaded(module, weights);

  Small doubled;
  doubled.to(at::kDouble);
  load_state_dict(doubled, small_weights(at::kHalf), "mem");
  EXPECT_EQ(doubled.linear->weight.scalar_type(), at::kDouble);
}

// ---------------------------------------------------------------------------------------------
// load_component

TEST(LoadComponent, ConvertsF16AndBF16Files) {
  for (const auto dtype : {at::kHalf, at::kBFloat16}) {
    const auto dir = temp_dir("comp-dtype");
    const auto weights = small_weights(dtype);
    save_safetensors(dir / "diffusion_pytorch_model.safetensors", weights);
    Small module;
    load_component(module, dir);
    EXPECT_EQ(module.linear->weight.scalar_type(), at::kFloat);
    expect_loaded(module, weights);
  }
}

TEST(LoadComponent, ChannelsLastRestridesConvolutionWeightsOnly) {
  const auto dir = temp_dir("comp-channels-last");
  const TensorMap weights = {{"conv.weight", at::randn({8, 4, 3, 3})},
                             {"conv.bias", at::randn({8})}};
  save_safetensors(dir / "diffusion_pytorch_model.safetensors", weights);
  torch::nn::Module module;
  auto conv = module.register_module("conv", torch::nn::Conv2d(torch::nn::Conv2dOptions(4, 8, 3)));
  const auto before = conv->weight;  // the registered parameter, seen through another handle

  load_component(module, dir);
  EXPECT_TRUE(conv->weight.is_contiguous());
  LoadOptions options;
  options.channels_last = true;
  load_component(module, dir, options);
  EXPECT_TRUE(conv->weight.is_contiguous(at::MemoryFormat::ChannelsLast));
  EXPECT_FALSE(conv->weight.is_contiguous());
  EXPECT_TRUE(before.is_contiguous(at::MemoryFormat::ChannelsLast));  // the same parameter
  EXPECT_TRUE(conv->bias.is_contiguous());
  expect_loaded(module, weights);
  const auto x = at::randn({2, 4, 7, 7});
  const auto reference = at::conv2d(x, weights.at("conv.weight"), weights.at("conv.bias"));
  EXPECT_TRUE(at::allclose(conv->forward(x), reference, 1e-5, 1e-5));
}

TEST(LoadComponent, ErrorNamesTheWeightFile) {
  const auto dir = temp_dir("comp-err");
  auto weights = small_weights();
  weights.erase("linear.bias");
  save_safetensors(dir / "model.safetensors", weights);
  Small module;
  const auto message = message_of([&] { load_component(module, dir); });
  EXPECT_NE(message.find((dir / "model.safetensors").string()), std::string::npos) << message;
  EXPECT_NE(message.find("linear.bias"), std::string::npos) << message;
}

TEST(LoadComponent, VariantSelection) {
  const auto dir = temp_dir("comp-variant");
  const auto full = small_weights();
  const auto half = small_weights(at::kHalf);
  save_safetensors(dir / "diffusion_pytorch_model.fp16.safetensors", half);
  Small module;
  load_component(module, dir);  // only the variant exists
  expect_loaded(module, half);
  save_safetensors(dir / "diffusion_pytorch_model.safetensors", full);
  load_component(module, dir);
  expect_loaded(module, full);
  LoadOptions options;
  options.prefer_fp16 = true;
  load_component(module, dir, options);
  expect_loaded(module, half);
}

TEST(LoadComponent, ShardedCheckpoint) {
  const auto dir = temp_dir("comp-shard");
  const auto weights = small_weights();
  TensorMap first, second;
  nlohmann::json map = nlohmann::json::object();
  for (const auto& [name, t] : weights) {
    const bool in_first = name.rfind("linear", 0) == 0;
    (in_first ? first : second).emplace(name, t);
    map[name] = in_first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  save_safetensors(dir / "model-00001-of-00002.safetensors", first);
  save_safetensors(dir / "model-00002-of-00002.safetensors", second);
  const nlohmann::json index = {{"metadata", {{"total_size", 100}}}, {"weight_map", map}};
  std::ofstream(dir / "model.safetensors.index.json") << index.dump();

  Small module;
  load_component(module, dir);
  expect_loaded(module, weights);
  const auto loaded = load_weight_file(dir / "model.safetensors.index.json");
  ASSERT_EQ(loaded.size(), weights.size());
  for (const auto& [name, t] : weights) EXPECT_TRUE(at::equal(loaded.at(name), t)) << name;

  // An index that points at the wrong shard, or out of the folder, is refused.
  auto bad = index;
  bad["weight_map"]["stats"] = "model-00001-of-00002.safetensors";
  std::ofstream(dir / "model.safetensors.index.json", std::ios::trunc) << bad.dump();
  auto message = message_of([&] { load_component(module, dir); });
  EXPECT_NE(message.find("stats"), std::string::npos) << message;
  bad = index;
  bad["weight_map"]["stats"] = "../elsewhere.safetensors";
  std::ofstream(dir / "model.safetensors.index.json", std::ios::trunc) << bad.dump();
  message = message_of([&] { load_component(module, dir); });
  EXPECT_NE(message.find("elsewhere"), std::string::npos) << message;
  std::ofstream(dir / "model.safetensors.index.json", std::ios::trunc) << "{\"weight_map\": 3}";
  EXPECT_THROW(load_component(module, dir), WeightLoadError);
}

// ---------------------------------------------------------------------------------------------
// Legacy VAE attention names

TEST(LegacyVaeKeys, RenamesOnlyAttentionBlockKeys) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"encoder.mid_block.attentions.0.query.weight", "encoder.mid_block.attentions.0.to_q.weight"},
      {"encoder.mid_block.attentions.0.query.bias", "encoder.mid_block.attentions.0.to_q.bias"},
      {"decoder.mid_block.attentions.0.key.weight", "decoder.mid_block.attentions.0.to_k.weight"},
      {"decoder.mid_block.attentions.12.value.bias", "decoder.mid_block.attentions.12.to_v.bias"},
      {"decoder.mid_block.attentions.0.proj_attn.weight",
       "decoder.mid_block.attentions.0.to_out.0.weight"},
      {"attentions.1.proj_attn.bias", "attentions.1.to_out.0.bias"},
      // Unchanged: not an attention block, already current, or not a parameter name.
      {"encoder.mid_block.attentions.0.group_norm.weight",
       "encoder.mid_block.attentions.0.group_norm.weight"},
      {"encoder.mid_block.attentions.0.to_q.weight", "encoder.mid_block.attentions.0.to_q.weight"},
      {"encoder.mid_block.resnets.0.query.weight", "encoder.mid_block.resnets.0.query.weight"},
      {"encoder.mid_block.attentions.x.query.weight",
       "encoder.mid_block.attentions.x.query.weight"},
      {"encoder.mid_block.myattentions.0.query.weight",
       "encoder.mid_block.myattentions.0.query.weight"},
      {"encoder.mid_block.attentions.0.query.scale", "encoder.mid_block.attentions.0.query.scale"},
      {"query.weight", "query.weight"},
      {"down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight",
       "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"},
  };
  for (const auto& [legacy, current] : cases) EXPECT_EQ(rename_legacy_vae_key(legacy), current);

  TensorMap tensors;
  for (const auto& [legacy, current] : cases) {
    // The already-current to_q key would clash with the renamed query key (tested below).
    if (legacy != "encoder.mid_block.attentions.0.to_q.weight") {
      tensors.emplace(legacy, at::ones({1}));
    }
  }
  const auto renamed = rename_legacy_vae_keys(tensors);
  EXPECT_EQ(renamed.size(), tensors.size());
  for (const auto& [legacy, current] : cases) {
    if (tensors.count(legacy)) {
      EXPECT_TRUE(renamed.count(current)) << current;
    }
  }

  TensorMap clash{{"a.attentions.0.query.weight", at::ones({1})},
                  {"a.attentions.0.to_q.weight", at::ones({1})}};
  try {
    rename_legacy_vae_keys(clash);
    ADD_FAILURE() << "no WeightLoadError";
  } catch (const WeightLoadError& e) {
    EXPECT_NE(std::string(e.what()).find("a.attentions.0.query.weight"), std::string::npos)
        << e.what();
  }
}

// ---------------------------------------------------------------------------------------------
// The parity model folders (save_pretrained output)

TEST(ParityModels, LoadsEveryComponentOfTinyA) {
  for (const std::string component : {"unet", "vae", "text_encoder"}) {
    const auto dir = parity_model("tiny-a") / component;
    const auto file = find_weight_file(dir);
    EXPECT_EQ(file.extension(), ".safetensors");
    const auto expected = load_weight_file(file);
    ASSERT_FALSE(expected.empty()) << component;
    auto module = tree_for(shapes_of(expected));
    load_component(*module, dir);
    expect_loaded(*module, expected);
  }
}

TEST(ParityModels, Fp16VariantLoadsIntoFloatModule) {
  for (const std::string component : {"unet", "vae", "text_encoder"}) {
    const auto dir = parity_model("tiny-a-fp16") / component;
    const auto file = find_weight_file(dir);
    EXPECT_NE(file.filename().string().find(".fp16."), std::string::npos) << file;
    const auto reference = load_weight_file(find_weight_file(parity_model("tiny-a") / component));
    auto module = tree_for(shapes_of(reference));
    load_component(*module, dir);
    // The fp16 files hold tiny-a's weights rounded to half precision.
    const auto params = params_of(*module);
    for (const auto& [name, value] : reference) {
      ASSERT_TRUE(params.count(name)) << name;
      EXPECT_EQ(params.at(name).scalar_type(), at::kFloat);
      EXPECT_TRUE(at::equal(params.at(name), value.to(at::kHalf).to(at::kFloat))) << name;
    }
  }
}

TEST(ParityModels, LegacyVaeCheckpointLoads) {
  // tiny-a's VAE with its attention keys renamed back to the legacy names.
  const auto current = load_weight_file(find_weight_file(parity_model("tiny-a") / "vae"));
  TensorMap legacy;
  int renamed = 0;
  for (const auto& [name, t] : current) {
    std::string key = name;
    for (const auto& [from, to] :
         std::vector<std::pair<std::string, std::string>>{{".to_q.", ".query."},
                                                          {".to_k.", ".key."},
                                                          {".to_v.", ".value."},
                                                          {".to_out.0.", ".proj_attn."}}) {
      const auto at = key.find(from);
      if (at != std::string::npos) {
        key.replace(at, from.size(), to);
        ++renamed;
      }
    }
    legacy.emplace(key, t);
  }
  EXPECT_EQ(renamed, 16);  // encoder and decoder mid-block: 4 layers x weight, bias
  const auto dir = temp_dir("legacy-vae");
  save_safetensors(dir / "diffusion_pytorch_model.safetensors", legacy);
  auto module = tree_for(shapes_of(current));
  load_component(*module, dir);
  expect_loaded(*module, current);
  // Without the renaming, the strict load reports the legacy keys.
  auto plain = tree_for(shapes_of(current));
  const auto message = message_of([&] { load_state_dict(*plain, legacy, "legacy"); });
  EXPECT_NE(message.find("encoder.mid_block.attentions.0.query.weight"), std::string::npos);
}

}  // namespace
}  // namespace ldcp::io
