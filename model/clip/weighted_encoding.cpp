#include "model/clip/weighted_encoding.h"

#include <stdexcept>
#include <string>

#include <torch/torch.h>

#include "model/clip/modeling_clip.h"

namespace ldcp::clip {

at::Tensor encode_with_clip_skip(ClipTextModelImpl& model, const at::Tensor& input_ids,
                                 int64_t clip_skip) {
  const int64_t layers = model.config().num_hidden_layers;
  if (clip_skip < 0 || clip_skip > layers) {
    throw std::invalid_argument("clip_skip must be in [0, " + std::to_string(layers) +
                                "] (the text encoder's layers), got " + std::to_string(clip_skip));
  }
  if (clip_skip <= 1) return model.forward(input_ids);
  // hidden_states[-N] is the output of the first layers - N + 1 layers.
  auto& text = *model.text_model;
  auto ids = input_ids.reshape({-1, input_ids.size(-1)}).to(torch::kLong);
  auto hidden = text.embeddings(ids);
  const int64_t run = layers - clip_skip + 1;
  for (int64_t i = 0; i < run; ++i) {
    hidden = text.encoder->layers[static_cast<size_t>(i)]->as<ClipEncoderLayer>()->forward(hidden);
  }
  return text.final_layer_norm(hidden);
}

at::Tensor encode_weighted_chunks(ClipTextModelImpl& model, const std::vector<PromptChunk>& chunks,
                                  int64_t clip_skip) {
  if (chunks.empty()) throw std::invalid_argument("encode_weighted_chunks: no chunks");
  torch::NoGradGuard no_grad;
  const auto device = model.text_model->final_layer_norm->weight.device();
  std::vector<at::Tensor> parts;
  parts.reserve(chunks.size());
  for (const auto& chunk : chunks) {
    auto ids = torch::tensor(chunk.tokens, torch::kInt64).unsqueeze(0).to(device);
    auto z = encode_with_clip_skip(model, ids, clip_skip).to(torch::kFloat);
    auto weights = torch::tensor(chunk.weights, torch::kDouble)
                       .to(torch::kFloat)
                       .to(device)
                       .reshape({1, -1, 1});
    const auto original_mean = z.mean();
    z = z * weights;
    z = z * (original_mean / z.mean());
    parts.push_back(z);
  }
  return torch::cat(parts, 1);
}

}  // namespace ldcp::clip
