#pragma once
// Loading diffusers/transformers component folders into libtorch modules. Modules register
// their submodules under the reference's names, so a checkpoint's keys equal
// module.named_parameters() (plus buffers): no conversion table, except the VAE's legacy
// attention names, which are renamed here and nowhere else.

#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/nn/module.h>

#include "model/io/safetensors.h"

namespace ldcp::io {

class WeightLoadError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct LoadOptions {
  bool prefer_fp16 = false;  // take "<name>.fp16.safetensors" when both variants exist
  // Checkpoint keys that may be present without a matching parameter (e.g. transformers'
  // "text_model.embeddings.position_ids" buffer); matched as exact names.
  std::vector<std::string> ignored_unexpected;
};

// The safetensors weight file of a component folder: diffusion_pytorch_model.safetensors
// (diffusers) or model.safetensors (transformers), or its .fp16 variant. Throws
// WeightLoadError naming the folder when there is none.
std::filesystem::path find_weight_file(const std::filesystem::path& component_dir,
                                       bool prefer_fp16 = false);

// Renames the VAE's legacy attention keys (query, key, value, proj_attn) to the current ones
// (to_q, to_k, to_v, to_out.0); other keys pass through unchanged.
TensorMap rename_legacy_vae_keys(TensorMap tensors);

// Copies `tensors` into the module's parameters and buffers, converting to each one's dtype
// and device. Strict: all missing, unexpected and shape-mismatched keys are listed in one
// WeightLoadError that names `source`.
void load_state_dict(torch::nn::Module& module, const TensorMap& tensors, const std::string& source,
                     const LoadOptions& options = {});

// find_weight_file + load_safetensors + rename_legacy_vae_keys + load_state_dict.
void load_component(torch::nn::Module& module, const std::filesystem::path& component_dir,
                    const LoadOptions& options = {});

}  // namespace ldcp::io
