#pragma once
// The tensor part of A1111 prompt weighting (prompt_weighting.h gives the chunks and weights)
// and clip skip, on ClipTextModel.

#include <cstdint>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/clip/prompt_weighting.h"

namespace ldcp::clip {

class ClipTextModelImpl;

// input_ids [B, L] -> [B, L, hidden]. clip_skip 0 or 1: last_hidden_state (the last layer's
// output through final_layer_norm, as forward()); N > 1: the hidden state N - 1 layers before
// the last (transformers' hidden_states[-N], diffusers' clip_skip = N - 1), through
// final_layer_norm as diffusers' encode_prompt does. Throws std::invalid_argument when clip_skip
// is outside [0, num_hidden_layers].
at::Tensor encode_with_clip_skip(ClipTextModelImpl& model, const at::Tensor& input_ids,
                                 int64_t clip_skip);

// Each chunk encoded on its own, concatenated along the sequence: [1, 77 * chunks, hidden] on
// the model's device, float32. Each position's embedding is multiplied by its weight, then the
// chunk rescaled so that its mean equals the unweighted mean (A1111's EmphasisOriginal).
at::Tensor encode_weighted_chunks(ClipTextModelImpl& model, const std::vector<PromptChunk>& chunks,
                                  int64_t clip_skip);

}  // namespace ldcp::clip
