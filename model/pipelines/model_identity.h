#pragma once
// What a generated image's metadata says about the model (generation_parameters.h): its name and
// A1111's short hash, computed once when the model loads, and the gate scores pruning used.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "model/pipelines/generation_parameters.h"
#include "model/pipelines/pipeline_stable_diffusion.h"

namespace ldcp::pipelines {

// A1111's "Lora hashes": the short SHA-256 of each LoRA file a request names, hashed once per
// file (kept by path, size and modification time: a replaced file is hashed again). Thread-safe.
class LoraFileHashes {
 public:
  explicit LoraFileHashes(std::filesystem::path lora_dir) : dir_(std::move(lora_dir)) {}
  // Empty when the name does not resolve to a file (the tag is still written, without a hash).
  std::string hash(const std::string& name);

 private:
  std::filesystem::path dir_;
  std::mutex mutex_;
  std::map<std::string, std::string> hashes_;  // lora::file_version_key -> short hash
};

struct ModelIdentity {
  std::string name;  // a folder's name, a single file's name without ".safetensors"
  std::string hash;  // first 10 hex digits of the SHA-256 of `hashed_file`
  std::filesystem::path hashed_file;
  std::string gate_scores;  // "magnitude", "learned", "random" (pruner().scores().source)
  std::string gates_hash;   // short hash of the gates file; empty without one
  std::shared_ptr<LoraFileHashes> lora_hashes;  // null: "Lora hashes" left out
};

// A single-file checkpoint: its own SHA-256 (A1111's "Model hash" of the same file). A diffusers
// folder has no one file A1111 would hash: the U-Net's weight file is hashed (the one load()
// reads, find_weight_file with `prefer_fp16`; a sharded U-Net: its index file), since the U-Net
// is what fine-tunes change. A gates file, when given, is hashed too. Reads the files in blocks.
// Throws naming the file.
ModelIdentity identify_model(const std::filesystem::path& model, bool prefer_fp16,
                             const std::filesystem::path& gates_file = {});

// The "parameters" text of image `index` of a run: the request's settings, the seed it was
// drawn with (image `index` of `params.num_images` from one generator), the strength and the
// pruning level of every step that ran.
std::string png_parameters(const GenerationParams& params, const GenerationResult& result,
                           int64_t index, const ModelIdentity& model);

}  // namespace ldcp::pipelines
