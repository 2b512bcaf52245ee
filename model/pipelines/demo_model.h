#pragma once
// Random-weight model folders in diffusers format, so that the service and the tools run on a
// fresh machine without downloads. The CLIP vocabulary is the real one (data/clip).

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace ldcp::pipelines {

// Names accepted by write_demo_model: "tiny" (seconds per 256x256 image on two CPU cores) and
// "sd15" (the exact Stable Diffusion 1.5 architecture, ~1.07 B parameters, 4.3 GB in fp32).
const std::vector<std::string>& demo_model_configs();

struct DemoModelOptions {
  std::string config = "tiny";
  uint64_t seed = 0;  // weights are a deterministic function of the seed
  // Folder holding vocab.json and merges.txt; default: the repository's data/clip (or
  // $LDCP_DATA_DIR/clip when set).
  std::filesystem::path vocab_dir;
};

// Writes model_index.json and the text_encoder, tokenizer, unet, vae and scheduler folders
// (config.json + *.safetensors) into `dir`, creating it. Throws std::invalid_argument for an
// unknown config, std::runtime_error for I/O problems (naming the file).
void write_demo_model(const std::filesystem::path& dir, const DemoModelOptions& options = {});

// Stable Diffusion 1.5's component configs: the values of its diffusers repository's
// config.json files and scheduler_config.json (runwayml/stable-diffusion-v1-5). The "sd15" demo
// model and single-file checkpoints (model_components.h) use them.
struct ModelConfigs {
  nlohmann::json text_encoder, unet, vae, scheduler;
};
ModelConfigs sd15_model_configs();

// The folder with the shipped CLIP vocabulary.
std::filesystem::path default_vocab_dir();

}  // namespace ldcp::pipelines
