#include "model/lora/lora_file.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "model/io/original_checkpoint.h"

namespace ldcp::lora {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}
bool starts_with(const std::string& s, const std::string& prefix) {
  return s.rfind(prefix, 0) == 0;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

bool floating(const std::string& dtype) {
  return dtype == "F32" || dtype == "F16" || dtype == "BF16" || dtype == "F64";
}

// The factors of one layer as the file names them, and the name (key without its suffix) and
// first key that named the layer.
struct Pending {
  std::string down, up, alpha;
  std::string stem, first_key;
  bool conflict = false;  // a second name for the layer is reported
};

// Kohya's suffixes; other LyCORIS kinds (LoHa, LoKr, Tucker, DoRA) are named in the error.
constexpr const char* kKohyaDown = ".lora_down.weight";
constexpr const char* kKohyaUp = ".lora_up.weight";
constexpr const char* kKohyaAlpha = ".alpha";
constexpr const char* kPeftDown = ".lora_A.weight";
constexpr const char* kPeftUp = ".lora_B.weight";

bool kohya_key(const std::string& key) {
  return starts_with(key, "lora_unet_") || starts_with(key, "lora_te");
}
bool peft_key(const std::string& key) {
  return (starts_with(key, "unet.") || starts_with(key, "text_encoder.")) &&
         (ends_with(key, kPeftDown) || ends_with(key, kPeftUp));
}

PeftSettings peft_settings(const std::string& file, const io::Metadata& metadata,
                           const std::string& prefix, std::vector<std::string>& problems) {
  PeftSettings settings;
  const auto it = metadata.find("lora_adapter_metadata");
  if (it == metadata.end()) return settings;
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(it->second);
  } catch (const nlohmann::json::exception&) {
    problems.push_back("lora_adapter_metadata is not JSON");
    return settings;
  }
  if (!json.is_object()) {
    problems.push_back("lora_adapter_metadata is not a JSON object");
    return settings;
  }
  auto number = [&](const nlohmann::json& v, const std::string& what, double& out) {
    if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() <= 0) {
      problems.push_back("lora_adapter_metadata: " + what + " is not a positive number");
      return false;
    }
    out = v.get<double>();
    return true;
  };
  (void)file;
  for (const auto& [key, value] : json.items()) {
    if (!starts_with(key, prefix + ".")) continue;
    const std::string name = key.substr(prefix.size() + 1);
    if (name == "lora_alpha") {
      settings.has_alpha = number(value, key, settings.lora_alpha);
    } else if (name == "use_rslora") {
      settings.use_rslora = value.is_boolean() && value.get<bool>();
    } else if (name == "use_dora" && value.is_boolean() && value.get<bool>()) {
      problems.push_back("lora_adapter_metadata: " + key + " (DoRA) is not supported");
    } else if (name == "alpha_pattern" && value.is_object()) {
      for (const auto& [module, alpha] : value.items()) {
        double a = 0;
        if (number(alpha, key + "." + io::short_key(module, 48), a)) {
          settings.alpha_pattern[module] = a;
        }
      }
    }
  }
  return settings;
}

// Checks one layer's factor shapes against its target; appends what does not fit.
int64_t check_factors(const TargetLayer& t, const io::TensorInfo& down, const io::TensorInfo& up,
                      const std::string& name, std::vector<std::string>& problems) {
  const size_t before = problems.size();
  for (const auto* info : {&down, &up}) {
    if (!floating(info->dtype)) {
      problems.push_back(name + ": dtype " + io::short_key(info->dtype, 12) +
                         " (factors must be floating point)");
    }
  }
  const auto& d = down.shape;
  const auto& u = up.shape;
  const int64_t rank = d.empty() ? 0 : d[0];
  if (rank < 1 || rank > kMaxLoraRank) {
    problems.push_back(name + ": rank " + std::to_string(rank) + " outside 1.." +
                       std::to_string(kMaxLoraRank));
    return 0;
  }
  const bool one_by_one = t.kernel_h == 1 && t.kernel_w == 1;
  bool ok;
  if (!t.conv) {
    ok = d.size() == 2 && d[1] == t.in && u.size() == 2 && u[0] == t.out && u[1] == rank;
  } else {
    const bool down_ok =
        (d.size() == 4 && d[1] == t.in && d[2] == t.kernel_h && d[3] == t.kernel_w) ||
        (one_by_one && d.size() == 2 && d[1] == t.in);
    const bool up_ok = (u.size() == 4 && u[0] == t.out && u[1] == rank && u[2] == 1 && u[3] == 1) ||
                       (u.size() == 2 && u[0] == t.out && u[1] == rank);
    ok = down_ok && up_ok;
  }
  if (!ok) {
    const std::string expected =
        t.conv
            ? "[rank, " + std::to_string(t.in) + ", " + std::to_string(t.kernel_h) + ", " +
                  std::to_string(t.kernel_w) + "] and [" + std::to_string(t.out) + ", rank, 1, 1]"
            : "[rank, " + std::to_string(t.in) + "] and [" + std::to_string(t.out) + ", rank]";
    problems.push_back(name + ": factors " + shape_text(d) + " and " + shape_text(u) +
                       " do not fit the layer (expected " + expected + ")");
  }
  return problems.size() == before ? rank : 0;
}

}  // namespace

std::string layout_name(LoraLayout layout) {
  return layout == LoraLayout::kKohya ? "kohya" : "peft";
}

std::string component_name(LoraComponent component) {
  return component == LoraComponent::kUNet ? "unet" : "text_encoder";
}

std::string kohya_name(LoraComponent component, const std::string& path) {
  std::string name = component == LoraComponent::kUNet ? "lora_unet_" : "lora_te_";
  for (char c : path) name += c == '.' ? '_' : c;
  return name;
}

LoraPlan plan_lora(const std::string& file, const std::map<std::string, io::TensorInfo>& tensors,
                   const io::Metadata& metadata, const std::vector<TargetLayer>& targets,
                   int64_t unet_layers_per_block) {
  LoraPlan plan;
  bool any_kohya = false, any_peft = false;
  for (const auto& [key, info] : tensors) {
    any_kohya = any_kohya || kohya_key(key);
    any_peft = any_peft || peft_key(key);
  }
  if (any_kohya && any_peft) {
    throw LoraFileError(file +
                        ": mixes the kohya (lora_unet_*, lora_te_*) and the PEFT "
                        "(unet.*.lora_A.weight) layouts");
  }
  if (!any_kohya && !any_peft) {
    throw LoraFileError(file +
                        ": not a LoRA file: no kohya keys (lora_unet_*, lora_te_*) and no "
                        "diffusers/PEFT keys (unet.*.lora_A.weight, text_encoder.*)");
  }
  plan.layout = any_kohya ? LoraLayout::kKohya : LoraLayout::kPeft;

  // Each layout's names of the targets.
  std::unordered_map<std::string, size_t> by_name;
  std::vector<std::string> problems;
  auto add_name = [&](LoraComponent component, const std::string& path, size_t i) {
    const std::string name = plan.layout == LoraLayout::kKohya
                                 ? kohya_name(component, path)
                                 : component_name(component) + "." + path;
    const auto [it, added] = by_name.emplace(name, i);
    if (!added && it->second != i) {
      throw LoraFileError(file + ": two layers of the model share the LoRA name " + name);
    }
  };
  const std::string text_model = "text_model.";
  io::OriginalLayout original;
  original.unet_layers_per_block = unet_layers_per_block;
  for (size_t i = 0; i < targets.size(); ++i) {
    const auto& t = targets[i];
    add_name(t.component, t.path, i);
    // kohya U-Net names may follow the original (LDM / SGM) module tree instead:
    // "lora_unet_input_blocks_1_0_in_layers_2" for down_blocks.0.resnets.0.conv1.
    if (plan.layout == LoraLayout::kKohya && t.component == LoraComponent::kUNet &&
        unet_layers_per_block > 0) {
      for (const auto& path : io::original_unet_modules(t.path, original)) {
        add_name(t.component, path, i);
      }
    }
    // The text encoder's layers also without transformers 4's "text_model." level (files that
    // diffusers writes with transformers 5: "text_encoder.encoder.layers.0...").
    if (t.component == LoraComponent::kTextEncoder && starts_with(t.path, text_model)) {
      add_name(t.component, t.path.substr(text_model.size()), i);
    }
  }

  const std::string down_suffix = plan.layout == LoraLayout::kKohya ? kKohyaDown : kPeftDown;
  const std::string up_suffix = plan.layout == LoraLayout::kKohya ? kKohyaUp : kPeftUp;
  std::map<size_t, Pending> pending;
  std::vector<std::string> unknown, unmatched;
  for (const auto& [key, info] : tensors) {
    std::string stem;
    std::string* slot = nullptr;
    Pending* entry = nullptr;
    for (const auto& suffix : {down_suffix, up_suffix, std::string(kKohyaAlpha)}) {
      if (!ends_with(key, suffix)) continue;
      if (suffix == kKohyaAlpha && plan.layout != LoraLayout::kKohya) break;
      stem = key.substr(0, key.size() - suffix.size());
      const auto it = by_name.find(stem);
      if (it == by_name.end()) break;
      entry = &pending[it->second];
      slot = suffix == down_suffix ? &entry->down
             : suffix == up_suffix ? &entry->up
                                   : &entry->alpha;
      break;
    }
    if (stem.empty()) {
      unknown.push_back(io::short_key(key));
    } else if (!slot) {
      unmatched.push_back(io::short_key(key));
    } else if (!entry->stem.empty() && entry->stem != stem) {
      // Two names of one layer (e.g. its diffusers and its original-layout kohya name).
      if (!entry->conflict) {
        problems.push_back("keys " + io::short_key(entry->first_key) + " and " +
                           io::short_key(key) + " name the same layer (" +
                           component_name(targets[by_name.at(stem)].component) + " " +
                           io::short_key(targets[by_name.at(stem)].path) + ")");
      }
      entry->conflict = true;
    } else {
      if (entry->stem.empty()) entry->stem = stem, entry->first_key = key;
      *slot = key;
    }
  }
  if (!unknown.empty()) {
    problems.push_back(io::key_list(
        "keys of no LoRA factor this reader knows (it reads " + down_suffix + ", " + up_suffix +
            (plan.layout == LoraLayout::kKohya ? ", .alpha; not LoHa, LoKr, Tucker or DoRA" : "") +
            ")",
        unknown));
  }
  if (!unmatched.empty()) {
    problems.push_back(io::key_list("keys naming no Linear or Conv2d layer of this model's " +
                                        std::string("U-Net or text encoder"),
                                    unmatched));
  }
  for (const auto& [index, p] : pending) {
    if (p.conflict) continue;
    const auto& t = targets[index];
    const std::string name = io::short_key(p.down.empty() ? p.up : p.down);
    if (p.down.empty() || p.up.empty()) {
      problems.push_back(name + ": has no " + (p.down.empty() ? down_suffix : up_suffix) +
                         " partner");
      continue;
    }
    const int64_t rank = check_factors(t, tensors.at(p.down), tensors.at(p.up), name, problems);
    if (!p.alpha.empty()) {
      const auto& a = tensors.at(p.alpha);
      int64_t count = 1;
      for (auto dim : a.shape) count *= dim;
      if (count != 1 || !floating(a.dtype)) {
        problems.push_back(io::short_key(p.alpha) + ": alpha must be one floating-point value");
      }
    }
    if (rank > 0) plan.layers.push_back({index, p.down, p.up, p.alpha, rank});
  }
  if (plan.layout == LoraLayout::kPeft) {
    plan.peft_unet = peft_settings(file, metadata, "unet", problems);
    plan.peft_text_encoder = peft_settings(file, metadata, "text_encoder", problems);
  }
  if (!problems.empty()) {
    std::string message = file + ": not a " + layout_name(plan.layout) + " LoRA for this model:";
    constexpr size_t kShown = 20;
    for (size_t i = 0; i < problems.size() && i < kShown; ++i) message += "\n  " + problems[i];
    if (problems.size() > kShown) {
      message += "\n  and " + std::to_string(problems.size() - kShown) + " more problems";
    }
    throw LoraFileError(message);
  }
  if (plan.layers.empty()) throw LoraFileError(file + ": the LoRA adapts no layer");
  return plan;
}

double peft_scale(const PeftSettings& settings, const std::string& path, int64_t rank) {
  double alpha = settings.has_alpha ? settings.lora_alpha : static_cast<double>(rank);
  for (const auto& [key, value] : settings.alpha_pattern) {
    if (path == key || ends_with(path, "." + key)) {
      alpha = value;
      break;
    }
  }
  const double r = static_cast<double>(rank);
  return settings.use_rslora ? alpha / std::sqrt(r) : alpha / r;
}

}  // namespace ldcp::lora
