#include "model/pruning/gate_scores.h"

#include <sstream>
#include <stdexcept>

#include <torch/torch.h>

#include "model/io/safetensors.h"
#include "model/pruning/gated_layer.h"
#include "model/pruning/step_schedule.h"

namespace ldcp::pruning {

const std::vector<std::string>& score_sources() {
  static const std::vector<std::string> names = {"magnitude", "random", "learned"};
  return names;
}

std::vector<GatedLayerRef> attach_gates(torch::nn::Module& unet) {
  std::vector<GatedLayerRef> layers;
  for (const auto& item : unet.named_modules("", /*include_self=*/false)) {
    if (auto* gated = dynamic_cast<GatedLayer*>(item.value().get())) {
      gated->enable_gate(item.key());
      layers.push_back({item.key(), gated});
    }
  }
  return layers;
}

GateScores magnitude_scores(torch::nn::Module& unet) {
  GateScores scores;
  scores.source = "magnitude";
  scores.normalize_per_layer = true;
  for (const auto& ref : attach_gates(unet)) scores.layers[ref.name] = ref.layer->magnitude_scores();
  return scores;
}

GateScores random_scores(torch::nn::Module& unet, uint64_t seed) {
  GateScores scores;
  scores.source = "random";
  scores.normalize_per_layer = false;
  auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (const auto& ref : attach_gates(unet)) {
    scores.layers[ref.name] = at::rand({ref.layer->gate()->num_units()}, generator);
  }
  scores.metadata["seed"] = std::to_string(seed);
  return scores;
}

std::string gate_fingerprint(torch::nn::Module& unet) {
  std::ostringstream out;
  for (const auto& ref : attach_gates(unet)) {
    out << ref.name << ":" << ref.layer->gate()->num_units() << "x" << ref.layer->gate()->unit_size()
        << ";";
  }
  // FNV-1a over the description: short, stable across runs and platforms.
  uint64_t hash = 1469598103934665603ull;
  for (unsigned char c : out.str()) hash = (hash ^ c) * 1099511628211ull;
  std::ostringstream hex;
  hex << std::hex << hash;
  return hex.str();
}

void save_gate_scores(const std::filesystem::path& path, const GateScores& scores) {
  io::TensorMap tensors;
  for (const auto& [name, t] : scores.layers) tensors[name] = t.to(torch::kFloat).contiguous();
  auto metadata = scores.metadata;
  metadata["source"] = scores.source;
  metadata["normalize_per_layer"] = scores.normalize_per_layer ? "true" : "false";
  io::save_safetensors(path, tensors, metadata);
}

GateScores load_gate_scores(const std::filesystem::path& path) {
  io::Metadata metadata;
  auto tensors = io::load_safetensors(path, &metadata);
  GateScores scores;
  scores.metadata = metadata;
  auto source = metadata.find("source");
  if (source == metadata.end()) {
    throw std::invalid_argument("gates file " + path.string() + " has no \"source\" metadata");
  }
  scores.source = source->second;
  auto normalize = metadata.find("normalize_per_layer");
  scores.normalize_per_layer = normalize != metadata.end() && normalize->second == "true";
  // Learned step schedules (ldcp tune-schedule), if any: checked now, so that a malformed file
  // fails at load naming the file and the key, not at the first request that asks for one.
  step_schedules_from_metadata(metadata, path.string());
  for (auto& [name, t] : tensors) {
    if (t.dim() != 1) {
      throw std::invalid_argument("gates file " + path.string() + ": layer " + name +
                                  " must hold a 1-D score tensor");
    }
    scores.layers[name] = t.to(torch::kFloat);
  }
  return scores;
}

void check_scores_fit(torch::nn::Module& unet, const GateScores& scores, const std::string& source) {
  std::map<std::string, int64_t> expected;
  for (const auto& ref : attach_gates(unet)) expected[ref.name] = ref.layer->gate()->num_units();
  for (const auto& [name, units] : expected) {
    auto it = scores.layers.find(name);
    if (it == scores.layers.end()) {
      throw std::invalid_argument(source + ": no scores for layer " + name);
    }
    if (it->second.numel() != units) {
      throw std::invalid_argument(source + ": layer " + name + " has " +
                                  std::to_string(it->second.numel()) + " scores, the model has " +
                                  std::to_string(units) + " units");
    }
  }
  for (const auto& [name, t] : scores.layers) {
    if (!expected.count(name)) {
      throw std::invalid_argument(source + ": layer " + name + " is not a gated layer of this model");
    }
  }
}

}  // namespace ldcp::pruning
