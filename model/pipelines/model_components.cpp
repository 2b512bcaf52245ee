#include "model/pipelines/model_components.h"

#include <system_error>

#include <torch/torch.h>

#include "model/clip/configuration_clip.h"
#include "model/io/json_file.h"
#include "model/io/model_folder.h"
#include "model/io/original_checkpoint_loader.h"
#include "model/models/layers.h"
#include "model/pipelines/demo_model.h"

namespace ldcp::pipelines {
namespace {

ModelComponents load_folder(const std::filesystem::path& dir, const io::LoadOptions& weights,
                            bool channels_last) {
  const auto folder = io::ModelFolder::open(dir);
  ModelComponents out;
  out.tokenizer =
      std::make_unique<clip::ClipTokenizer>(clip::ClipTokenizer::from_folder(folder.tokenizer));
  out.text_encoder = clip::load_clip_text_model(folder.text_encoder, weights);
  io::LoadOptions conv = weights;
  conv.channels_last = channels_last;  // the convolutional networks only
  out.unet = models::load_unet(folder.unet, conv);
  out.vae = models::load_vae(folder.vae, conv);
  out.scheduler_config = folder.scheduler_config();
  return out;
}

// config.from_json, its errors prefixed with where the config came from.
template <class Config>
Config parse_config(const nlohmann::json& json, const std::string& where) {
  try {
    return Config::from_json(json);
  } catch (const io::ConfigError& e) {
    throw io::ConfigError(where + ": " + e.what());
  }
}

ModelComponents load_single_file(const std::filesystem::path& file, io::LoadOptions weights,
                                 bool channels_last, const std::filesystem::path& config_dir) {
  io::refuse_pickle_checkpoint(file);  // before anything else is read
  nlohmann::json text_json, unet_json, vae_json, scheduler_json;
  std::filesystem::path tokenizer_dir;
  std::string architecture, where;
  if (config_dir.empty()) {
    auto configs = sd15_model_configs();
    text_json = std::move(configs.text_encoder);
    unet_json = std::move(configs.unet);
    vae_json = std::move(configs.vae);
    scheduler_json = std::move(configs.scheduler);
    tokenizer_dir = default_vocab_dir();
    architecture = "Stable Diffusion 1.5 (the built-in configs)";
    where = "the built-in SD1.5 config";
  } else {
    const auto folder = io::ModelFolder::open(config_dir);
    text_json = folder.text_encoder_config();
    unet_json = folder.unet_config();
    vae_json = folder.vae_config();
    scheduler_json = folder.scheduler_config();
    tokenizer_dir = folder.tokenizer;
    architecture = "the architecture of " + config_dir.string() + "'s configs";
    where = config_dir.string();
  }
  const auto text_config = parse_config<clip::ClipTextConfig>(text_json, where + " (text_encoder)");
  const auto unet_config =
      parse_config<models::UNet2DConditionConfig>(unet_json, where + " (unet)");
  const auto vae_config = parse_config<models::AutoencoderKLConfig>(vae_json, where + " (vae)");

  // The original layout numbers the U-Net's blocks by one layers_per_block.
  io::OriginalLayout layout;
  layout.unet_layers_per_block = unet_config.layers(0);
  for (size_t b = 1; b < unet_config.num_blocks(); ++b) {
    if (unet_config.layers(b) != layout.unet_layers_per_block) {
      throw io::ConfigError(where +
                            " (unet): layers_per_block differs between blocks, which the "
                            "original single-file layout cannot number");
    }
  }
  layout.vae_blocks = static_cast<int64_t>(vae_config.block_out_channels.size());

  ModelComponents out;
  out.tokenizer =
      std::make_unique<clip::ClipTokenizer>(clip::ClipTokenizer::from_folder(tokenizer_dir));
  out.text_encoder = models::make_uninitialized<clip::ClipTextModel>(weights.dtype, text_config);
  out.unet = models::make_uninitialized<models::UNet2DConditionModel>(weights.dtype, unet_config);
  out.vae = models::make_uninitialized<models::AutoencoderKL>(weights.dtype, vae_config);
  // channels_last only changes 4-D tensors, which the text encoder has none of.
  weights.channels_last = channels_last;
  io::load_original_checkpoint(file, layout,
                               {out.unet.get(), out.vae.get(), out.text_encoder->text_model.get()},
                               weights, architecture);
  out.text_encoder->eval();
  out.unet->eval();
  for (auto& parameter : out.unet->parameters()) parameter.set_requires_grad(false);
  out.vae->eval();
  out.scheduler_config = std::move(scheduler_json);
  return out;
}

}  // namespace

bool is_single_file_model(const std::filesystem::path& model) {
  std::error_code ec;
  return std::filesystem::is_regular_file(model, ec);
}

ModelComponents load_model_components(const std::filesystem::path& model,
                                      const io::LoadOptions& weights, bool channels_last,
                                      const std::filesystem::path& single_file_config) {
  if (is_single_file_model(model)) {
    return load_single_file(model, weights, channels_last, single_file_config);
  }
  return load_folder(model, weights, channels_last);
}

}  // namespace ldcp::pipelines
