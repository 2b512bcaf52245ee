#pragma once
// Reads a single-file checkpoint in the original CompVis / A1111 layout into the U-Net, VAE and
// CLIP text encoder modules, with the key names that original_checkpoint.h maps. The file is
// untrusted: it is refused when it is a pickle (by name or by its first bytes), the safetensors
// reader validates its header before any tensor is touched, every key and shape is checked
// against the modules before anything is read (so no size from the file decides an allocation),
// and errors name the file with short, escaped key prefixes.

#include <cstddef>
#include <filesystem>

#include <torch/nn/module.h>

#include "model/io/original_checkpoint.h"
#include "model/io/weights.h"

namespace ldcp::io {

struct OriginalCheckpointModules {
  torch::nn::Module* unet = nullptr;
  torch::nn::Module* vae = nullptr;
  torch::nn::Module* text_model = nullptr;  // the CLIP text encoder's text_model
};

struct OriginalCheckpointSummary {
  size_t tensors = 0;         // read into the modules
  size_t ignored = 0;         // EMA copy, schedule buffers, position_ids
  bool has_ema_copy = false;  // a full file: its model_ema.* weights were not used
  bool old_clip_layout = false;
};

// Throws OriginalCheckpointError (pickle files; missing, unexpected and shape-mismatched keys
// of all three parts in one message; two keys for one weight) or SafetensorsError, naming
// `file`. `architecture` says where the modules' configs came from, for that message. Each
// tensor is converted to the module's dtype (options.dtype) while it is read, through one
// staging buffer; options.channels_last applies to 4-D tensors (the convolutions).
OriginalCheckpointSummary load_original_checkpoint(const std::filesystem::path& file,
                                                   const OriginalLayout& layout,
                                                   const OriginalCheckpointModules& modules,
                                                   const LoadOptions& options,
                                                   const std::string& architecture);

// Throws OriginalCheckpointError when `file` is a pickle checkpoint (by name, or by its first
// bytes when it can be read); original_checkpoint.h's pickle_refusal.
void refuse_pickle_checkpoint(const std::filesystem::path& file);

}  // namespace ldcp::io
