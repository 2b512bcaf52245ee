#include "model/io/model_folder.h"

#include <algorithm>
#include <system_error>

#include "model/io/json_file.h"

namespace ldcp::io {
namespace {

bool is_file(const std::filesystem::path& path) {
  std::error_code ec;
  return std::filesystem::is_regular_file(path, ec);
}

bool is_dir(const std::filesystem::path& path) {
  std::error_code ec;
  return std::filesystem::is_directory(path, ec);
}

// The component's folder, after checking that model_index.json does not disable it
// (save_pretrained writes [null, null] for a component set to None) and that it exists.
std::filesystem::path component(const std::filesystem::path& root, const nlohmann::json& index,
                                const std::string& name) {
  auto entry = index.find(name);
  if (entry != index.end()) {
    const bool disabled =
        entry->is_null() ||
        (entry->is_array() && !entry->empty() &&
         std::all_of(entry->begin(), entry->end(), [](const auto& v) { return v.is_null(); }));
    if (disabled) {
      throw ConfigError((root / "model_index.json").string() + ": component \"" + name +
                        "\" is null; the pipeline needs it");
    }
  }
  const auto dir = root / name;
  if (!is_dir(dir)) throw ConfigError(dir.string() + ": component folder not found");
  return dir;
}

void require_file(const std::filesystem::path& path) {
  if (!is_file(path)) throw ConfigError(path.string() + ": file not found");
}

}  // namespace

ModelFolder ModelFolder::open(const std::filesystem::path& root) {
  if (!is_dir(root)) throw ConfigError(root.string() + ": model folder not found");
  ModelFolder folder;
  folder.root = root;
  folder.model_index = read_json_file(root / "model_index.json");
  if (!folder.model_index.is_object()) {
    throw ConfigError((root / "model_index.json").string() + ": not a JSON object");
  }
  const auto& index = folder.model_index;

  folder.text_encoder = component(root, index, "text_encoder");
  require_file(folder.text_encoder / "config.json");

  folder.tokenizer = component(root, index, "tokenizer");
  // SD1.5's repository has vocab.json + merges.txt; transformers 5 writes tokenizer.json.
  const bool has_bpe_files =
      is_file(folder.tokenizer / "vocab.json") && is_file(folder.tokenizer / "merges.txt");
  if (!has_bpe_files && !is_file(folder.tokenizer / "tokenizer.json")) {
    throw ConfigError(folder.tokenizer.string() +
                      ": no tokenizer files (needs vocab.json and merges.txt, or tokenizer.json)");
  }

  folder.unet = component(root, index, "unet");
  require_file(folder.unet / "config.json");

  folder.vae = component(root, index, "vae");
  require_file(folder.vae / "config.json");

  folder.scheduler = component(root, index, "scheduler");
  require_file(folder.scheduler / "scheduler_config.json");
  return folder;
}

nlohmann::json ModelFolder::unet_config() const { return read_json_file(unet / "config.json"); }

nlohmann::json ModelFolder::vae_config() const { return read_json_file(vae / "config.json"); }

nlohmann::json ModelFolder::text_encoder_config() const {
  return read_json_file(text_encoder / "config.json");
}

nlohmann::json ModelFolder::scheduler_config() const {
  return read_json_file(scheduler / "scheduler_config.json");
}

}  // namespace ldcp::io
