#pragma once
// What a request asks of LoRAs: which files (by name) at which weights. Plain C++ (no libtorch),
// so that the pipeline's parameters, the server's validation and the tools share it.

#include <stdexcept>
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

// A command line's "NAME:WEIGHT" (ldcp generate --lora, ldcp-client --lora); "NAME" alone is
// weight 1. The weight is after the last ":". Throws std::invalid_argument naming `option`.
inline LoraSpec parse_lora_option(const std::string& text, const std::string& option = "--lora") {
  LoraSpec spec;
  const auto colon = text.rfind(':');
  spec.name = text.substr(0, colon);
  if (colon != std::string::npos) {
    const std::string weight = text.substr(colon + 1);
    size_t used = 0;
    try {
      spec.weight = std::stod(weight, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != weight.size()) {
      throw std::invalid_argument(option + ": '" + text + "' is not NAME:WEIGHT (WEIGHT a number)");
    }
  }
  if (spec.name.empty()) throw std::invalid_argument(option + ": '" + text + "' has no NAME");
  return spec;
}

}  // namespace ldcp::lora
