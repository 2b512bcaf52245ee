#pragma once
// Key names of Stable Diffusion 1.x single-file checkpoints in the original CompVis / A1111
// layout (what `v1-5-pruned-emaonly.safetensors` holds), mapped onto the modules' names (the
// diffusers / transformers layout). This is the one place where those names are converted; it
// needs no libtorch (the fuzz build links it alone), and original_checkpoint_loader.h reads the
// tensors.
//
// Written from the published layout (CompVis' ldm UNetModel / AutoencoderKL module tree and the
// mapping diffusers' from_single_file applies), not from its code:
//   model.diffusion_model.*          the U-Net: time_embed.{0,2} -> time_embedding.linear_{1,2},
//       input_blocks.0.0 -> conv_in, out.{0,2} -> conv_norm_out / conv_out; input_blocks.i
//       (i >= 1) -> down block (i-1) / (L+1), layer (i-1) % (L+1) (L: layers per block), whose
//       .0 is a ResNet (or, in the last layer, .0.op the downsampler) and .1 the attention;
//       middle_block.{0,1,2} -> mid_block.resnets.0, attentions.0, resnets.1; output_blocks.i ->
//       up block i / (L+1), layer i % (L+1): .0 ResNet, .1 attention, .1.conv / .2.conv the
//       upsampler. ResNets: in_layers.{0,2} -> norm1/conv1, emb_layers.1 -> time_emb_proj,
//       out_layers.{0,3} -> norm2/conv2, skip_connection -> conv_shortcut. Attentions keep
//       their inner names.
//   first_stage_model.*              the VAE: norm_out -> conv_norm_out; encoder.down.i.block.j
//       -> encoder.down_blocks.i.resnets.j, .downsample.conv -> .downsamplers.0.conv;
//       decoder.up.i -> decoder.up_blocks.(N-1-i) (N: VAE blocks), .upsample.conv ->
//       .upsamplers.0.conv; mid.block_{1,2} -> mid_block.resnets.{0,1}; mid.attn_1.{norm,q,k,v,
//       proj_out} -> mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}, whose weights
//       are stored as 1x1 convolution kernels [C, C, 1, 1] for linear layers [C, C];
//       nin_shortcut -> conv_shortcut.
//   cond_stage_model.transformer.*   the CLIP text encoder in transformers' layout, with or
//       without the "text_model." level (older files lack it): mapped relative to the
//       text_model module; embeddings.position_ids is ignored.
// A full (training) file also holds model_ema.*: the EMA copy of the U-Net, under flattened
// names. Like diffusers' from_single_file (extract_ema=False, its default), the non-EMA
// model.diffusion_model.* weights are used and model_ema.* is ignored. (An EMA-only file, such
// as v1-5-pruned-emaonly, stores the EMA weights as model.diffusion_model.*.) The diffusion
// schedule's buffers (betas, alphas_cumprod, ...) are ignored too: the scheduler config
// decides the schedule. Every other key is unexpected.

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace ldcp::io {

class OriginalCheckpointError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

enum class OriginalPart { kUNet, kVae, kTextEncoder };
const char* original_part_name(OriginalPart part);  // "unet", "vae", "text_encoder"

// What the mapping needs of the architecture (from the component configs).
struct OriginalLayout {
  int64_t unet_layers_per_block = 2;  // SD1.5's
  int64_t vae_blocks = 4;             // len(block_out_channels) of the VAE
};

// Where one checkpoint tensor goes.
struct OriginalTarget {
  OriginalPart part = OriginalPart::kUNet;
  std::string name;  // the module's parameter name (the text encoder's: within text_model)
  // A linear weight [C, C] that the file may store as a 1x1 convolution kernel [C, C, 1, 1]
  // (or [C, C, 1]): the VAE's mid-block attention.
  bool conv_to_linear = false;
};

enum class OriginalKeyKind { kTensor, kIgnored, kUnknown };

struct OriginalKey {
  OriginalKeyKind kind = OriginalKeyKind::kUnknown;
  OriginalTarget target;  // kTensor only
};

// One checkpoint key.
OriginalKey map_original_key(const std::string& key, const OriginalLayout& layout);

// The original-layout paths (within model.diffusion_model., e.g. "input_blocks.1.0.in_layers.2")
// of the diffusers U-Net module `module_path` (e.g. "down_blocks.0.resnets.0.conv1"): those
// that map_original_key maps onto its ".weight". None for a module the layout does not name or
// an unsupported layout; two for an up block's upsampler (".1.conv" after a ResNet, ".2.conv"
// after an attention, both of which map_original_key reads). LoRA files name layers this way
// (model/lora/lora_file.h).
std::vector<std::string> original_unet_modules(const std::string& module_path,
                                               const OriginalLayout& layout);

struct OriginalKeyMap {
  std::map<std::string, OriginalTarget> tensors;  // checkpoint key -> target
  std::vector<std::string> ignored;               // EMA copy, schedule buffers, position_ids
  std::vector<std::string> unknown;               // keys of no part the pipeline loads
  bool has_ema_copy = false;     // model_ema.* weights present (a full file): not used
  bool old_clip_layout = false;  // text encoder keys without "text_model."
};

// Every key of a file. Throws OriginalCheckpointError naming `source` when two keys map to one
// target (e.g. a text encoder key with and without "text_model.").
OriginalKeyMap map_original_keys(const std::vector<std::string>& keys, const OriginalLayout& layout,
                                 const std::string& source);

// A key (or other untrusted text) for an error message: at most `max_chars` bytes, non-printable
// bytes as \xNN, "..." when cut.
std::string short_key(const std::string& key, size_t max_chars = 96);

// "N what: a, b, c" with at most `max_items` items, then "and M more".
std::string key_list(const std::string& what, const std::vector<std::string>& items,
                     size_t max_items = 20);

// Pickle-based checkpoints (.ckpt, .pt, .pth, .bin) are refused: loading one runs whatever code
// it holds. Returns the refusal message naming `path` (with how to convert the file to
// safetensors), or nullopt for other names. `first_bytes` (the file's first few bytes, if read)
// also catches a pickle or torch zip archive under another name.
std::optional<std::string> pickle_refusal(const std::filesystem::path& path,
                                          const std::string& first_bytes = {});

}  // namespace ldcp::io
