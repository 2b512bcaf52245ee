// The key names of original-layout (CompVis / A1111) single-file checkpoints, without libtorch:
// SD1.5's block layout, the VAE's and CLIP's names, ignored keys, duplicates, hostile names, the
// pickle refusal; the original-layout paths of the diffusers U-Net modules.

#include "model/io/original_checkpoint.h"

#include <gtest/gtest.h>

namespace ldcp::io {
namespace {

OriginalTarget mapped(const std::string& key, const OriginalLayout& layout = {}) {
  const auto result = map_original_key(key, layout);
  EXPECT_EQ(result.kind, OriginalKeyKind::kTensor) << key;
  return result.target;
}

void expect_unet(const std::string& key, const std::string& name) {
  const auto target = mapped("model.diffusion_model." + key);
  EXPECT_EQ(target.part, OriginalPart::kUNet) << key;
  EXPECT_EQ(target.name, name) << key;
  EXPECT_FALSE(target.conv_to_linear) << key;
}

void expect_vae(const std::string& key, const std::string& name, bool conv_to_linear = false) {
  const auto target = mapped("first_stage_model." + key);
  EXPECT_EQ(target.part, OriginalPart::kVae) << key;
  EXPECT_EQ(target.name, name) << key;
  EXPECT_EQ(target.conv_to_linear, conv_to_linear) << key;
}

OriginalKeyKind kind_of(const std::string& key, const OriginalLayout& layout = {}) {
  return map_original_key(key, layout).kind;
}

TEST(OriginalCheckpoint, UNetBlocksOfSd15) {
  expect_unet("time_embed.0.weight", "time_embedding.linear_1.weight");
  expect_unet("time_embed.2.bias", "time_embedding.linear_2.bias");
  expect_unet("input_blocks.0.0.weight", "conv_in.weight");
  expect_unet("out.0.weight", "conv_norm_out.weight");
  expect_unet("out.2.bias", "conv_out.bias");
  expect_unet("input_blocks.1.0.in_layers.0.weight", "down_blocks.0.resnets.0.norm1.weight");
  expect_unet("input_blocks.2.0.in_layers.2.bias", "down_blocks.0.resnets.1.conv1.bias");
  expect_unet("input_blocks.1.1.proj_in.weight", "down_blocks.0.attentions.0.proj_in.weight");
  expect_unet("input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight",
              "down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight");
  expect_unet("input_blocks.3.0.op.weight", "down_blocks.0.downsamplers.0.conv.weight");
  expect_unet("input_blocks.4.0.skip_connection.weight",
              "down_blocks.1.resnets.0.conv_shortcut.weight");
  expect_unet("input_blocks.5.1.transformer_blocks.0.ff.net.0.proj.weight",
              "down_blocks.1.attentions.1.transformer_blocks.0.ff.net.0.proj.weight");
  expect_unet("input_blocks.9.0.op.bias", "down_blocks.2.downsamplers.0.conv.bias");
  expect_unet("input_blocks.11.0.emb_layers.1.weight",
              "down_blocks.3.resnets.1.time_emb_proj.weight");
  expect_unet("middle_block.0.out_layers.3.weight", "mid_block.resnets.0.conv2.weight");
  expect_unet("middle_block.1.norm.bias", "mid_block.attentions.0.norm.bias");
  expect_unet("middle_block.2.out_layers.0.bias", "mid_block.resnets.1.norm2.bias");
  expect_unet("output_blocks.0.0.in_layers.0.weight", "up_blocks.0.resnets.0.norm1.weight");
  expect_unet("output_blocks.2.1.conv.weight", "up_blocks.0.upsamplers.0.conv.weight");
  expect_unet("output_blocks.3.1.proj_out.bias", "up_blocks.1.attentions.0.proj_out.bias");
  expect_unet("output_blocks.5.2.conv.bias", "up_blocks.1.upsamplers.0.conv.bias");
  expect_unet("output_blocks.5.1.transformer_blocks.0.norm3.weight",
              "up_blocks.1.attentions.2.transformer_blocks.0.norm3.weight");
  expect_unet("output_blocks.11.0.skip_connection.bias",
              "up_blocks.3.resnets.2.conv_shortcut.bias");
}

TEST(OriginalCheckpoint, UNetBlocksFollowLayersPerBlock) {
  const OriginalLayout one{1, 4};  // tiny-a: one layer per block
  EXPECT_EQ(mapped("model.diffusion_model.input_blocks.2.0.op.weight", one).name,
            "down_blocks.0.downsamplers.0.conv.weight");
  EXPECT_EQ(mapped("model.diffusion_model.input_blocks.3.1.norm.weight", one).name,
            "down_blocks.1.attentions.0.norm.weight");
  EXPECT_EQ(mapped("model.diffusion_model.output_blocks.1.1.conv.weight", one).name,
            "up_blocks.0.upsamplers.0.conv.weight");
  EXPECT_EQ(mapped("model.diffusion_model.output_blocks.3.2.conv.weight", one).name,
            "up_blocks.1.upsamplers.0.conv.weight");
  // A downsampler or upsampler anywhere but a block's last layer is no weight of the layout.
  EXPECT_EQ(kind_of("model.diffusion_model.input_blocks.1.0.op.weight", one),
            OriginalKeyKind::kUnknown);
  EXPECT_EQ(kind_of("model.diffusion_model.output_blocks.0.1.conv.weight", one),
            OriginalKeyKind::kUnknown);
  EXPECT_EQ(kind_of("model.diffusion_model.input_blocks.1.0.in_layers.1.weight", one),
            OriginalKeyKind::kUnknown);
}

TEST(OriginalCheckpoint, VaeNames) {
  expect_vae("encoder.conv_in.weight", "encoder.conv_in.weight");
  expect_vae("decoder.norm_out.bias", "decoder.conv_norm_out.bias");
  expect_vae("quant_conv.weight", "quant_conv.weight");
  expect_vae("post_quant_conv.bias", "post_quant_conv.bias");
  expect_vae("encoder.down.1.block.0.nin_shortcut.weight",
             "encoder.down_blocks.1.resnets.0.conv_shortcut.weight");
  expect_vae("encoder.down.2.downsample.conv.weight",
             "encoder.down_blocks.2.downsamplers.0.conv.weight");
  expect_vae("encoder.mid.block_1.norm1.weight", "encoder.mid_block.resnets.0.norm1.weight");
  expect_vae("decoder.mid.block_2.conv2.bias", "decoder.mid_block.resnets.1.conv2.bias");
  // The decoder's up.i is diffusers' up_blocks.(N-1-i).
  expect_vae("decoder.up.3.block.2.conv1.weight", "decoder.up_blocks.0.resnets.2.conv1.weight");
  expect_vae("decoder.up.0.block.0.nin_shortcut.bias",
             "decoder.up_blocks.3.resnets.0.conv_shortcut.bias");
  expect_vae("decoder.up.1.upsample.conv.weight", "decoder.up_blocks.2.upsamplers.0.conv.weight");
  // Mid attention: q/k/v/proj_out are 1x1 convolutions of linear layers; biases and the norm
  // keep their shape.
  expect_vae("encoder.mid.attn_1.norm.weight", "encoder.mid_block.attentions.0.group_norm.weight");
  expect_vae("encoder.mid.attn_1.q.weight", "encoder.mid_block.attentions.0.to_q.weight", true);
  expect_vae("decoder.mid.attn_1.k.weight", "decoder.mid_block.attentions.0.to_k.weight", true);
  expect_vae("decoder.mid.attn_1.v.bias", "decoder.mid_block.attentions.0.to_v.bias");
  expect_vae("decoder.mid.attn_1.proj_out.weight", "decoder.mid_block.attentions.0.to_out.0.weight",
             true);
  EXPECT_EQ(kind_of("first_stage_model.decoder.up.4.block.0.conv1.weight"),
            OriginalKeyKind::kUnknown);  // SD1.5's VAE has 4 blocks
  EXPECT_EQ(kind_of("first_stage_model.encoder.mid.attn_1.proj_in.weight"),
            OriginalKeyKind::kUnknown);
}

TEST(OriginalCheckpoint, TextEncoderBothLayouts) {
  const auto with =
      mapped("cond_stage_model.transformer.text_model.encoder.layers.3.mlp.fc1.weight");
  EXPECT_EQ(with.part, OriginalPart::kTextEncoder);
  EXPECT_EQ(with.name, "encoder.layers.3.mlp.fc1.weight");
  const auto without = mapped("cond_stage_model.transformer.final_layer_norm.bias");
  EXPECT_EQ(without.name, "final_layer_norm.bias");
  EXPECT_EQ(kind_of("cond_stage_model.transformer.text_model.embeddings.position_ids"),
            OriginalKeyKind::kIgnored);
  EXPECT_EQ(kind_of("cond_stage_model.transformer.embeddings.position_ids"),
            OriginalKeyKind::kIgnored);

  const auto old = map_original_keys(
      {"cond_stage_model.transformer.embeddings.token_embedding.weight"}, {}, "f");
  EXPECT_TRUE(old.old_clip_layout);
  // One weight under both spellings: refused, naming both keys and the file.
  try {
    map_original_keys({"cond_stage_model.transformer.text_model.final_layer_norm.weight",
                       "cond_stage_model.transformer.final_layer_norm.weight"},
                      {}, "model.safetensors");
    FAIL() << "no error";
  } catch (const OriginalCheckpointError& e) {
    const std::string message = e.what();
    EXPECT_NE(message.find("model.safetensors"), std::string::npos) << message;
    EXPECT_NE(message.find("text_model.final_layer_norm.weight"), std::string::npos) << message;
    EXPECT_NE(message.find("both map to"), std::string::npos) << message;
  }
}

TEST(OriginalCheckpoint, EmaCopyAndScheduleBuffersAreIgnored) {
  const auto map = map_original_keys(
      {"model.diffusion_model.out.2.weight", "model_ema.diffusion_modelout2weight",
       "model_ema.decay", "model_ema.num_updates", "alphas_cumprod", "betas",
       "posterior_mean_coef2", "lvlb_weights"},
      {}, "f");
  EXPECT_EQ(map.tensors.size(), 1u);
  EXPECT_TRUE(map.has_ema_copy);
  EXPECT_EQ(map.ignored.size(), 6u);
  ASSERT_EQ(map.unknown.size(), 1u);  // not a schedule buffer that checkpoints save
  EXPECT_EQ(map.unknown[0], "lvlb_weights");
  // An EMA-only file carries the counters alone.
  EXPECT_FALSE(
      map_original_keys({"model_ema.decay", "model_ema.num_updates"}, {}, "f").has_ema_copy);
}

TEST(OriginalCheckpoint, HostileNamesAreUnknown) {
  for (const std::string& key : std::vector<std::string>{
           "model.diffusion_model.input_blocks.01.0.op.weight",  // leading zero: one spelling
           "model.diffusion_model.input_blocks.99999999999999999999.0.op.weight",
           "model.diffusion_model.input_blocks.-1.0.op.weight",
           "model.diffusion_model.input_blocks..0.op.weight",
           "model.diffusion_model.input_blocks.4.1.",
           "model.diffusion_model.input_blocks.4.1..weight",
           "model.diffusion_model.input_blocks.4.1.transformer blocks.weight",
           "model.diffusion_model.",
           "model.diffusion_model.out.0.weight.extra",
           std::string("model.diffusion_model.middle_block.1.norm.we\0ight", 49),
           "first_stage_model.decoder.up.1000000.block.0.conv1.weight",
           "cond_stage_model.transformer.",
           "cond_stage_model.transformer.text_model.",
           "text_model.final_layer_norm.weight",
           "",
       }) {
    EXPECT_EQ(kind_of(key), OriginalKeyKind::kUnknown) << short_key(key);
  }
  EXPECT_THROW(map_original_keys({}, {0, 4}, "f"), OriginalCheckpointError);
  EXPECT_THROW(map_original_keys({}, {2, 1000}, "f"), OriginalCheckpointError);
}

TEST(OriginalCheckpoint, ErrorTextIsShortAndEscaped) {
  EXPECT_EQ(short_key("abc"), "abc");
  EXPECT_EQ(short_key(std::string("a\x01\"b\xff", 5)), "a\\x01\\x22b\\xff");
  const std::string long_key(10000, 'k');
  const auto cut = short_key(long_key);
  EXPECT_LE(cut.size(), 96u + 3);
  EXPECT_EQ(cut.substr(cut.size() - 3), "...");
  std::vector<std::string> items;
  for (int i = 0; i < 50; ++i) items.push_back("k" + std::to_string(i));
  const auto list = key_list("unexpected keys", items);
  EXPECT_EQ(list.rfind("50 unexpected keys: k0, k1", 0), 0u) << list;
  EXPECT_NE(list.find("k19, and 30 more"), std::string::npos) << list;
  EXPECT_EQ(list.find("k20"), std::string::npos) << list;
}

TEST(OriginalCheckpoint, PickleFilesAreRefused) {
  for (const char* name : {"model.ckpt", "model.CKPT", "x/model.pt", "model.pth", "model.bin"}) {
    const auto refusal = pickle_refusal(name);
    ASSERT_TRUE(refusal.has_value()) << name;
    EXPECT_EQ(refusal->rfind(name, 0), 0u) << *refusal;  // names the file
    EXPECT_NE(refusal->find("runs whatever code"), std::string::npos) << *refusal;
    EXPECT_NE(refusal->find("weights_only=True"), std::string::npos) << *refusal;
    EXPECT_NE(refusal->find("save_file"), std::string::npos) << *refusal;
  }
  EXPECT_FALSE(pickle_refusal("model.safetensors").has_value());
  // By content: a torch.save zip archive or a bare pickle under a .safetensors name.
  EXPECT_TRUE(pickle_refusal("m.safetensors", std::string("PK\x03\x04\x00\x00\x00\x00\x08", 9))
                  .has_value());
  EXPECT_TRUE(pickle_refusal("m.safetensors", std::string("\x80\x02\x8a\x0a", 4)).has_value());
  // A safetensors header length whose low bytes look like a pickle opcode is still safetensors:
  // its JSON header starts at byte 8.
  EXPECT_FALSE(pickle_refusal("m.safetensors", std::string("\x80\x02\0\0\0\0\0\0{\"", 10)));
}

// The other direction, for LoRA files' kohya names (model/lora/lora_file.h).
TEST(OriginalCheckpoint, UNetModulesOfTheOriginalLayoutFollowTheKeyMapping) {
  OriginalLayout sd15;  // two layers per block
  using Paths = std::vector<std::string>;
  EXPECT_EQ(original_unet_modules("down_blocks.1.resnets.0.conv1", sd15),
            Paths{"input_blocks.4.0.in_layers.2"});
  EXPECT_EQ(original_unet_modules("up_blocks.3.attentions.2.proj_out", sd15),
            Paths{"output_blocks.11.1.proj_out"});
  EXPECT_EQ(original_unet_modules("up_blocks.0.upsamplers.0.conv", sd15),
            (Paths{"output_blocks.2.1.conv", "output_blocks.2.2.conv"}));
  EXPECT_EQ(original_unet_modules("down_blocks.2.downsamplers.0.conv", sd15),
            Paths{"input_blocks.9.0.op"});
  EXPECT_EQ(original_unet_modules("time_embedding.linear_2", sd15), Paths{"time_embed.2"});
  EXPECT_EQ(original_unet_modules("mid_block.resnets.1.conv_shortcut", sd15),
            Paths{"middle_block.2.skip_connection"});
  // Not in the layout: a third ResNet in a two-layer block, a second mid attention.
  EXPECT_TRUE(original_unet_modules("down_blocks.0.resnets.2.conv1", sd15).empty());
  EXPECT_TRUE(original_unet_modules("mid_block.attentions.1.proj_in", sd15).empty());
  // One layer per block (tiny-a): down block 1 starts at input block 3.
  OriginalLayout one;
  one.unet_layers_per_block = 1;
  EXPECT_EQ(original_unet_modules("down_blocks.1.resnets.0.conv2", one),
            Paths{"input_blocks.3.0.out_layers.3"});
  // Each candidate maps back onto the module's weight.
  const auto paths = original_unet_modules("up_blocks.1.resnets.2.conv1", sd15);
  EXPECT_EQ(paths, Paths{"output_blocks.5.0.in_layers.2"});
  for (const auto& path : paths) {
    const auto key = map_original_key("model.diffusion_model." + path + ".weight", sd15);
    EXPECT_EQ(key.target.name, "up_blocks.1.resnets.2.conv1.weight") << path;
  }
}

}  // namespace
}  // namespace ldcp::io
