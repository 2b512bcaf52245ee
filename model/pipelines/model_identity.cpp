#include "model/pipelines/model_identity.h"

#include "model/io/weights.h"
#include "model/lora/lora_cache.h"

namespace ldcp::pipelines {

std::string LoraFileHashes::hash(const std::string& name) {
  std::filesystem::path file;
  try {
    file = lora::resolve_lora_file(dir_, name);
  } catch (const std::invalid_argument&) {
    return {};
  }
  const std::string key = lora::file_version_key(file);
  {
    std::lock_guard lock(mutex_);
    if (auto it = hashes_.find(key); it != hashes_.end()) return it->second;
  }
  // Hashed outside the lock (a LoRA file is tens of MB); a race hashes the same file twice.
  std::string h = short_file_hash(file);
  std::lock_guard lock(mutex_);
  return hashes_.emplace(key, std::move(h)).first->second;
}

ModelIdentity identify_model(const std::filesystem::path& model, bool prefer_fp16,
                             const std::filesystem::path& gates_file) {
  ModelIdentity id;
  auto path = std::filesystem::absolute(model).lexically_normal();
  if (path.filename().empty()) path = path.parent_path();
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec)) {
    id.name = path.extension() == ".safetensors" ? path.stem().string() : path.filename().string();
    id.hashed_file = path;
  } else {
    id.name = path.filename().string();
    id.hashed_file = io::find_weight_file(path / "unet", prefer_fp16);
  }
  id.hash = short_file_hash(id.hashed_file);
  if (!gates_file.empty()) id.gates_hash = short_file_hash(gates_file);
  return id;
}

std::string png_parameters(const GenerationParams& params, const GenerationResult& result,
                           int64_t index, const ModelIdentity& model) {
  GenerationInfo info;
  info.prompt = params.prompt;
  info.negative_prompt = params.negative_prompt;
  info.steps = params.steps;
  info.sampler = params.sampler;
  info.guidance_scale = params.guidance_scale;
  info.guidance_rescale = params.guidance_rescale;
  info.eta = params.eta;
  info.seed = params.seed;
  info.width = params.width;
  info.height = params.height;
  info.batch_size = params.num_images;
  info.batch_pos = index;
  info.model_name = model.name;
  info.model_hash = model.hash;
  if (params.init_image.defined()) info.denoising_strength = effective_strength(params);
  info.inpainting = params.mask_image.defined();
  info.a1111_prompt_syntax = params.prompt_syntax == PromptSyntax::kA1111;
  info.clip_skip = params.clip_skip;
  info.step_levels = result.step_levels;
  info.gate_scores = model.gate_scores;
  info.gates_file_hash = model.gates_hash;
  // A1111's <lora:NAME:WEIGHT> names the file's stem (ldcp generate also takes a path).
  for (const auto& lora : params.loras) {
    std::string name = std::filesystem::path(lora.name).filename().string();
    const std::string suffix = ".safetensors";
    if (name.size() > suffix.size() && name.ends_with(suffix))
      name.resize(name.size() - suffix.size());
    info.loras.push_back({name, lora.weight,
                          model.lora_hashes ? model.lora_hashes->hash(lora.name) : std::string()});
  }
  return format_generation_parameters(info);
}

}  // namespace ldcp::pipelines
