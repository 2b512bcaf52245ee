#pragma once
// A LoRA file read into tensors, checked against a model's layers (lora_file.h plans it from the
// header before any tensor is read), and what a batch's adapters are made of: the layers of a
// U-Net and text encoder a LoRA may adapt, with the pruning gates' channel permutations.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "model/lora/lora_file.h"
#include "model/lora/lora_hook.h"

namespace torch::nn {
class Module;
}
namespace ldcp::pruning {
class UNetPruner;
}

namespace ldcp::lora {

// One adapted layer's factors, in the model's dtype and on its device.
struct LayerFactors {
  size_t target = 0;  // index into LoraTargets::layers()
  at::Tensor down;    // [rank, in] or [rank, in, kh, kw] (a 1x1 convolution's: 4-D too)
  at::Tensor up;      // [out, rank] or [out, rank, 1, 1]
  double scale = 1;   // alpha / rank (PEFT: lora_alpha / rank, or / sqrt(rank) with rsLoRA)
};

struct LoraWeights {
  std::filesystem::path file;
  LoraLayout layout = LoraLayout::kKohya;
  std::vector<LayerFactors> layers;
  int64_t bytes = 0;  // of the factors
  int64_t unet_layers = 0, text_encoder_layers = 0;
};

// Every Linear and Conv2d of a U-Net and a CLIP text encoder (the layers whose call sites add
// the LoRA branch, lora_hook.h), by module path, and the channel permutations that the pruner
// applied to the gated ones (ResnetBlock2D: conv1 and time_emb_proj rows, conv2 columns;
// FeedForward: net.0.proj rows of both halves, net.2 columns).
class LoraTargets {
 public:
  // `pruner`: the one that reordered `unet`'s units (nullptr: none did).
  LoraTargets(torch::nn::Module& unet, torch::nn::Module& text_encoder,
              const pruning::UNetPruner* pruner, c10::Device device, c10::ScalarType dtype);
  ~LoraTargets();

  const std::vector<TargetLayer>& layers() const { return layers_; }
  c10::ScalarType dtype() const { return dtype_; }
  c10::Device device() const { return device_; }

  // Reads and checks a LoRA file against these layers (throws LoraFileError naming the file
  // for every problem, io::SafetensorsError for a broken file).
  std::shared_ptr<const LoraWeights> read(const std::filesystem::path& file) const;

  // The branches of a batch: each LoRA at its weight, concatenated per layer, permuted as the
  // pruned layers are.
  std::unique_ptr<ActiveAdapters> adapters(
      const std::vector<std::pair<std::shared_ptr<const LoraWeights>, double>>& loras) const;

  struct Layer;  // what the adapters need of a layer (lora_weights.cpp)

 private:
  std::vector<TargetLayer> layers_;
  std::vector<Layer> detail_;
  int64_t unet_layers_per_block_ = 0;  // every U-Net block's (0: they differ), plan_lora's
  c10::Device device_;
  c10::ScalarType dtype_;
};

}  // namespace ldcp::lora
