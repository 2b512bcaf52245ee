#pragma once
// A Stable Diffusion model folder in diffusers format (what `save_pretrained` writes and what
// the Hugging Face "stable-diffusion-v1-5" repository holds):
//   model_index.json, text_encoder/, tokenizer/, unet/, vae/, scheduler/ (safety_checker and
//   feature_extractor may be present and are ignored).

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace ldcp::io {

struct ModelFolder {
  std::filesystem::path root;
  nlohmann::json model_index;
  std::filesystem::path text_encoder, tokenizer, unet, vae, scheduler;

  // Checks model_index.json and that every component folder exists with its config;
  // throws ConfigError naming the missing file.
  static ModelFolder open(const std::filesystem::path& root);

  // The component's config.json (scheduler: scheduler_config.json).
  nlohmann::json unet_config() const;
  nlohmann::json vae_config() const;
  nlohmann::json text_encoder_config() const;
  nlohmann::json scheduler_config() const;
};

}  // namespace ldcp::io
