#include "model/io/original_checkpoint_loader.h"

#include <algorithm>
#include <array>
#include <fstream>
#include <stdexcept>
#include <utility>

#include <torch/torch.h>

#include "model/io/safetensors.h"

namespace ldcp::io {
namespace {

constexpr size_t kParts = 3;

size_t part_index(OriginalPart part) {
  switch (part) {
    case OriginalPart::kUNet:
      return 0;
    case OriginalPart::kVae:
      return 1;
    case OriginalPart::kTextEncoder:
      return 2;
  }
  return 0;
}

const OriginalPart kPartOrder[kParts] = {OriginalPart::kUNet, OriginalPart::kVae,
                                         OriginalPart::kTextEncoder};

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i > 0 ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

// A 1x1 convolution kernel [C, C, 1, 1] (or [C, C, 1]) read into a linear weight [C, C].
bool is_conv_kernel_of_linear(const std::vector<int64_t>& shape) {
  if (shape.size() != 3 && shape.size() != 4) return false;
  for (size_t d = 2; d < shape.size(); ++d) {
    if (shape[d] != 1) return false;
  }
  return true;
}

}  // namespace

void refuse_pickle_checkpoint(const std::filesystem::path& file) {
  std::string first_bytes(16, '\0');
  std::ifstream in(file, std::ios::binary);
  if (in) {
    in.read(first_bytes.data(), static_cast<std::streamsize>(first_bytes.size()));
    first_bytes.resize(static_cast<size_t>(std::max<std::streamsize>(in.gcount(), 0)));
  } else {
    first_bytes.clear();
  }
  if (auto refusal = pickle_refusal(file, first_bytes)) throw OriginalCheckpointError(*refusal);
}

OriginalCheckpointSummary load_original_checkpoint(const std::filesystem::path& file,
                                                   const OriginalLayout& layout,
                                                   const OriginalCheckpointModules& modules,
                                                   const LoadOptions& options,
                                                   const std::string& architecture) {
  if (modules.unet == nullptr || modules.vae == nullptr || modules.text_model == nullptr) {
    throw std::invalid_argument("load_original_checkpoint: a module is missing");
  }
  const std::string source = file.string();
  refuse_pickle_checkpoint(file);
  const SafetensorsFile weights(file);  // validates the whole header first
  const auto mapped = map_original_keys(weights.names(), layout, source);

  std::array<WeightSources, kParts> sources;
  for (const auto& [key, target] : mapped.tensors) {
    auto shape = weights.info(key).shape;
    WeightSource entry{key, shape, [&weights, key](at::Tensor& out, at::Tensor& staging) {
                         weights.read_into(key, out, &staging);
                       }};
    if (target.conv_to_linear && is_conv_kernel_of_linear(shape)) {
      entry.shape = {shape[0], shape[1]};
      entry.read_into = [&weights, key, shape](at::Tensor& out, at::Tensor& staging) {
        auto kernel = out.view(shape);  // the linear weight's storage, as the stored kernel
        weights.read_into(key, kernel, &staging);
      };
    }
    sources[part_index(target.part)].emplace(target.name, std::move(entry));
  }

  // Every part is checked before any is read, so one message lists all the problems.
  const std::array<torch::nn::Module*, kParts> targets = {modules.unet, modules.vae,
                                                          modules.text_model};
  std::vector<std::string> missing, unexpected, mismatched;
  for (const auto& key : mapped.unknown) unexpected.push_back(short_key(key));
  for (size_t p = 0; p < kParts; ++p) {
    const std::string part = original_part_name(kPartOrder[p]);
    const auto mismatch = check_weight_sources(*targets[p], sources[p], options);
    for (const auto& name : mismatch.missing) missing.push_back(part + " " + name);
    for (const auto& name : mismatch.unexpected) {
      unexpected.push_back(short_key(sources[p].at(name).key) + " (" + part + " " + name + ")");
    }
    for (const auto& m : mismatch.mismatched) {
      mismatched.push_back(short_key(sources[p].at(m.name).key) + " " + shape_text(m.checkpoint) +
                           " (" + part + " " + m.name + " " + shape_text(m.module) + ")");
    }
  }
  if (!missing.empty() || !unexpected.empty() || !mismatched.empty()) {
    std::string message = source + ": not a Stable Diffusion checkpoint of " + architecture +
                          " in the original layout";
    if (!missing.empty()) message += "; " + key_list("missing weights", missing);
    if (!unexpected.empty()) message += "; " + key_list("unexpected keys", unexpected);
    if (!mismatched.empty()) message += "; " + key_list("shape mismatches", mismatched);
    if (mapped.has_ema_copy && sources[0].empty()) {
      message += " (the file has model_ema.* weights but no model.diffusion_model.* ones)";
    }
    throw OriginalCheckpointError(message);
  }

  OriginalCheckpointSummary summary;
  for (size_t p = 0; p < kParts; ++p) {
    load_weight_sources(*targets[p], sources[p], source, options);
    summary.tensors += sources[p].size();
  }
  summary.ignored = mapped.ignored.size();
  summary.has_ema_copy = mapped.has_ema_copy;
  summary.old_clip_layout = mapped.old_clip_layout;
  return summary;
}

}  // namespace ldcp::io
