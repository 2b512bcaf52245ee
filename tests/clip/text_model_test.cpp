// ClipTextModel behaviour that needs no reference run: config parsing, the checkpoint key
// layout, shapes, causality and input checks. Equality with transformers is in
// clip_parity_test.

#include <fstream>
#include <set>

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "model/clip/modeling_clip.h"
#include "model/io/json_file.h"
#include "tests/common/test_util.h"

namespace ldcp::clip {
namespace {

ClipTextConfig tiny_config() {
  return ClipTextConfig::from_json({{"vocab_size", 100},
                                    {"hidden_size", 16},
                                    {"intermediate_size", 24},
                                    {"num_hidden_layers", 2},
                                    {"num_attention_heads", 4},
                                    {"max_position_embeddings", 12},
                                    {"hidden_act", "gelu"}});
}

TEST(ClipTextConfig, DefaultsAreTransformers) {
  const auto c = ClipTextConfig::from_json(nlohmann::json::object());
  EXPECT_EQ(c.vocab_size, 49408);
  EXPECT_EQ(c.hidden_size, 512);
  EXPECT_EQ(c.intermediate_size, 2048);
  EXPECT_EQ(c.num_hidden_layers, 12);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.max_position_embeddings, 77);
  EXPECT_EQ(c.hidden_act, "quick_gelu");
  EXPECT_DOUBLE_EQ(c.layer_norm_eps, 1e-5);
}

TEST(ClipTextConfig, ReadsAndChecksValues) {
  const auto c = tiny_config();
  EXPECT_EQ(c.hidden_size, 16);
  EXPECT_EQ(c.hidden_act, "gelu");
  EXPECT_THROW(ClipTextConfig::from_json({{"hidden_size", "wide"}}), io::ConfigError);
  EXPECT_THROW(ClipTextConfig::from_json({{"hidden_act", "no_such_act"}}), io::ConfigError);
  EXPECT_THROW(ClipTextConfig::from_json({{"hidden_size", 30}, {"num_attention_heads", 4}}),
               io::ConfigError);
  EXPECT_THROW(ClipTextConfig::from_json({{"num_hidden_layers", 0}}), io::ConfigError);
}

TEST(ClipTextModel, ParameterNamesAreTheCheckpointKeys) {
  ClipTextModel model(tiny_config());
  std::set<std::string> names;
  for (const auto& item : model->named_parameters()) names.insert(item.key());
  for (const std::string name :
       {"text_model.embeddings.token_embedding.weight",
        "text_model.embeddings.position_embedding.weight",
        "text_model.encoder.layers.1.self_attn.q_proj.weight",
        "text_model.encoder.layers.1.self_attn.k_proj.bias",
        "text_model.encoder.layers.1.self_attn.v_proj.weight",
        "text_model.encoder.layers.1.self_attn.out_proj.bias",
        "text_model.encoder.layers.0.layer_norm1.weight",
        "text_model.encoder.layers.0.layer_norm2.bias",
        "text_model.encoder.layers.0.mlp.fc1.weight", "text_model.encoder.layers.0.mlp.fc2.bias",
        "text_model.final_layer_norm.weight", "text_model.final_layer_norm.bias"}) {
    EXPECT_TRUE(names.count(name)) << name;
  }
  // 2 embeddings, 16 tensors per layer, final norm's 2; no buffers (position_ids is not one).
  EXPECT_EQ(names.size(), 2u + 16u * 2u + 2u);
  EXPECT_EQ(model->named_buffers().size(), 0u);
}

TEST(ClipTextModel, OutputShapeAndCausality) {
  torch::manual_seed(0);
  ClipTextModel model(tiny_config());
  model->eval();
  torch::NoGradGuard no_grad;
  auto ids = torch::randint(0, 100, {2, 10}, torch::kLong);
  const auto out = model->forward(ids);
  EXPECT_EQ(out.sizes(), (std::vector<int64_t>{2, 10, 16}));
  EXPECT_TRUE(out.isfinite().all().item<bool>());
  // Changing token 6 changes positions 6.. only.
  auto changed = ids.clone();
  changed.index_put_({torch::indexing::Slice(), 6},
                     (ids.index({torch::indexing::Slice(), 6}) + 1) % 100);
  const auto out2 = model->forward(changed);
  using torch::indexing::Slice;
  EXPECT_TRUE(torch::equal(out.index({Slice(), Slice(0, 6)}), out2.index({Slice(), Slice(0, 6)})));
  EXPECT_FALSE(torch::allclose(out.index({Slice(), 6}), out2.index({Slice(), 6})));
  // A 1-D input is one sequence (transformers' view(-1, length)).
  EXPECT_TRUE(torch::allclose(model->forward(ids[0]), out.index({Slice(0, 1)})));
}

TEST(ClipTextModel, RejectsBadInputs) {
  ClipTextModel model(tiny_config());
  torch::NoGradGuard no_grad;
  EXPECT_THROW(model->forward(torch::zeros({1, 13}, torch::kLong)), std::invalid_argument);
  EXPECT_THROW(model->forward(torch::zeros({1, 4}, torch::kFloat)), std::invalid_argument);
  EXPECT_THROW(model->forward(torch::full({1, 4}, 100, torch::kLong)), std::invalid_argument);
  EXPECT_THROW(model->forward(torch::full({1, 4}, -1, torch::kLong)), std::invalid_argument);
  EXPECT_THROW(model->forward(torch::zeros({1, 2, 4}, torch::kLong)), std::invalid_argument);
}

TEST(ClipTextModel, LoadErrorsNameTheFile) {
  const auto dir = ldcp::testing::temp_dir("clip-text-encoder");
  try {
    load_clip_text_model(dir);
    ADD_FAILURE() << "no exception";
  } catch (const io::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "config.json").string()), std::string::npos);
  }
  {
    std::ofstream out(dir / "config.json");
    out << R"({"hidden_size": 16, "num_attention_heads": 4, "hidden_act": "bogus"})";
  }
  try {
    load_clip_text_model(dir);
    ADD_FAILURE() << "no exception";
  } catch (const io::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("config.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("bogus"), std::string::npos) << e.what();
  }
  {
    std::ofstream out(dir / "config.json");
    out << R"({"hidden_size": 16, "num_attention_heads": 4, "num_hidden_layers": 1})";
  }
  EXPECT_THROW(load_clip_text_model(dir), io::WeightLoadError);
}

}  // namespace
}  // namespace ldcp::clip
