// The LoRA key layouts and shape checks (model/lora/lora_file.h), on headers made here.
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

TEST(LoraFile, RefusesFilesThatAreNoLora) {
  EXPECT_THROW(plan_lora("w.safetensors", {{"conv_in.weight", info({4, 4, 3, 3})}}, {}, targets()),
               LoraFileError);
  std::map<std::string, io::TensorInfo> mixed = {
      {"lora_unet_a.lora_down.weight", info({1, 1})},
      {"unet.a.lora_A.weight", info({1, 1})},
  };
  EXPECT_THROW(plan_lora("m.safetensors", mixed, {}, targets()), LoraFileError);
  std::map<std::string, io::TensorInfo> ints = {
      {"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight", info({4, 24}, "I32")},
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
