#include "model/io/weights.h"

#include <algorithm>
#include <functional>
#include <sstream>
#include <utility>

#include <torch/torch.h>

#include "model/io/json_file.h"

namespace ldcp::io {
namespace {

// What load_state_dict needs of one checkpoint tensor: its shape before any data is read, and
// ways to read it (so load_component reads one tensor at a time, straight into the module).
struct Entry {
  std::string key;  // as the checkpoint names it (before renaming)
  std::vector<int64_t> shape;
  std::function<at::Tensor()> fetch;
  // Copies into a tensor of the entry's shape (any dtype and device), through a reusable
  // staging buffer where it cannot read into it directly (SafetensorsFile::read_into).
  std::function<void(at::Tensor& target, at::Tensor& staging)> read_into;
};
using Entries = std::map<std::string, Entry>;

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() &&
         text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool contains(const std::vector<std::string>& list, const std::string& name) {
  return std::find(list.begin(), list.end(), name) != list.end();
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  return out + "]";
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ", ";
    out += items[i];
  }
  return out;
}

std::string counted(size_t n, const std::string& singular, const std::string& plural) {
  return std::to_string(n) + " " + (n == 1 ? singular : plural);
}

// Adds `entry` under the current name of `key`, refusing two checkpoint keys that land on one.
void add_renamed(Entries& entries, const std::string& key, Entry entry, const std::string& source) {
  const std::string name = rename_legacy_vae_key(key);
  auto [it, added] = entries.emplace(name, std::move(entry));
  if (!added) {
    throw WeightLoadError(source + ": keys \"" + it->second.key + "\" and \"" + key +
                          "\" both name the weight \"" + name +
                          "\" (legacy and current VAE attention names)");
  }
}

std::map<std::string, at::Tensor> module_tensors(torch::nn::Module& module) {
  std::map<std::string, at::Tensor> targets;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    targets.emplace(item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    targets.emplace(item.key(), item.value());
  }
  return targets;
}

// `entries`: module name -> anything with `shape` and `read_into` (Entry, WeightSource).
template <class Map>
WeightMismatch find_mismatch(const std::map<std::string, at::Tensor>& targets, const Map& entries,
                             const LoadOptions& options) {
  WeightMismatch out;
  for (const auto& [name, target] : targets) {
    auto it = entries.find(name);
    if (it == entries.end()) {
      if (!contains(options.ignored_missing, name)) out.missing.push_back(name);
      continue;
    }
    const auto shape = target.sizes().vec();
    if (shape != it->second.shape) {
      out.mismatched.push_back({name, it->second.shape, shape});
    }
  }
  for (const auto& [name, entry] : entries) {
    if (targets.count(name) == 0 && !contains(options.ignored_unexpected, name)) {
      out.unexpected.push_back(name);
    }
  }
  return out;
}

// Validates every key and shape first (so a failed load leaves the module untouched), then
// copies.
template <class Map>
void load_entries(torch::nn::Module& module, const Map& entries, const std::string& source,
                  const LoadOptions& options) {
  auto targets = module_tensors(module);
  const auto mismatch = find_mismatch(targets, entries, options);
  if (!mismatch.empty()) {
    const auto& [missing, unexpected, mismatched] = mismatch;
    std::ostringstream message;
    message << source << ": the weights do not match the module";
    if (!missing.empty()) {
      message << "; " << counted(missing.size(), "missing key", "missing keys") << ": "
              << join(missing);
    }
    if (!unexpected.empty()) {
      message << "; " << counted(unexpected.size(), "unexpected key", "unexpected keys") << ": "
              << join(unexpected);
    }
    if (!mismatched.empty()) {
      std::vector<std::string> items;
      for (const auto& m : mismatched) {
        items.push_back(m.name + " (checkpoint " + shape_text(m.checkpoint) + ", module " +
                        shape_text(m.module) + ")");
      }
      message << "; " << counted(mismatched.size(), "shape mismatch", "shape mismatches") << ": "
              << join(items);
    }
    throw WeightLoadError(message.str());
  }

  torch::NoGradGuard no_grad;
  at::Tensor staging;
  for (auto& [name, target] : targets) {
    auto it = entries.find(name);
    if (it == entries.end()) continue;  // an ignored missing key
    const bool convert =
        options.dtype && target.is_floating_point() && target.scalar_type() != *options.dtype;
    const bool relayout = options.channels_last && target.dim() == 4 &&
                          !target.is_contiguous(at::MemoryFormat::ChannelsLast);
    // The target is overwritten next: new storage, not a copy of the old values. (The
    // module's tensor shares this one's implementation, so it sees the new dtype and strides;
    // the old storage is freed here, one tensor at a time.)
    const auto dtype = convert ? *options.dtype : target.scalar_type();
    if (relayout) {
      target.set_data(
          at::empty(target.sizes(), target.options().dtype(dtype), at::MemoryFormat::ChannelsLast));
    } else if (convert) {
      target.set_data(at::empty_like(target, target.options().dtype(dtype)));
    }
    it->second.read_into(target, staging);
  }
}

// The tensors of a weight file, read lazily out of the file(s).
// (Each entry's functions hold its file open.)
struct OpenedWeights {
  Entries entries;
};

void add_file_entries(OpenedWeights& out, const std::shared_ptr<SafetensorsFile>& file,
                      const std::vector<std::string>& names, const std::string& source,
                      bool rename) {
  for (const auto& name : names) {
    Entry entry{name, file->info(name).shape, [file, name] { return file->tensor(name); },
                [file, name](at::Tensor& target, at::Tensor& staging) {
                  file->read_into(name, target, &staging);
                }};
    if (rename) {
      add_renamed(out.entries, name, std::move(entry), source);
    } else {
      out.entries.emplace(name, std::move(entry));
    }
  }
}

bool is_index_file(const std::filesystem::path& path) {
  const std::string name = path.filename().string();
  return ends_with(name, ".json");
}

// rename: apply rename_legacy_vae_key to every key.
OpenedWeights open_weights(const std::filesystem::path& weight_file, bool rename) {
  OpenedWeights out;
  const std::string source = weight_file.string();
  if (!is_index_file(weight_file)) {
    auto file = std::make_shared<SafetensorsFile>(weight_file);
    add_file_entries(out, file, file->names(), source, rename);
    return out;
  }

  // A sharded checkpoint: {"metadata": {...}, "weight_map": {"key": "shard.safetensors"}}.
  nlohmann::json index;
  try {
    index = read_json_file(weight_file);
  } catch (const ConfigError& e) {
    throw WeightLoadError(e.what());
  }
  auto weight_map = index.find("weight_map");
  if (!index.is_object() || weight_map == index.end() || !weight_map->is_object()) {
    throw WeightLoadError(source + ": no \"weight_map\" object in the shard index");
  }
  std::map<std::string, std::vector<std::string>> by_shard;
  for (const auto& [key, shard] : weight_map->items()) {
    if (!shard.is_string()) {
      throw WeightLoadError(source + ": weight_map entry \"" + key + "\" is not a file name");
    }
    const auto name = shard.get<std::string>();
    // Shards live beside the index; refuse paths that would reach elsewhere.
    if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
      throw WeightLoadError(source + ": weight_map entry \"" + key + "\" names \"" + name +
                            "\", which is not a file name in the index's folder");
    }
    by_shard[name].push_back(key);
  }
  for (const auto& [shard, keys] : by_shard) {
    auto file = std::make_shared<SafetensorsFile>(weight_file.parent_path() / shard);
    for (const auto& key : keys) {
      if (!file->contains(key)) {
        throw WeightLoadError(source + ": weight_map puts \"" + key + "\" in " + shard +
                              ", which does not hold it");
      }
    }
    add_file_entries(out, file, keys, source, rename);
  }
  return out;
}

}  // namespace

bool WeightMismatch::empty() const {
  return missing.empty() && unexpected.empty() && mismatched.empty();
}

WeightMismatch check_weight_sources(torch::nn::Module& module, const WeightSources& sources,
                                    const LoadOptions& options) {
  return find_mismatch(module_tensors(module), sources, options);
}

void load_weight_sources(torch::nn::Module& module, const WeightSources& sources,
                         const std::string& source, const LoadOptions& options) {
  load_entries(module, sources, source, options);
}

std::filesystem::path find_weight_file(const std::filesystem::path& component_dir,
                                       bool prefer_fp16) {
  std::error_code ec;
  if (!std::filesystem::is_directory(component_dir, ec)) {
    throw WeightLoadError(component_dir.string() + ": component folder not found");
  }
  // diffusers names its weights diffusion_pytorch_model.*, transformers model.*; a variant
  // goes before the last extension.
  std::vector<std::string> tried;
  for (const std::string base : {"diffusion_pytorch_model", "model"}) {
    const std::string plain = base + ".safetensors";
    const std::string plain_index = base + ".safetensors.index.json";
    const std::string fp16 = base + ".fp16.safetensors";
    const std::string fp16_index = base + ".safetensors.index.fp16.json";
    const auto order = prefer_fp16 ? std::vector<std::string>{fp16, fp16_index, plain, plain_index}
                                   : std::vector<std::string>{plain, plain_index, fp16, fp16_index};
    for (const auto& name : order) {
      const auto candidate = component_dir / name;
      if (std::filesystem::is_regular_file(candidate, ec)) return candidate;
      tried.push_back(name);
    }
  }
  throw WeightLoadError(component_dir.string() +
                        ": no safetensors weight file in the folder (looked for " + join(tried) +
                        ")");
}

TensorMap load_weight_file(const std::filesystem::path& weight_file) {
  if (!is_index_file(weight_file)) return load_safetensors(weight_file);
  TensorMap out;
  for (const auto& [name, entry] : open_weights(weight_file, /*rename=*/false).entries) {
    out.emplace(name, entry.fetch());
  }
  return out;
}

std::string rename_legacy_vae_key(const std::string& key) {
  // "<prefix>attentions.<digits>.<old>.<weight|bias>" with <prefix> empty or ending in '.'.
  static const std::pair<const char*, const char*> kRenames[] = {
      {"query", "to_q"}, {"key", "to_k"}, {"value", "to_v"}, {"proj_attn", "to_out.0"}};
  std::string param;
  if (ends_with(key, ".weight")) {
    param = "weight";
  } else if (ends_with(key, ".bias")) {
    param = "bias";
  } else {
    return key;
  }
  const std::string rest = key.substr(0, key.size() - param.size() - 1);
  for (const auto& [old_name, new_name] : kRenames) {
    const std::string suffix = std::string(".") + old_name;
    if (!ends_with(rest, suffix)) continue;
    const std::string block = rest.substr(0, rest.size() - suffix.size());
    // block must end in "attentions.<digits>".
    const auto dot = block.rfind('.');
    if (dot == std::string::npos) return key;
    const std::string index = block.substr(dot + 1);
    if (index.empty() ||
        !std::all_of(index.begin(), index.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      return key;
    }
    const std::string owner = block.substr(0, dot);
    if (owner != "attentions" && !ends_with(owner, ".attentions")) return key;
    return block + "." + new_name + "." + param;
  }
  return key;
}

TensorMap rename_legacy_vae_keys(TensorMap tensors) {
  TensorMap out;
  std::map<std::string, std::string> origin;  // new name -> checkpoint key
  for (auto& [key, tensor] : tensors) {
    const std::string name = rename_legacy_vae_key(key);
    auto [it, added] = origin.emplace(name, key);
    if (!added) {
      throw WeightLoadError("keys \"" + it->second + "\" and \"" + key +
                            "\" both name the weight \"" + name +
                            "\" (legacy and current VAE attention names)");
    }
    out.emplace(name, std::move(tensor));
  }
  return out;
}

void load_state_dict(torch::nn::Module& module, const TensorMap& tensors, const std::string& source,
                     const LoadOptions& options) {
  Entries entries;
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined()) throw WeightLoadError(source + ": tensor \"" + name + "\" is undefined");
    entries.emplace(name,
                    Entry{name, tensor.sizes().vec(), [tensor] { return tensor; },
                          [tensor](at::Tensor& target, at::Tensor&) { target.copy_(tensor); }});
  }
  load_entries(module, entries, source, options);
}

void load_component(torch::nn::Module& module, const std::filesystem::path& component_dir,
                    const LoadOptions& options) {
  const auto weight_file = find_weight_file(component_dir, options.prefer_fp16);
  const auto opened = open_weights(weight_file, /*rename=*/true);
  load_entries(module, opened.entries, weight_file.string(), options);
}

}  // namespace ldcp::io
