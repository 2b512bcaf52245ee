#pragma once
// Loading diffusers/transformers component folders into libtorch modules. Modules register
// their submodules under the reference's names, so a checkpoint's keys equal
// module.named_parameters() (plus buffers): no conversion table, except the VAE's legacy
// attention names, which are renamed here and nowhere else.

#include <filesystem>
#include <functional>
#include <map>
#include <optional>
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
  // Module parameters or buffers that may be absent from the checkpoint (they keep the values
  // the module initialised them with); matched as exact names.
  std::vector<std::string> ignored_missing;
  // Store 4-D weights (convolution kernels) channels-last (NHWC), so that oneDNN (CPU) and
  // cuDNN run the convolutions without converting layouts: as Python's
  // module.to(memory_format=torch.channels_last), done while reading, without a second copy.
  bool channels_last = false;
  // The dtype of the module's floating-point tensors, reached while reading: each tensor is
  // converted as it is read (through the staging buffer), and the loaders build the module's
  // layers in it, so a bf16 run never holds the checkpoint's fp32 weights (max RSS is the
  // weights in this dtype plus one staging tensor). Unset: the module's own dtype.
  std::optional<c10::ScalarType> dtype;
};

// The safetensors weight file of a component folder: diffusion_pytorch_model.safetensors
// (diffusers) or model.safetensors (transformers), or its .fp16 variant (taken when it is the
// only one, or when prefer_fp16), or a sharded checkpoint's "<name>.safetensors.index.json"
// ("<name>.safetensors.index.fp16.json"). Throws WeightLoadError naming the folder when there
// is none.
std::filesystem::path find_weight_file(const std::filesystem::path& component_dir,
                                       bool prefer_fp16 = false);

// Every tensor of a weight file that find_weight_file returns: a .safetensors file, or a
// sharded checkpoint's index (its shards' tensors, as the index's weight_map lists them).
// Throws SafetensorsError or WeightLoadError naming the file.
TensorMap load_weight_file(const std::filesystem::path& weight_file);

// The current name of one VAE key: "<...>.attentions.<i>.query.weight" becomes
// "<...>.attentions.<i>.to_q.weight" (key, value, proj_attn likewise); others are unchanged.
std::string rename_legacy_vae_key(const std::string& key);

// Renames the VAE's legacy attention keys (query, key, value, proj_attn) to the current ones
// (to_q, to_k, to_v, to_out.0); other keys pass through unchanged. Throws WeightLoadError when
// a legacy key and its current name are both present.
TensorMap rename_legacy_vae_keys(TensorMap tensors);

// Copies `tensors` into the module's parameters and buffers, converting to each one's dtype
// and device. Strict: all missing, unexpected and shape-mismatched keys are listed in one
// WeightLoadError that names `source`.
void load_state_dict(torch::nn::Module& module, const TensorMap& tensors, const std::string& source,
                     const LoadOptions& options = {});

// One tensor that a module's parameter or buffer is read from: what load_component makes of a
// weight file's tensors, and other loaders (original_checkpoint_loader.h) of theirs.
struct WeightSource {
  std::string key;             // as the file names it
  std::vector<int64_t> shape;  // the shape it has once read: the module's tensor must match
  // Copies into a tensor of `shape` (any dtype, device and strides), through a staging buffer
  // that the loader reuses for every tensor.
  std::function<void(at::Tensor& target, at::Tensor& staging)> read_into;
};
using WeightSources = std::map<std::string, WeightSource>;  // module name -> its tensor

struct ShapeMismatch {
  std::string name;  // the module's
  std::vector<int64_t> checkpoint, module;
};
// What load_weight_sources would refuse, by module name.
struct WeightMismatch {
  std::vector<std::string> missing, unexpected;
  std::vector<ShapeMismatch> mismatched;
  bool empty() const;
};
WeightMismatch check_weight_sources(torch::nn::Module& module, const WeightSources& sources,
                                    const LoadOptions& options = {});

// As load_state_dict (strict, one error naming `source`, dtype and layout as `options` say), one
// tensor at a time from `sources`.
void load_weight_sources(torch::nn::Module& module, const WeightSources& sources,
                         const std::string& source, const LoadOptions& options = {});

// find_weight_file + load_weight_file + rename_legacy_vae_keys + load_state_dict, reading one
// tensor at a time from the file(s), straight into the module's tensors, so that peak memory
// stays at the module's size.
void load_component(torch::nn::Module& module, const std::filesystem::path& component_dir,
                    const LoadOptions& options = {});

}  // namespace ldcp::io
