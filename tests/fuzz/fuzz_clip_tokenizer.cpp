// libFuzzer target: the CLIP tokenizer (model/clip/tokenization_clip.h) on arbitrary text with
// the shipped vocabulary (data/clip). Text that is not UTF-8 may only throw
// std::invalid_argument; anything else must give model_max_length ids from the vocabulary,
// starting with BOS.

#include <cstdint>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>

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
  try {
    const auto ids = tokenizer->encode(text);
    if (static_cast<int64_t>(ids.size()) != tokenizer->max_length()) std::abort();
    if (ids.front() != tokenizer->bos_id()) std::abort();
    for (int64_t id : ids) {
      if (id < 0 || id >= tokenizer->vocab_size()) std::abort();
    }
    tokenizer->tokenize(text);
  } catch (const std::invalid_argument&) {
  }
  return 0;
}
