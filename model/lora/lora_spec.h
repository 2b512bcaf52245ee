#pragma once
// What a request asks of LoRAs: which files (by name) at which weights. Plain C++ (no libtorch),
// so that the pipeline's parameters, the server's validation and the tools share it.

#include <string>
#include <vector>

namespace ldcp::lora {

struct LoraSpec {
  // A file stem in the LoRA directory (NAME.safetensors there); ldcp generate also takes a path.
  std::string name;
  double weight = 1.0;  // diffusers' adapter weight: the branch's scale is weight x alpha / rank
  bool operator==(const LoraSpec& other) const {
    return name == other.name && weight == other.weight;
  }
};

// The largest |weight| a request may ask for (A1111's UI goes to 2; trained LoRAs are used in
// [-2, 2]; anything far beyond only saturates the image).
inline constexpr double kMaxLoraWeight = 8.0;

}  // namespace ldcp::lora
