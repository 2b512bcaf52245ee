#include "model/lora/lora_weights.h"

#include <cmath>
#include <map>

#include <torch/torch.h>

#include "model/io/original_checkpoint.h"
#include "model/io/safetensors.h"
#include "model/models/attention.h"
#include "model/models/resnet.h"
#include "model/models/unets/unet_2d_condition.h"
#include "model/pruning/gate_scores.h"
#include "model/pruning/unet_pruner.h"
#include "model/pruning/unit_order.h"

namespace ldcp::lora {

struct LoraTargets::Layer {
  const void* key = nullptr;  // the LinearImpl* / Conv2dImpl* the call site passes
  std::vector<int64_t> stride{1, 1}, padding{0, 0}, dilation{1, 1};
  at::Tensor rows, columns;  // channel permutations of a gated layer (undefined: none)
};

namespace {

std::vector<int64_t> expand(const torch::ExpandingArray<2>& a) { return {(*a)[0], (*a)[1]}; }

// Adds every Linear and Conv2d (groups 1, numeric padding) of `module` to the targets.
void collect(torch::nn::Module& module, LoraComponent component, std::vector<TargetLayer>& layers,
             std::vector<LoraTargets::Layer>& detail) {
  for (const auto& item : module.named_modules("", /*include_self=*/false)) {
    TargetLayer t;
    t.component = component;
    t.path = item.key();
    LoraTargets::Layer layer;
    if (auto* linear = item.value()->as<torch::nn::Linear>()) {
      t.out = linear->options.out_features();
      t.in = linear->options.in_features();
      layer.key = linear;
    } else if (auto* conv = item.value()->as<torch::nn::Conv2d>()) {
      const auto& o = conv->options;
      const auto* padding = std::get_if<torch::ExpandingArray<2>>(&o.padding());
      if (o.groups() != 1 || !padding) continue;
      t.conv = true;
      t.out = o.out_channels();
      t.in = o.in_channels();
      t.kernel_h = (*o.kernel_size())[0];
      t.kernel_w = (*o.kernel_size())[1];
      layer.key = conv;
      layer.stride = expand(o.stride());
      layer.padding = expand(*padding);
      layer.dilation = expand(o.dilation());
    } else {
      continue;
    }
    layers.push_back(std::move(t));
    detail.push_back(std::move(layer));
  }
}

double read_scalar(const io::SafetensorsFile& file, const std::string& key) {
  const double value = file.tensor(key).to(torch::kDouble).item<double>();
  if (!std::isfinite(value)) {
    throw LoraFileError(file.path().string() + ": " + io::short_key(key) + " is not finite");
  }
  return value;
}

}  // namespace

LoraTargets::LoraTargets(torch::nn::Module& unet, torch::nn::Module& text_encoder,
                         const pruning::UNetPruner* pruner, c10::Device device,
                         c10::ScalarType dtype)
    : device_(device), dtype_(dtype) {
  collect(unet, LoraComponent::kUNet, layers_, detail_);
  collect(text_encoder, LoraComponent::kTextEncoder, layers_, detail_);
  // The original layout (which kohya names may follow) numbers the blocks by one depth.
  if (const auto* model = dynamic_cast<const models::UNet2DConditionModelImpl*>(&unet)) {
    const auto& config = model->config();
    unet_layers_per_block_ = config.layers(0);
    for (size_t b = 1; b < config.num_blocks(); ++b) {
      if (config.layers(b) != unet_layers_per_block_) unet_layers_per_block_ = 0;
    }
  }

  if (!pruner) return;
  std::map<std::string, size_t> unet_index;
  for (size_t i = 0; i < layers_.size(); ++i) {
    if (layers_[i].component == LoraComponent::kUNet) unet_index[layers_[i].path] = i;
  }
  auto index = [&](const std::vector<int64_t>& channels) {
    return torch::tensor(channels, torch::kLong).to(device_);
  };
  auto set = [&](const std::string& path, at::Tensor Layer::*which, const at::Tensor& perm) {
    const auto it = unet_index.find(path);
    if (it != unet_index.end()) detail_[it->second].*which = perm;
  };
  // Mirrors ResnetBlock2DImpl::reorder_units and FeedForwardImpl::reorder_units.
  for (const auto& ref : pruner->layers()) {
    const auto& gate = *ref.layer->gate();
    const auto channels = pruning::unit_channels(
        pruning::unit_order(pruner->scores().layers.at(ref.name)), gate.unit_size());
    if (dynamic_cast<models::ResnetBlock2DImpl*>(ref.layer)) {
      const auto perm = index(channels);
      set(ref.name + ".conv1", &Layer::rows, perm);
      set(ref.name + ".time_emb_proj", &Layer::rows, perm);
      set(ref.name + ".conv2", &Layer::columns, perm);
    } else if (dynamic_cast<models::FeedForwardImpl*>(ref.layer)) {
      auto both = channels;
      for (int64_t c : channels) both.push_back(gate.channels() + c);
      set(ref.name + ".net.0.proj", &Layer::rows, index(both));
      set(ref.name + ".net.2", &Layer::columns, index(channels));
    } else {
      throw std::logic_error("LoRA: gated layer " + ref.name + " of an unknown kind");
    }
  }
}

LoraTargets::~LoraTargets() = default;

std::shared_ptr<const LoraWeights> LoraTargets::read(const std::filesystem::path& path) const {
  io::SafetensorsFile file(path);
  std::map<std::string, io::TensorInfo> infos;
  for (const auto& name : file.names()) infos.emplace(name, file.info(name));
  const auto plan =
      plan_lora(path.string(), infos, file.metadata(), layers_, unet_layers_per_block_);

  auto weights = std::make_shared<LoraWeights>();
  weights->file = path;
  weights->layout = plan.layout;
  torch::NoGradGuard no_grad;
  const auto options = torch::TensorOptions().dtype(dtype_).device(device_);
  // kohya: a layer without .alpha takes, as diffusers (get_peft_kwargs: lora_alpha is the most
  // common alpha of the component), the most common alpha of its component's layers, and its
  // rank (scale 1) when no layer of the component has one.
  std::map<size_t, double> alphas;
  std::map<LoraComponent, std::map<double, int>> alpha_counts;
  for (const auto& p : plan.layers) {
    if (p.alpha_key.empty()) continue;
    alphas[p.target] = read_scalar(file, p.alpha_key);
    ++alpha_counts[layers_[p.target].component][alphas[p.target]];
  }
  auto default_alpha = [&](LoraComponent component, int64_t rank) {
    double best = static_cast<double>(rank);
    int count = 0;
    for (const auto& [alpha, n] : alpha_counts[component]) {
      if (n > count) best = alpha, count = n;
    }
    return best;
  };
  for (const auto& p : plan.layers) {
    const auto& t = layers_[p.target];
    auto down = file.tensor(p.down_key);
    auto up = file.tensor(p.up_key);
    for (const auto* key : {&p.down_key, &p.up_key}) {
      const auto& tensor = key == &p.down_key ? down : up;
      if (!torch::isfinite(tensor).all().item<bool>()) {
        throw LoraFileError(path.string() + ": " + io::short_key(*key) +
                            " holds non-finite values");
      }
    }
    if (t.conv && down.dim() == 2) down = down.view({down.size(0), down.size(1), 1, 1});
    if (t.conv && up.dim() == 2) up = up.view({up.size(0), up.size(1), 1, 1});
    LayerFactors f;
    f.target = p.target;
    f.down = down.to(options).contiguous();
    f.up = up.to(options).contiguous();
    if (plan.layout == LoraLayout::kKohya) {
      const auto it = alphas.find(p.target);
      const double alpha = it != alphas.end() ? it->second : default_alpha(t.component, p.rank);
      f.scale = alpha / static_cast<double>(p.rank);
    } else {
      const auto& settings =
          t.component == LoraComponent::kUNet ? plan.peft_unet : plan.peft_text_encoder;
      f.scale = peft_scale(settings, t.path, p.rank);
    }
    weights->bytes += static_cast<int64_t>(f.down.nbytes() + f.up.nbytes());
    (t.component == LoraComponent::kUNet ? weights->unet_layers : weights->text_encoder_layers)++;
    weights->layers.push_back(std::move(f));
  }
  return weights;
}

std::unique_ptr<ActiveAdapters> LoraTargets::adapters(
    const std::vector<std::pair<std::shared_ptr<const LoraWeights>, double>>& loras) const {
  torch::NoGradGuard no_grad;
  std::map<size_t, std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>>> factors;
  for (const auto& [weights, weight] : loras) {
    for (const auto& f : weights->layers) {
      auto& [downs, ups] = factors[f.target];
      downs.push_back(f.down);
      ups.push_back(f.up * (f.scale * weight));
    }
  }
  auto active = std::make_unique<ActiveAdapters>();
  for (auto& [target, pair] : factors) {
    const auto& layer = detail_[target];
    LoraBranch b;
    b.conv = layers_[target].conv;
    b.down = pair.first.size() == 1 ? pair.first.front() : torch::cat(pair.first, 0);
    b.up = pair.second.size() == 1 ? pair.second.front() : torch::cat(pair.second, 1);
    if (layer.rows.defined()) b.up = b.up.index_select(0, layer.rows);
    if (layer.columns.defined()) b.down = b.down.index_select(1, layer.columns);
    b.stride = layer.stride;
    b.padding = layer.padding;
    b.dilation = layer.dilation;
    active->branches.emplace(layer.key, std::move(b));
  }
  return active;
}

}  // namespace ldcp::lora
