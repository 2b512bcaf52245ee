// libFuzzer target: A1111's prompt attention parser and chunking (model/clip/prompt_weighting.h)
// on arbitrary text with the shipped CLIP vocabulary (data/clip). It must never throw for UTF-8
// text (the tokenizer may reject other text with std::invalid_argument); every chunk is 77
// tokens from the vocabulary, BOS first and EOS last, with a finite weight per token.

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

#include "model/clip/prompt_weighting.h"
#include "model/clip/tokenization_clip.h"

namespace {
std::unique_ptr<ldcp::clip::ClipTokenizer> tokenizer;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  tokenizer = std::make_unique<ldcp::clip::ClipTokenizer>(
      ldcp::clip::ClipTokenizer::from_folder(LDCP_SOURCE_DIR "/data/clip"));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto parsed = ldcp::clip::parse_prompt_attention(text);
  if (parsed.empty()) std::abort();
  const auto options = ldcp::clip::chunking_options(*tokenizer);
  try {
    const auto chunks = ldcp::clip::chunk_weighted_prompt(
        parsed, [](const std::string& s) { return tokenizer->tokenize(s); }, options);
    if (chunks.empty()) std::abort();
    for (const auto& chunk : chunks) {
      if (chunk.tokens.size() != 77 || chunk.weights.size() != 77) std::abort();
      if (chunk.tokens.front() != options.bos_id || chunk.tokens.back() != options.eos_id)
        std::abort();
      for (int64_t id : chunk.tokens) {
        if (id < 0 || id >= tokenizer->vocab_size()) std::abort();
      }
    }
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
