#pragma once
// Importance scores of the U-Net's gated units, one tensor [num_units] per gated layer, and
// the gates file that stores them (safetensors: one tensor per layer, keyed by the layer's
// module path, plus metadata: source, model fingerprint, training data, steps, levels).

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

#include <ATen/core/Tensor.h>
#include <torch/nn/module.h>

namespace ldcp::pruning {

struct GateScores {
  // "magnitude" (from the weights), "learned" (ldcp train-gates) or "random" (a control).
  std::string source = "magnitude";
  // Scores of different layers are only comparable after dividing each layer's by its mean
  // (magnitude); learned and random scores are global already.
  bool normalize_per_layer = true;
  std::map<std::string, at::Tensor> layers;  // layer name -> [num_units] float32
  std::map<std::string, std::string> metadata;
};

// The sources the tools accept for --scores.
const std::vector<std::string>& score_sources();  // magnitude, random, learned

// From the weights alone: each unit's L1 norm of its input-side rows.
GateScores magnitude_scores(torch::nn::Module& unet);
// Uniform random scores (a control), deterministic for the seed.
GateScores random_scores(torch::nn::Module& unet, uint64_t seed);

// A fingerprint of the U-Net's architecture (gated layer names and unit counts), stored in
// gates files and checked when they are loaded.
std::string gate_fingerprint(torch::nn::Module& unet);

void save_gate_scores(const std::filesystem::path& path, const GateScores& scores);
GateScores load_gate_scores(const std::filesystem::path& path);

// Checks that `scores` fit the U-Net: every gated layer present with the right unit count and
// no unknown layer; throws std::invalid_argument naming the first offending layer (and `source`).
void check_scores_fit(torch::nn::Module& unet, const GateScores& scores, const std::string& source);

// Attaches gates to every gated layer (ResnetBlock2D, FeedForward) of `unet`, named by module
// path; returns them in module order.
struct GatedLayerRef {
  std::string name;
  class GatedLayer* layer;
};
std::vector<GatedLayerRef> attach_gates(torch::nn::Module& unet);

}  // namespace ldcp::pruning
