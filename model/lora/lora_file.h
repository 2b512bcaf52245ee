#pragma once
// A LoRA file's tensor names, read without libtorch: which layout it is in, which layer each
// pair of factors belongs to, and whether every shape fits that layer. Every byte of the file
// is untrusted, so planning happens on the (already bounded, model/io/safetensors_header.h)
// header alone, before any tensor is read; a fuzz target (tests/fuzz) drives it.
//
// Two layouts, as diffusers' load_lora_weights reads them for SD1.5:
// - kohya / A1111 (sd-scripts, LyCORIS' LoCon): "lora_unet_<path>" and "lora_te_<path>", where
//   <path> is the layer's diffusers (U-Net) or transformers (CLIPTextModel) module path with
//   every "." written "_"; then ".lora_down.weight" [rank, in(, kh, kw)], ".lora_up.weight"
//   [out, rank(, 1, 1)] and optionally ".alpha" (a scalar; scale alpha / rank). A layer without
//   one takes, as diffusers does, the most common alpha of its component's layers (the rank,
//   scale 1, when none has one; kohya's and A1111's own code use the rank in both cases).
//   A U-Net <path> may also be the layer's path in the original LDM / SGM module tree (what
//   ComfyUI, LyCORIS and newer trainers save: "lora_unet_input_blocks_1_0_in_layers_2",
//   "lora_unet_middle_block_1_proj_in", "lora_unet_time_embed_0"), as the single-file
//   checkpoint mapping names it (io::original_unet_modules, model/io/original_checkpoint.h).
//   One file may use both namings, one name per layer: two keys of one layer are refused.
// - diffusers / PEFT (save_lora_weights): "unet.<path>.lora_A.weight" and ".lora_B.weight",
//   "text_encoder.<path>...". The scale is lora_alpha / rank, lora_alpha from the file's
//   "lora_adapter_metadata" (diffusers writes "unet.lora_alpha", "text_encoder.lora_alpha", ...)
//   and the rank when there is none (diffusers' convention: scale 1).
// Text encoder names may leave out transformers 4's "text_model." level (transformers 5 has
// none: "lora_te_encoder_layers_0_...", "text_encoder.encoder.layers.0...").
// Convolutions (LoCon): the down factor has the layer's kernel, stride and padding, the up
// factor is 1x1; a 1x1 convolution's factors may also be stored as matrices.

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/io/safetensors_header.h"

namespace ldcp::lora {

class LoraFileError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class LoraLayout { kKohya, kPeft };
enum class LoraComponent { kUNet, kTextEncoder };

std::string layout_name(LoraLayout layout);           // "kohya", "peft"
std::string component_name(LoraComponent component);  // "unet", "text_encoder"

// The most factors a LoRA may have per layer (trained SD1.5 LoRAs use 4..256).
inline constexpr int64_t kMaxLoraRank = 1024;

// A layer a LoRA may adapt: a Linear ([out, in] weight) or a Conv2d ([out, in, kh, kw]).
struct TargetLayer {
  LoraComponent component = LoraComponent::kUNet;
  std::string
      path;  // module path, e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
  bool conv = false;
  int64_t out = 0, in = 0, kernel_h = 1, kernel_w = 1;
};

// The kohya name of a layer: "lora_unet_" or "lora_te_" and its path with "." written "_".
std::string kohya_name(LoraComponent component, const std::string& path);

// One adapted layer: the keys of its factors in the file.
struct LayerPlan {
  size_t target = 0;  // index into the targets planned against
  std::string down_key, up_key;
  std::string alpha_key;  // kohya's ".alpha", empty when absent
  int64_t rank = 0;
};

// PEFT's adapter settings for one component, from "lora_adapter_metadata".
struct PeftSettings {
  bool has_alpha = false;
  double lora_alpha = 0;
  bool use_rslora = false;                      // scale alpha / sqrt(rank)
  std::map<std::string, double> alpha_pattern;  // module name (or path suffix) -> alpha
};

struct LoraPlan {
  LoraLayout layout = LoraLayout::kKohya;
  std::vector<LayerPlan> layers;              // in file key order
  PeftSettings peft_unet, peft_text_encoder;  // PEFT only
};

// Plans `tensors` (a header's, name -> info) onto `targets`: detects the layout, matches every
// key to a layer and checks every shape and dtype (floating point; ranks 1..kMaxLoraRank; the
// layer's in/out widths and kernel). Throws LoraFileError "FILE: ..." listing every unknown or
// unmatched key, every layer named twice and every mismatch together.
// `unet_layers_per_block`: the U-Net's (every block's) layers per block, which numbers the
// original layout's blocks; 0 when the blocks differ (no original-layout names are read).
LoraPlan plan_lora(const std::string& file, const std::map<std::string, io::TensorInfo>& tensors,
                   const io::Metadata& metadata, const std::vector<TargetLayer>& targets,
                   int64_t unet_layers_per_block = 0);

// The alpha PEFT's settings give the layer at `path` (alpha_pattern: an exact key, or a key the
// path ends with after a "."), else lora_alpha, else `rank`; and the resulting scale.
double peft_scale(const PeftSettings& settings, const std::string& path, int64_t rank);

}  // namespace ldcp::lora
