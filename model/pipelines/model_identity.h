#pragma once
// What a generated image's metadata says about the model (generation_parameters.h): its name and
// A1111's short hash, computed once when the model loads.

#include <filesystem>
#include <string>

namespace ldcp::pipelines {

struct ModelIdentity {
  std::string name;  // a folder's name, a single file's name without ".safetensors"
  std::string hash;  // first 10 hex digits of the SHA-256 of `hashed_file`
  std::filesystem::path hashed_file;
};

// A single-file checkpoint: its own SHA-256 (A1111's "Model hash" of the same file). A diffusers
// folder has no one file A1111 would hash: the U-Net's weight file is hashed (the one load()
// reads, find_weight_file with `prefer_fp16`; a sharded U-Net: its index file), since the U-Net
// is what fine-tunes change. Reads the file in blocks. Throws naming the file.
ModelIdentity identify_model(const std::filesystem::path& model, bool prefer_fp16);

}  // namespace ldcp::pipelines
