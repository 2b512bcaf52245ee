#include "model/pipelines/demo_model.h"

#include <cstdlib>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "model/clip/modeling_clip.h"
#include "model/io/safetensors.h"
#include "model/models/autoencoders/autoencoder_kl.h"
#include "model/models/unets/unet_2d_condition.h"

#ifndef LDCP_DEFAULT_DATA_DIR
#define LDCP_DEFAULT_DATA_DIR "data"
#endif

namespace ldcp::pipelines {
namespace {

using nlohmann::json;

struct DemoConfigs {
  json text_encoder, unet, vae;
};

// Widths that keep a 256x256, 10-step guided image within seconds on two cores.
DemoConfigs tiny_configs() {
  DemoConfigs c;
  c.text_encoder = {{"hidden_size", 64}, {"intermediate_size", 128}, {"num_hidden_layers", 2},
                    {"num_attention_heads", 4}};
  c.unet = {{"block_out_channels", {32, 64, 64}},
            {"layers_per_block", 1},
            {"down_block_types", {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"}},
            {"up_block_types", {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"}},
            {"attention_head_dim", 4},
            {"norm_num_groups", 16},
            {"cross_attention_dim", 64},
            {"sample_size", 32}};
  c.vae = {{"block_out_channels", {16, 32, 32, 32}}, {"layers_per_block", 1},
           {"norm_num_groups", 16}, {"sample_size", 256}};
  return c;
}

// Stable Diffusion 1.5's configs (runwayml/stable-diffusion-v1-5).
DemoConfigs sd15_configs() {
  DemoConfigs c;
  c.text_encoder = {{"hidden_size", 768}, {"intermediate_size", 3072}, {"num_hidden_layers", 12},
                    {"num_attention_heads", 12}};
  c.unet = {{"block_out_channels", {320, 640, 1280, 1280}},
            {"layers_per_block", 2},
            {"down_block_types",
             {"CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
              "DownBlock2D"}},
            {"up_block_types",
             {"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"}},
            {"attention_head_dim", 8},
            {"norm_num_groups", 32},
            {"cross_attention_dim", 768},
            {"sample_size", 64}};
  c.vae = {{"block_out_channels", {128, 256, 512, 512}}, {"layers_per_block", 2},
           {"norm_num_groups", 32}, {"sample_size", 512}};
  return c;
}

json text_encoder_config(const json& sizes) {
  json config = {{"architectures", {"CLIPTextModel"}},
                 {"model_type", "clip_text_model"},
                 {"attention_dropout", 0.0},
                 {"bos_token_id", 0},
                 {"eos_token_id", 2},
                 {"pad_token_id", 1},
                 {"hidden_act", "quick_gelu"},
                 {"initializer_factor", 1.0},
                 {"initializer_range", 0.02},
                 {"layer_norm_eps", 1e-5},
                 {"max_position_embeddings", 77},
                 {"projection_dim", 768},
                 {"vocab_size", 49408},
                 {"dtype", "float32"}};
  config.update(sizes);
  return config;
}

json unet_config(const json& sizes) {
  json config = {{"_class_name", "UNet2DConditionModel"},
                 {"act_fn", "silu"},
                 {"center_input_sample", false},
                 {"downsample_padding", 1},
                 {"flip_sin_to_cos", true},
                 {"freq_shift", 0},
                 {"in_channels", 4},
                 {"out_channels", 4},
                 {"mid_block_scale_factor", 1},
                 {"norm_eps", 1e-5},
                 {"use_linear_projection", false}};
  config.update(sizes);
  return config;
}

json vae_config(const json& sizes) {
  json config = {{"_class_name", "AutoencoderKL"},
                 {"act_fn", "silu"},
                 {"in_channels", 3},
                 {"out_channels", 3},
                 {"latent_channels", 4},
                 {"down_block_types", json::array()},
                 {"up_block_types", json::array()},
                 {"scaling_factor", 0.18215}};
  config.update(sizes);
  for (size_t i = 0; i < config["block_out_channels"].size(); ++i) {
    config["down_block_types"].push_back("DownEncoderBlock2D");
    config["up_block_types"].push_back("UpDecoderBlock2D");
  }
  return config;
}

const json& scheduler_config() {
  static const json config = {{"_class_name", "PNDMScheduler"},
                              {"beta_start", 0.00085},
                              {"beta_end", 0.012},
                              {"beta_schedule", "scaled_linear"},
                              {"num_train_timesteps", 1000},
                              {"set_alpha_to_one", false},
                              {"skip_prk_steps", true},
                              {"steps_offset", 1},
                              {"clip_sample", false},
                              {"trained_betas", nullptr}};
  return config;
}

void write_text(const std::filesystem::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

void write_json(const std::filesystem::path& path, const json& value) {
  write_text(path, value.dump(2) + "\n");
}

void write_weights(const std::filesystem::path& path, torch::nn::Module& module) {
  io::TensorMap tensors;
  for (const auto& item : module.named_parameters()) tensors[item.key()] = item.value().detach();
  io::save_safetensors(path, tensors, {{"format", "pt"}});
}

void copy_into(const std::filesystem::path& from, const std::filesystem::path& to) {
  std::error_code ec;
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) throw std::runtime_error("cannot copy " + from.string() + ": " + ec.message());
}

}  // namespace

const std::vector<std::string>& demo_model_configs() {
  static const std::vector<std::string> names = {"tiny", "sd15"};
  return names;
}

ModelConfigs sd15_model_configs() {
  const auto sizes = sd15_configs();
  return {text_encoder_config(sizes.text_encoder), unet_config(sizes.unet), vae_config(sizes.vae),
          scheduler_config()};
}

std::filesystem::path default_vocab_dir() {
  if (const char* dir = std::getenv("LDCP_DATA_DIR"); dir != nullptr && *dir != '\0') {
    return std::filesystem::path(dir) / "clip";
  }
  return std::filesystem::path(LDCP_DEFAULT_DATA_DIR) / "clip";
}

void write_demo_model(const std::filesystem::path& dir, const DemoModelOptions& options) {
  DemoConfigs sizes;
  if (options.config == "tiny") {
    sizes = tiny_configs();
  } else if (options.config == "sd15") {
    sizes = sd15_configs();
  } else {
    throw std::invalid_argument("unknown demo model config \"" + options.config +
                                "\" (known: tiny, sd15)");
  }
  const auto vocab_dir = options.vocab_dir.empty() ? default_vocab_dir() : options.vocab_dir;
  for (const char* name : {"vocab.json", "merges.txt"}) {
    if (!std::filesystem::exists(vocab_dir / name)) {
      throw std::runtime_error("CLIP vocabulary file " + (vocab_dir / name).string() +
                               " not found (set LDCP_DATA_DIR to the repository's data folder)");
    }
  }
  for (const char* sub : {"text_encoder", "tokenizer", "unet", "vae", "scheduler"}) {
    std::filesystem::create_directories(dir / sub);
  }
  torch::manual_seed(options.seed);
  torch::NoGradGuard no_grad;

  const json text_config = text_encoder_config(sizes.text_encoder);
  write_json(dir / "text_encoder" / "config.json", text_config);
  {
    clip::ClipTextModel text_encoder(clip::ClipTextConfig::from_json(text_config));
    write_weights(dir / "text_encoder" / "model.safetensors", *text_encoder);
  }

  const json unet = unet_config(sizes.unet);
  write_json(dir / "unet" / "config.json", unet);
  {
    models::UNet2DConditionModel model(models::UNet2DConditionConfig::from_json(unet));
    write_weights(dir / "unet" / "diffusion_pytorch_model.safetensors", *model);
  }

  const json vae = vae_config(sizes.vae);
  write_json(dir / "vae" / "config.json", vae);
  {
    models::AutoencoderKL model(models::AutoencoderKLConfig::from_json(vae));
    write_weights(dir / "vae" / "diffusion_pytorch_model.safetensors", *model);
  }

  write_json(dir / "scheduler" / "scheduler_config.json", scheduler_config());
  copy_into(vocab_dir / "vocab.json", dir / "tokenizer" / "vocab.json");
  copy_into(vocab_dir / "merges.txt", dir / "tokenizer" / "merges.txt");
  write_json(dir / "tokenizer" / "tokenizer_config.json",
             {{"tokenizer_class", "CLIPTokenizer"},
              {"bos_token", "<|startoftext|>"},
              {"eos_token", "<|endoftext|>"},
              {"unk_token", "<|endoftext|>"},
              {"pad_token", "<|endoftext|>"},
              {"model_max_length", 77}});
  write_json(dir / "model_index.json",
             {{"_class_name", "StableDiffusionPipeline"},
              {"feature_extractor", {nullptr, nullptr}},
              {"safety_checker", {nullptr, nullptr}},
              {"requires_safety_checker", false},
              {"scheduler", {"diffusers", "PNDMScheduler"}},
              {"text_encoder", {"transformers", "CLIPTextModel"}},
              {"tokenizer", {"transformers", "CLIPTokenizer"}},
              {"unet", {"diffusers", "UNet2DConditionModel"}},
              {"vae", {"diffusers", "AutoencoderKL"}}});
}

}  // namespace ldcp::pipelines
