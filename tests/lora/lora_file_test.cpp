// The LoRA key layouts and shape checks (model/lora/lora_file.h), on headers made here; kohya
// U-Net names of the original (LDM) layout.
#include <gtest/gtest.h>

#include "model/lora/lora_file.h"

namespace ldcp::lora {
namespace {

std::vector<TargetLayer> targets() {
  std::vector<TargetLayer> t;
  t.push_back({LoraComponent::kUNet, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
               false, 32, 32});
  t.push_back({LoraComponent::kUNet, "down_blocks.0.resnets.0.conv1", true, 32, 16, 3, 3});
  t.push_back({LoraComponent::kUNet, "down_blocks.0.attentions.0.proj_in", true, 32, 32, 1, 1});
  t.push_back(
      {LoraComponent::kTextEncoder, "text_model.encoder.layers.0.self_attn.q_proj", false, 24, 24});
  return t;
}

io::TensorInfo info(std::vector<int64_t> shape, std::string dtype = "F16") {
  io::TensorInfo i;
  i.dtype = std::move(dtype);
  i.shape = std::move(shape);
  return i;
}

TEST(LoraFile, KohyaNamesAreModulePathsWithUnderscores) {
  EXPECT_EQ(kohya_name(LoraComponent::kUNet, "mid_block.attentions.0.proj_in"),
            "lora_unet_mid_block_attentions_0_proj_in");
  EXPECT_EQ(kohya_name(LoraComponent::kTextEncoder, "text_model.encoder.layers.3.mlp.fc1"),
            "lora_te_text_model_encoder_layers_3_mlp_fc1");
}

TEST(LoraFile, PlansKohyaLinearAndConvFactors) {
  std::map<std::string, io::TensorInfo> t = {
      {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
       info({4, 32})},
      {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
       info({32, 4})},
      {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha", info({})},
      {"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", info({8, 16, 3, 3})},
      {"lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", info({32, 8, 1, 1})},
      {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", info({2, 32})},
      {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight", info({32, 2})},
      {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", info({4, 24})},
      {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", info({24, 4})},
  };
  const auto plan = plan_lora("x.safetensors", t, {}, targets());
  EXPECT_EQ(plan.layout, LoraLayout::kKohya);
  ASSERT_EQ(plan.layers.size(), 4u);
  size_t with_alpha = 0;
  for (const auto& l : plan.layers) with_alpha += !l.alpha_key.empty();
  EXPECT_EQ(with_alpha, 1u);
}

TEST(LoraFile, PlansPeftWithAndWithoutTextModelAndReadsAlpha) {
  std::map<std::string, io::TensorInfo> t = {
      {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight",
       info({4, 32}, "F32")},
      {"unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight",
       info({32, 4}, "F32")},
      {"text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight", info({4, 24}, "F32")},
      {"text_encoder.encoder.layers.0.self_attn.q_proj.lora_B.weight", info({24, 4}, "F32")},
  };
  io::Metadata metadata = {{"lora_adapter_metadata",
                            R"({"unet.lora_alpha": 8, "unet.r": 4, "text_encoder.lora_alpha": 2,
                                "text_encoder.use_rslora": true})"}};
  const auto plan = plan_lora("p.safetensors", t, metadata, targets());
  EXPECT_EQ(plan.layout, LoraLayout::kPeft);
  EXPECT_EQ(plan.layers.size(), 2u);
  EXPECT_DOUBLE_EQ(peft_scale(plan.peft_unet, "x", 4), 2.0);
  EXPECT_DOUBLE_EQ(peft_scale(plan.peft_text_encoder, "x", 4), 1.0);  // rsLoRA: 2 / sqrt(4)
  EXPECT_DOUBLE_EQ(peft_scale(PeftSettings{}, "x", 16), 1.0);         // no alpha: alpha = rank
}

TEST(LoraFile, ListsEveryProblemInOneErrorNamingTheFile) {
  std::map<std::string, io::TensorInfo> t = {
      {"lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", info({8, 16, 1, 1})},
      {"lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", info({32, 8, 1, 1})},
      {"lora_unet_no_such_layer.lora_down.weight", info({4, 32})},
      {"lora_unet_down_blocks_0_attentions_0_proj_in.hada_w1_a", info({4, 32})},
      {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight",
       info({2000, 32})},
      {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight",
       info({32, 2000})},
      {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", info({4, 24})},
  };
  try {
    plan_lora("bad.safetensors", t, {}, targets());
    FAIL() << "no error";
  } catch (const LoraFileError& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("bad.safetensors: ", 0), 0u) << m;
    for (const char* part : {"hada_w1_a", "no_such_layer", "conv1.lora_down.weight: factors",
                             "rank 2000", "partner"}) {
      EXPECT_NE(m.find(part), std::string::npos) << part << " missing from: " << m;
    }
  }
}

// SD1.5's layout (two layers per block; up_blocks.0 without attentions), narrowed.
std::vector<TargetLayer> sd15_targets() {
  const auto unet = [](std::string path, bool conv = false, int64_t k = 1) {
    return TargetLayer{LoraComponent::kUNet, std::move(path), conv, 16, 8, k, k};
  };
  return {
      unet("conv_in", true, 3),                                                            // 0
      unet("time_embedding.linear_1"),                                                     // 1
      unet("down_blocks.0.attentions.0.proj_in", true),                                    // 2
      unet("down_blocks.0.resnets.0.time_emb_proj"),                                       // 3
      unet("down_blocks.0.downsamplers.0.conv", true, 3),                                  // 4
      unet("down_blocks.1.resnets.0.conv1", true, 3),                                      // 5
      unet("down_blocks.1.resnets.1.conv_shortcut", true),                                 // 6
      unet("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),                  // 7
      unet("mid_block.attentions.0.proj_out", true),                                       // 8
      unet("mid_block.resnets.1.conv2", true, 3),                                          // 9
      unet("up_blocks.0.upsamplers.0.conv", true, 3),                                      // 10
      unet("up_blocks.1.resnets.0.conv1", true, 3),                                        // 11
      unet("up_blocks.1.attentions.2.transformer_blocks.0.ff.net.2"),                      // 12
      unet("conv_out", true, 3),                                                           // 13
      {LoraComponent::kTextEncoder, "text_model.encoder.layers.0.mlp.fc1", false, 16, 8},  // 14
  };
}

// A kohya layer's three keys (a conv's factors 4-D).
void add_kohya(std::map<std::string, io::TensorInfo>& t, const std::string& stem, bool conv,
               int64_t k = 1) {
  t[stem + ".lora_down.weight"] = conv ? info({2, 8, k, k}) : info({2, 8});
  t[stem + ".lora_up.weight"] = conv ? info({16, 2, 1, 1}) : info({16, 2});
  t[stem + ".alpha"] = info({});
}

TEST(LoraFile, PlansKohyaUNetNamesOfTheOriginalLayout) {
  std::map<std::string, io::TensorInfo> t;
  const std::vector<std::pair<std::string, size_t>> names = {
      {"lora_unet_input_blocks_0_0", 0},
      {"lora_unet_time_embed_0", 1},
      {"lora_unet_input_blocks_1_1_proj_in", 2},
      {"lora_unet_input_blocks_1_0_emb_layers_1", 3},
      {"lora_unet_input_blocks_3_0_op", 4},
      {"lora_unet_input_blocks_4_0_in_layers_2", 5},
      {"lora_unet_input_blocks_5_0_skip_connection", 6},
      {"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q", 7},
      {"lora_unet_middle_block_1_proj_out", 8},
      {"lora_unet_middle_block_2_out_layers_3", 9},
      {"lora_unet_output_blocks_2_1_conv", 10},
      {"lora_unet_output_blocks_3_0_in_layers_2", 11},
      {"lora_unet_output_blocks_5_1_transformer_blocks_0_ff_net_2", 12},
      // A file may mix the namings, one name per layer.
      {"lora_unet_conv_out", 13},
      {"lora_te_text_model_encoder_layers_0_mlp_fc1", 14},
  };
  const auto targets = sd15_targets();
  for (const auto& [stem, index] : names) {
    add_kohya(t, stem, targets[index].conv, targets[index].kernel_h);
  }
  const auto plan = plan_lora("ldm.safetensors", t, {}, targets, 2);
  EXPECT_EQ(plan.layout, LoraLayout::kKohya);
  ASSERT_EQ(plan.layers.size(), names.size());
  std::map<std::string, size_t> planned;
  for (const auto& l : plan.layers) {
    EXPECT_EQ(l.rank, 2);
    EXPECT_EQ(l.alpha_key.substr(0, l.alpha_key.size() - 6) + ".lora_up.weight", l.up_key);
    planned[l.down_key.substr(0, l.down_key.find('.'))] = l.target;
  }
  for (const auto& [stem, index] : names) EXPECT_EQ(planned[stem], index) << stem;

  // Without the U-Net's depth there is no original layout: those names match no layer.
  try {
    plan_lora("ldm.safetensors", t, {}, targets);
    FAIL() << "no error";
  } catch (const LoraFileError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("lora_unet_input_blocks_4_0_in_layers_2.lora_down.weight"), std::string::npos)
        << m;
    EXPECT_EQ(m.find("lora_unet_conv_out"), std::string::npos) << m;
  }
}

TEST(LoraFile, RefusesTwoNamesOfOneLayerNamingBoth) {
  const auto targets = sd15_targets();
  std::map<std::string, io::TensorInfo> t;
  add_kohya(t, "lora_unet_down_blocks_1_resnets_0_conv1", true, 3);
  add_kohya(t, "lora_unet_input_blocks_4_0_in_layers_2", true, 3);  // the same conv1
  add_kohya(t, "lora_unet_mid_block_attentions_0_proj_out", true);
  t["lora_unet_input_blocks_1_1_proj_in.lora_down.weight"] = info({2, 8, 1, 1});
  t["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"] = info({16, 2, 1, 1});
  t["lora_unet_input_blocks_1_2_proj_in.lora_down.weight"] = info({2, 8, 1, 1});  // no layer
  try {
    plan_lora("twice.safetensors", t, {}, targets, 2);
    FAIL() << "no error";
  } catch (const LoraFileError& e) {
    const std::string m = e.what();
    EXPECT_EQ(m.rfind("twice.safetensors: ", 0), 0u) << m;
    for (const char* part :
         {"keys lora_unet_down_blocks_1_resnets_0_conv1.alpha and "
          "lora_unet_input_blocks_4_0_in_layers_2.alpha name the same layer (unet "
          "down_blocks.1.resnets.0.conv1)",
          "keys lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight and "
          "lora_unet_input_blocks_1_1_proj_in.lora_down.weight name the same layer",
          "1 keys naming no Linear or Conv2d layer", "lora_unet_input_blocks_1_2_proj_in"}) {
      EXPECT_NE(m.find(part), std::string::npos) << part << " missing from: " << m;
    }
    EXPECT_EQ(m.find("mid_block"), std::string::npos) << m;
  }
}

TEST(LoraFile, RefusesFilesThatAreNoLora) {
  EXPECT_THROW(plan_lora("w.safetensors", {{"conv_in.weight", info({4, 4, 3, 3})}}, {}, targets()),
               LoraFileError);
  std::map<std::string, io::TensorInfo> mixed = {
      {"lora_unet_a.lora_down.weight", info({1, 1})},
      {"unet.a.lora_A.weight", info({1, 1})},
  };
  EXPECT_THROW(plan_lora("m.safetensors", mixed, {}, targets()), LoraFileError);
  std::map<std::string, io::TensorInfo> ints = {
      {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight",
       info({4, 24}, "I32")},
      {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight", info({24, 4})},
  };
  EXPECT_THROW(plan_lora("i.safetensors", ints, {}, targets()), LoraFileError);
  const io::Metadata bad_json = {{"lora_adapter_metadata", "{not json"}};
  std::map<std::string, io::TensorInfo> peft = {
      {"text_encoder.encoder.layers.0.self_attn.q_proj.lora_A.weight", info({4, 24})},
      {"text_encoder.encoder.layers.0.self_attn.q_proj.lora_B.weight", info({24, 4})},
  };
  EXPECT_THROW(plan_lora("j.safetensors", peft, bad_json, targets()), LoraFileError);
}

}  // namespace
}  // namespace ldcp::lora
