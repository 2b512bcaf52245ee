#pragma once
// Loaded LoRA files, kept for the next request under a memory bound: least recently used
// first out. Shared by ldcp-server and ldcp generate (through the pipeline). Thread-safe.
//
// An entry is a file as of its size and modification time (a file replaced in the directory is
// read again). Entries in use by a running batch stay alive after eviction (shared_ptr); a file
// larger than the whole bound is used but not kept.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace ldcp::lora {

struct LoraWeights;

// The file a LoRA name stands for: DIR/NAME.safetensors, or NAME itself when it holds a "/" (or
// ends in ".safetensors"; ldcp generate). Throws std::invalid_argument, without the field's name,
// when there is no such file.
std::filesystem::path resolve_lora_file(const std::filesystem::path& dir, const std::string& name);

// `file` as of its size and modification time ("path|size|mtime", the path made absolute): a
// file replaced under the same name gets a new key. The cache's key, and the metadata's hashes'.
std::string file_version_key(const std::filesystem::path& file);

class LoraCache {
 public:
  LoraCache(std::filesystem::path dir, int64_t max_bytes);

  const std::filesystem::path& dir() const { return dir_; }
  int64_t max_bytes() const { return max_bytes_; }

  // resolve_lora_file(dir(), name) (the server refuses path names before this).
  std::filesystem::path resolve(const std::string& name) const {
    return resolve_lora_file(dir_, name);
  }

  using Reader = std::function<std::shared_ptr<const LoraWeights>(const std::filesystem::path&)>;
  // The cached weights of `file`, or `read(file)` kept under the bound.
  std::shared_ptr<const LoraWeights> get(const std::filesystem::path& file, const Reader& read);

  int64_t bytes() const;  // held now
  size_t entries() const;
  // The held files' stems (NAME of NAME.safetensors), most recently used first.
  std::vector<std::string> names() const;

 private:
  struct Entry {
    std::string key;   // path, size, mtime
    std::string name;  // the file's stem
    std::shared_ptr<const LoraWeights> weights;
    int64_t bytes = 0;
  };
  std::filesystem::path dir_;
  int64_t max_bytes_;
  mutable std::mutex mutex_;
  std::list<Entry> entries_;  // most recently used first
  int64_t bytes_ = 0;
};

}  // namespace ldcp::lora
