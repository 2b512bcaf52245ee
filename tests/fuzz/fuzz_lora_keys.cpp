// libFuzzer target: a LoRA file's header (model/lora/lora_file.h) on untrusted bytes. The input
// is a whole safetensors file; its validated header is planned onto a fixed set of layers (a
// linear, a 3x3 and a 1x1 convolution, a text encoder linear; U-Net names in the diffusers and
// the original layout). Planning must never crash, must throw LoraFileError naming the file or
// give layers whose factors fit their target, and PEFT scales must be finite and positive.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "model/io/safetensors_header.h"
#include "model/lora/lora_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ldcp;
  static const std::vector<lora::TargetLayer> targets = {
      {lora::LoraComponent::kUNet, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
       false, 32, 32},
      {lora::LoraComponent::kUNet, "down_blocks.0.resnets.0.conv1", true, 32, 16, 3, 3},
      {lora::LoraComponent::kUNet, "mid_block.attentions.0.proj_in", true, 32, 32, 1, 1},
      {lora::LoraComponent::kTextEncoder, "text_model.encoder.layers.0.mlp.fc1", false, 96, 24},
  };
  io::SafetensorsHeader header;
  try {
    header = io::parse_safetensors_bytes("fuzz.safetensors",
                                         std::string(reinterpret_cast<const char*>(data), size));
  } catch (const io::SafetensorsError&) {
    return 0;
  }
  try {
    // Two layers per block: kohya names in the original layout too (input_blocks_1_0_...).
    const auto plan =
        lora::plan_lora("fuzz.safetensors", header.tensors, header.metadata, targets, 2);
    if (plan.layers.empty()) std::abort();
    for (const auto& layer : plan.layers) {
      if (layer.target >= targets.size()) std::abort();
      if (layer.rank < 1 || layer.rank > lora::kMaxLoraRank) std::abort();
      const auto& down = header.tensors.at(layer.down_key).shape;
      const auto& up = header.tensors.at(layer.up_key).shape;
      if (down.empty() || down[0] != layer.rank || up.size() < 2 || up[1] != layer.rank) {
        std::abort();
      }
      if (up[0] != targets[layer.target].out || down[1] != targets[layer.target].in) std::abort();
      for (const auto* settings : {&plan.peft_unet, &plan.peft_text_encoder}) {
        const double scale = lora::peft_scale(*settings, targets[layer.target].path, layer.rank);
        if (!std::isfinite(scale) || scale <= 0) std::abort();
      }
    }
  } catch (const lora::LoraFileError& e) {
    if (std::string(e.what()).rfind("fuzz.safetensors: ", 0) != 0) std::abort();
  }
  return 0;
}
