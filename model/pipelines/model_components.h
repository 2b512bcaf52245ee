#pragma once
// What a StableDiffusionPipeline is made of (tokenizer, CLIP text encoder, U-Net, VAE, scheduler
// config), from either a diffusers model folder or a single-file checkpoint in the original
// CompVis / A1111 layout (model/io/original_checkpoint.h), such as
// v1-5-pruned-emaonly.safetensors. A single file holds weights only: its component configs and
// scheduler config are Stable Diffusion 1.5's (demo_model.h's sd15_model_configs) and its
// tokenizer the shipped CLIP vocabulary (data/clip, or $LDCP_DATA_DIR/clip), unless a diffusers
// folder is given whose configs and tokenizer replace them (as diffusers' from_single_file
// config=).

#include <filesystem>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "model/clip/modeling_clip.h"
#include "model/clip/tokenization_clip.h"
#include "model/io/weights.h"
#include "model/models/autoencoders/autoencoder_kl.h"
#include "model/models/unets/unet_2d_condition.h"

namespace ldcp::pipelines {

struct ModelComponents {
  std::unique_ptr<clip::ClipTokenizer> tokenizer;
  clip::ClipTextModel text_encoder{nullptr};
  models::UNet2DConditionModel unet{nullptr};
  models::AutoencoderKL vae{nullptr};
  nlohmann::json scheduler_config;
};

// True when `model` names a file (a single-file checkpoint) rather than a folder.
bool is_single_file_model(const std::filesystem::path& model);

// Loads `model`, a diffusers folder or a single .safetensors file; the modules in eval mode, on
// the CPU, in `weights.dtype` (each tensor converted as it is read). `channels_last` stores the
// U-Net's and VAE's convolution kernels NHWC (LoadOptions.channels_last). `single_file_config`
// (a diffusers folder; its weights are not read) replaces the built-in SD1.5 configs of a single
// file. Pickle checkpoints (.ckpt, .pt, .bin) are refused. Throws with a message naming the
// offending file.
ModelComponents load_model_components(const std::filesystem::path& model,
                                      const io::LoadOptions& weights, bool channels_last,
                                      const std::filesystem::path& single_file_config = {});

}  // namespace ldcp::pipelines
