#include "model/io/original_checkpoint.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <string_view>
#include <utility>

namespace ldcp::io {
namespace {

using std::string_view;

constexpr string_view kUNetPrefix = "model.diffusion_model.";
constexpr string_view kVaePrefix = "first_stage_model.";
constexpr string_view kClipPrefix = "cond_stage_model.transformer.";
constexpr string_view kEmaPrefix = "model_ema.";
constexpr string_view kTextModel = "text_model.";

// The buffers of ldm's DDPM / LatentDiffusion that checkpoints carry beside the weights: the
// training schedule, which the scheduler config replaces.
constexpr std::array<string_view, 15> kScheduleBuffers = {
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "logvar",
    "model_ema.decay",
    "model_ema.num_updates",
};

// Removes `prefix` from the front of `s`; false (s unchanged) when it is not there.
bool consume(string_view& s, string_view prefix) {
  if (s.substr(0, prefix.size()) != prefix) return false;
  s.remove_prefix(prefix.size());
  return true;
}

bool is_param(string_view leaf) { return leaf == "weight" || leaf == "bias"; }

// Dot-separated names of letters, digits and '_', none empty.
bool valid_path(string_view s) {
  if (s.empty() || s.front() == '.' || s.back() == '.') return false;
  char previous = 0;
  for (const char c : s) {
    const bool word = std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_';
    if (!word && c != '.') return false;
    if (c == '.' && previous == '.') return false;
    previous = c;
  }
  return true;
}

// "<index>." at the front of `s`: a decimal index of at most 6 digits without leading zeros
// (one spelling per index, so two keys never name one block), `s` advanced past the dot.
std::optional<int64_t> take_index(string_view& s) {
  const auto dot = s.find('.');
  if (dot == string_view::npos || dot == 0 || dot > 6) return std::nullopt;
  const auto digits = s.substr(0, dot);
  if (digits.size() > 1 && digits.front() == '0') return std::nullopt;
  int64_t value = 0;
  for (const char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    value = value * 10 + (c - '0');
  }
  s.remove_prefix(dot + 1);
  return value;
}

std::string str(string_view s) { return std::string(s); }
std::string num(int64_t n) { return std::to_string(n); }

// A ResNet block's modules (ldm ResBlock -> diffusers ResnetBlock2D).
constexpr std::pair<string_view, string_view> kUNetResnetNames[] = {
    {"in_layers.0.", "norm1."},          {"in_layers.2.", "conv1."},
    {"emb_layers.1.", "time_emb_proj."}, {"out_layers.0.", "norm2."},
    {"out_layers.3.", "conv2."},         {"skip_connection.", "conv_shortcut."},
};

// The U-Net's modules outside the blocks.
constexpr std::pair<string_view, string_view> kUNetFixedNames[] = {
    {"time_embed.0.", "time_embedding.linear_1."},
    {"time_embed.2.", "time_embedding.linear_2."},
    {"input_blocks.0.0.", "conv_in."},
    {"out.0.", "conv_norm_out."},
    {"out.2.", "conv_out."},
};

// A ResNet block's parameter, `rest` after the block.
std::optional<std::string> unet_resnet(string_view rest) {
  for (const auto& [from, to] : kUNetResnetNames) {
    string_view leaf = rest;
    if (consume(leaf, from) && is_param(leaf)) return str(to) + str(leaf);
  }
  return std::nullopt;
}

std::optional<std::string> unet_attention(string_view rest) {
  if (!valid_path(rest)) return std::nullopt;
  return str(rest);
}

// The U-Net parameter of `s` (after "model.diffusion_model."); L layers per block.
std::optional<std::string> unet_name(string_view s, int64_t L) {
  for (const auto& [from, to] : kUNetFixedNames) {
    string_view leaf = s;
    if (consume(leaf, from)) {
      if (is_param(leaf)) return str(to) + str(leaf);
      return std::nullopt;
    }
  }
  auto prefixed = [](std::string prefix, std::optional<std::string> rest) {
    return rest ? std::optional<std::string>(prefix + *rest) : std::nullopt;
  };
  if (consume(s, "input_blocks.")) {
    const auto i = take_index(s);
    const auto sub = take_index(s);
    if (!i || !sub || *i == 0) return std::nullopt;
    const int64_t block = (*i - 1) / (L + 1), layer = (*i - 1) % (L + 1);
    const std::string down = "down_blocks." + num(block) + ".";
    if (layer == L) {  // the block's downsampler
      if (*sub == 0 && consume(s, "op.") && is_param(s)) {
        return down + "downsamplers.0.conv." + str(s);
      }
      return std::nullopt;
    }
    if (*sub == 0) return prefixed(down + "resnets." + num(layer) + ".", unet_resnet(s));
    if (*sub == 1) return prefixed(down + "attentions." + num(layer) + ".", unet_attention(s));
    return std::nullopt;
  }
  if (consume(s, "middle_block.")) {
    const auto m = take_index(s);
    if (!m) return std::nullopt;
    if (*m == 0) return prefixed("mid_block.resnets.0.", unet_resnet(s));
    if (*m == 1) return prefixed("mid_block.attentions.0.", unet_attention(s));
    if (*m == 2) return prefixed("mid_block.resnets.1.", unet_resnet(s));
    return std::nullopt;
  }
  if (consume(s, "output_blocks.")) {
    const auto i = take_index(s);
    const auto sub = take_index(s);
    if (!i || !sub) return std::nullopt;
    const int64_t block = *i / (L + 1), layer = *i % (L + 1);
    const std::string up = "up_blocks." + num(block) + ".";
    if (*sub == 0) return prefixed(up + "resnets." + num(layer) + ".", unet_resnet(s));
    // The last layer's upsampler follows its ResNet (.1) or its attention (.2); an attention
    // block has no child named "conv".
    if ((*sub == 1 || *sub == 2) && consume(s, "conv.")) {
      if (layer == L && is_param(s)) return up + "upsamplers.0.conv." + str(s);
      return std::nullopt;
    }
    if (*sub == 1) return prefixed(up + "attentions." + num(layer) + ".", unet_attention(s));
    return std::nullopt;
  }
  return std::nullopt;
}

// Where the original layout may hold the diffusers U-Net module `m` (with a trailing "."):
// unet_name's block numbering run backwards. Each candidate is checked against unet_name.
std::vector<std::string> unet_module_candidates(string_view m, int64_t L) {
  std::vector<std::string> out;
  for (const auto& [from, to] : kUNetFixedNames) {
    if (m == to) out.push_back(str(from));
  }
  auto resnet = [&](const std::string& prefix, string_view rest) {
    for (const auto& [from, to] : kUNetResnetNames) {
      if (rest == to) out.push_back(prefix + str(from));
    }
  };
  if (consume(m, "down_blocks.")) {
    const auto b = take_index(m);
    if (!b) return out;
    const int64_t first = *b * (L + 1) + 1;  // the block's first input block
    if (consume(m, "resnets.")) {
      if (const auto l = take_index(m)) resnet("input_blocks." + num(first + *l) + ".0.", m);
    } else if (consume(m, "attentions.")) {
      if (const auto l = take_index(m)) {
        out.push_back("input_blocks." + num(first + *l) + ".1." + str(m));
      }
    } else if (m == "downsamplers.0.conv.") {
      out.push_back("input_blocks." + num(first + L) + ".0.op.");
    }
  } else if (consume(m, "mid_block.")) {
    if (consume(m, "resnets.0.")) {
      resnet("middle_block.0.", m);
    } else if (consume(m, "attentions.0.")) {
      out.push_back("middle_block.1." + str(m));
    } else if (consume(m, "resnets.1.")) {
      resnet("middle_block.2.", m);
    }
  } else if (consume(m, "up_blocks.")) {
    const auto b = take_index(m);
    if (!b) return out;
    const int64_t first = *b * (L + 1);
    if (consume(m, "resnets.")) {
      if (const auto l = take_index(m)) resnet("output_blocks." + num(first + *l) + ".0.", m);
    } else if (consume(m, "attentions.")) {
      if (const auto l = take_index(m)) {
        out.push_back("output_blocks." + num(first + *l) + ".1." + str(m));
      }
    } else if (m == "upsamplers.0.conv.") {
      // After the last layer's ResNet (a block without attentions) or its attention.
      for (const char* sub : {".1.conv.", ".2.conv."}) {
        out.push_back("output_blocks." + num(first + L) + sub);
      }
    }
  }
  return out;
}

// A VAE ResNet's parameter (ldm ResnetBlock -> diffusers ResnetBlock2D).
std::optional<std::string> vae_resnet(string_view rest) {
  static constexpr std::pair<string_view, string_view> kNames[] = {
      {"norm1.", "norm1."},
      {"conv1.", "conv1."},
      {"norm2.", "norm2."},
      {"conv2.", "conv2."},
      {"nin_shortcut.", "conv_shortcut."},
  };
  for (const auto& [from, to] : kNames) {
    string_view leaf = rest;
    if (consume(leaf, from) && is_param(leaf)) return str(to) + str(leaf);
  }
  return std::nullopt;
}

// The VAE target of `s` (after "first_stage_model."); N blocks per side.
std::optional<OriginalTarget> vae_target(string_view s, int64_t N) {
  auto target = [](std::string name, bool conv_to_linear = false) {
    return std::optional<OriginalTarget>(
        OriginalTarget{OriginalPart::kVae, std::move(name), conv_to_linear});
  };
  auto prefixed = [&](const std::string& prefix, std::optional<std::string> rest) {
    return rest ? target(prefix + *rest) : std::nullopt;
  };
  for (const string_view conv : {"quant_conv.", "post_quant_conv."}) {
    string_view leaf = s;
    if (consume(leaf, conv)) return is_param(leaf) ? target(str(s)) : std::nullopt;
  }
  string_view rest = s;
  const bool encoder = consume(rest, "encoder.");
  if (!encoder && !consume(rest, "decoder.")) return std::nullopt;
  const std::string side = encoder ? "encoder." : "decoder.";

  static constexpr std::pair<string_view, string_view> kFixed[] = {
      {"conv_in.", "conv_in."}, {"conv_out.", "conv_out."}, {"norm_out.", "conv_norm_out."}};
  for (const auto& [from, to] : kFixed) {
    string_view leaf = rest;
    if (consume(leaf, from))
      return is_param(leaf) ? target(side + str(to) + str(leaf)) : std::nullopt;
  }
  if (consume(rest, "mid.")) {
    if (consume(rest, "block_1.")) return prefixed(side + "mid_block.resnets.0.", vae_resnet(rest));
    if (consume(rest, "block_2.")) return prefixed(side + "mid_block.resnets.1.", vae_resnet(rest));
    if (!consume(rest, "attn_1.")) return std::nullopt;
    static constexpr std::pair<string_view, string_view> kAttention[] = {
        {"norm.", "group_norm."},   {"q.", "to_q."}, {"k.", "to_k."}, {"v.", "to_v."},
        {"proj_out.", "to_out.0."},
    };
    for (const auto& [from, to] : kAttention) {
      string_view leaf = rest;
      if (consume(leaf, from) && is_param(leaf)) {
        const bool linear_weight = from != "norm." && leaf == "weight";
        return target(side + "mid_block.attentions.0." + str(to) + str(leaf), linear_weight);
      }
    }
    return std::nullopt;
  }
  if (!consume(rest, encoder ? "down." : "up.")) return std::nullopt;
  const auto i = take_index(rest);
  if (!i || *i >= N) return std::nullopt;
  // The decoder's up.i runs at the resolution of encoder's down.i: diffusers numbers the
  // up blocks in the order they run, from the lowest resolution.
  const std::string block =
      side + (encoder ? "down_blocks." + num(*i) : "up_blocks." + num(N - 1 - *i)) + ".";
  if (consume(rest, "block.")) {
    const auto j = take_index(rest);
    if (!j) return std::nullopt;
    return prefixed(block + "resnets." + num(*j) + ".", vae_resnet(rest));
  }
  if (consume(rest, encoder ? "downsample.conv." : "upsample.conv.")) {
    if (!is_param(rest)) return std::nullopt;
    return target(block + (encoder ? "downsamplers" : "upsamplers") + ".0.conv." + str(rest));
  }
  return std::nullopt;
}

}  // namespace

const char* original_part_name(OriginalPart part) {
  switch (part) {
    case OriginalPart::kUNet:
      return "unet";
    case OriginalPart::kVae:
      return "vae";
    case OriginalPart::kTextEncoder:
      return "text_encoder";
  }
  return "?";
}

OriginalKey map_original_key(const std::string& key, const OriginalLayout& layout) {
  OriginalKey out;
  string_view s = key;
  if (std::find(kScheduleBuffers.begin(), kScheduleBuffers.end(), s) != kScheduleBuffers.end() ||
      consume(s, kEmaPrefix)) {
    out.kind = OriginalKeyKind::kIgnored;
    return out;
  }
  if (consume(s, kUNetPrefix)) {
    if (auto name = unet_name(s, layout.unet_layers_per_block)) {
      out.kind = OriginalKeyKind::kTensor;
      out.target = {OriginalPart::kUNet, std::move(*name), false};
    }
    return out;
  }
  if (consume(s, kVaePrefix)) {
    if (auto target = vae_target(s, layout.vae_blocks)) {
      out.kind = OriginalKeyKind::kTensor;
      out.target = std::move(*target);
    }
    return out;
  }
  if (consume(s, kClipPrefix)) {
    consume(s, kTextModel);  // transformers' layout; older files lack the level
    if (s == "embeddings.position_ids") {
      out.kind = OriginalKeyKind::kIgnored;
    } else if (valid_path(s)) {
      out.kind = OriginalKeyKind::kTensor;
      out.target = {OriginalPart::kTextEncoder, str(s), false};
    }
    return out;
  }
  return out;
}

std::vector<std::string> original_unet_modules(const std::string& module_path,
                                               const OriginalLayout& layout) {
  std::vector<std::string> out;
  const int64_t L = layout.unet_layers_per_block;
  if (L < 1 || L > 64 || !valid_path(module_path)) return out;
  const std::string module = module_path + ".";
  for (auto& candidate : unet_module_candidates(module, L)) {
    // Only what the checkpoint mapping sends to this module's weight (one mapping, one place).
    const auto name = unet_name(candidate + "weight", L);
    if (!name || *name != module + "weight") continue;
    candidate.pop_back();
    if (std::find(out.begin(), out.end(), candidate) == out.end()) out.push_back(candidate);
  }
  return out;
}

OriginalKeyMap map_original_keys(const std::vector<std::string>& keys, const OriginalLayout& layout,
                                 const std::string& source) {
  if (layout.unet_layers_per_block < 1 || layout.unet_layers_per_block > 64 ||
      layout.vae_blocks < 1 || layout.vae_blocks > 64) {
    throw OriginalCheckpointError(source + ": unsupported layout (U-Net layers per block " +
                                  num(layout.unet_layers_per_block) + ", VAE blocks " +
                                  num(layout.vae_blocks) + ")");
  }
  OriginalKeyMap out;
  std::map<std::pair<OriginalPart, std::string>, const std::string*> by_target;
  for (const auto& key : keys) {
    auto mapped = map_original_key(key, layout);
    if (mapped.kind == OriginalKeyKind::kUnknown) {
      out.unknown.push_back(key);
      continue;
    }
    if (mapped.kind == OriginalKeyKind::kIgnored) {
      out.ignored.push_back(key);
      string_view s = key;
      if (consume(s, kEmaPrefix) && s != "decay" && s != "num_updates") out.has_ema_copy = true;
      continue;
    }
    if (mapped.target.part == OriginalPart::kTextEncoder) {
      string_view s = key;
      consume(s, kClipPrefix);
      if (!consume(s, kTextModel)) out.old_clip_layout = true;
    }
    const auto [it, added] =
        by_target.emplace(std::make_pair(mapped.target.part, mapped.target.name), &key);
    if (!added) {
      throw OriginalCheckpointError(source + ": keys \"" + short_key(*it->second) + "\" and \"" +
                                    short_key(key) + "\" both map to the " +
                                    original_part_name(mapped.target.part) + "'s \"" +
                                    short_key(mapped.target.name) + "\"");
    }
    out.tensors.emplace(key, std::move(mapped.target));
  }
  return out;
}

std::string short_key(const std::string& key, size_t max_chars) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (const char c : key) {
    const auto byte = static_cast<unsigned char>(c);
    const bool printable = byte >= 0x20 && byte < 0x7f && c != '"' && c != '\\';
    const size_t width = printable ? 1 : 4;
    if (out.size() + width > max_chars) return out + "...";
    if (printable) {
      out += c;
    } else {
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 0xf];
    }
  }
  return out;
}

std::string key_list(const std::string& what, const std::vector<std::string>& items,
                     size_t max_items) {
  std::string out = num(static_cast<int64_t>(items.size())) + " " + what + ": ";
  for (size_t i = 0; i < items.size() && i < max_items; ++i) {
    out += (i > 0 ? ", " : "") + items[i];
  }
  if (items.size() > max_items)
    out += ", and " + num(static_cast<int64_t>(items.size() - max_items)) + " more";
  return out;
}

std::optional<std::string> pickle_refusal(const std::filesystem::path& path,
                                          const std::string& first_bytes) {
  std::string extension = path.extension().string();
  std::transform(extension.begin(), extension.end(), extension.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  const bool pickle_name = extension == ".ckpt" || extension == ".pt" || extension == ".pth" ||
                           extension == ".bin" || extension == ".pkl";
  // A safetensors file has its JSON header's '{' at byte 8. A torch.save file is a zip archive
  // ("PK\3\4") or, before torch 1.6, a bare pickle (protocol opcode 0x80, protocol 2-5).
  bool pickle_bytes = false;
  if (first_bytes.size() >= 2 && !(first_bytes.size() > 8 && first_bytes[8] == '{')) {
    const auto b0 = static_cast<unsigned char>(first_bytes[0]);
    const auto b1 = static_cast<unsigned char>(first_bytes[1]);
    pickle_bytes =
        first_bytes.compare(0, 4, "PK\x03\x04") == 0 || (b0 == 0x80 && b1 >= 2 && b1 <= 5);
  }
  if (!pickle_name && !pickle_bytes) return std::nullopt;
  const std::string what = pickle_name ? "a pickle checkpoint (" + extension + ")"
                                       : "a pickle / torch.save archive, not safetensors";
  return path.string() + ": " + what +
         "; it is not loaded, because unpickling a file runs whatever code it holds. Convert it "
         "to safetensors once, with a Python that has torch and safetensors, e.g.\n"
         "  python -c \"import sys, torch, safetensors.torch as st; "
         "sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True); "
         "sd = sd.get('state_dict', sd); "
         "st.save_file({k: v.contiguous().clone() for k, v in sd.items() "
         "if isinstance(v, torch.Tensor)}, sys.argv[2])\" MODEL.ckpt MODEL.safetensors\n"
         "(weights_only=True refuses files that would run code), then pass MODEL.safetensors; "
         "or save a diffusers folder with diffusers' "
         "StableDiffusionPipeline.from_single_file(...).save_pretrained(DIR) and pass DIR.";
}

}  // namespace ldcp::io
