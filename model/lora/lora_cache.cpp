#include "model/lora/lora_cache.h"

#include <stdexcept>

#include "model/io/original_checkpoint.h"
#include "model/lora/lora_weights.h"

namespace ldcp::lora {

LoraCache::LoraCache(std::filesystem::path dir, int64_t max_bytes)
    : dir_(std::move(dir)), max_bytes_(max_bytes) {}

std::filesystem::path resolve_lora_file(const std::filesystem::path& dir, const std::string& name) {
  const bool path = name.find('/') != std::string::npos ||
                    (name.size() > 12 && name.compare(name.size() - 12, 12, ".safetensors") == 0);
  std::filesystem::path file;
  if (path) {
    file = name;
  } else if (dir.empty()) {
    throw std::invalid_argument("no LoRA directory is set (--lora-dir) to find '" +
                                io::short_key(name, 64) + "' in");
  } else {
    file = dir / (name + ".safetensors");
  }
  std::error_code error;
  if (!std::filesystem::is_regular_file(file, error)) {
    throw std::invalid_argument(path ? "no LoRA file " + io::short_key(file.string(), 200)
                                     : "no LoRA named '" + io::short_key(name, 64) + "' in " +
                                           dir.string());
  }
  return file;
}

std::string file_version_key(const std::filesystem::path& file) {
  std::error_code error;
  const auto size = std::filesystem::file_size(file, error);
  const auto mtime = std::filesystem::last_write_time(file, error);
  return std::filesystem::absolute(file).lexically_normal().string() + "|" + std::to_string(size) +
         "|" + std::to_string(mtime.time_since_epoch().count());
}

std::shared_ptr<const LoraWeights> LoraCache::get(const std::filesystem::path& file,
                                                  const Reader& read) {
  const std::string key = file_version_key(file);
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = entries_.begin(); it != entries_.end(); ++it) {
    if (it->key == key) {
      entries_.splice(entries_.begin(), entries_, it);
      return entries_.front().weights;
    }
  }
  auto weights = read(file);
  const int64_t bytes = weights->bytes;
  if (bytes > max_bytes_) return weights;
  while (!entries_.empty() && bytes_ + bytes > max_bytes_) {
    bytes_ -= entries_.back().bytes;
    entries_.pop_back();
  }
  entries_.push_front({key, file.stem().string(), weights, bytes});
  bytes_ += bytes;
  return weights;
}

int64_t LoraCache::bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return bytes_;
}

std::vector<std::string> LoraCache::names() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::string> out;
  for (const auto& e : entries_) out.push_back(e.name);
  return out;
}

size_t LoraCache::entries() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return entries_.size();
}

}  // namespace ldcp::lora
