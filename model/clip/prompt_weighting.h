#pragma once
// AUTOMATIC1111's prompt attention syntax and its 75-token chunking, without libtorch (a fuzzer
// drives it). The tensor part (weighting the encoder's output) is in weighted_encoding.h.
//
//   (text)      weight x 1.1 (nested: ((text)) x 1.21)
//   [text]      weight / 1.1
//   (text:1.3)  weight x 1.3 (the number as [+-]?[.0-9]+)
//   \( \) \[ \] \\   literal characters
//   BREAK       (as a word, upper case) ends the current 75-token chunk
// Unbalanced brackets are tolerated as A1111 does: an unclosed "(" or "[" applies to the end of
// the text, a ")" or "]" with nothing open is literal text. Runs of equal weight are merged.

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace ldcp::clip {

class ClipTokenizer;

struct WeightedText {
  std::string text;
  double weight = 1.0;
  // A BREAK marker (text "BREAK", weight -1). As in A1111, brackets around it weight it too, and
  // a marker whose weight is then no longer -1 is the word "BREAK".
  bool is_break = false;
  bool operator==(const WeightedText& o) const {
    return text == o.text && weight == o.weight && is_break == o.is_break;
  }
};

// A1111's parse_prompt_attention. Never empty: an empty text gives {{"", 1.0}}.
std::vector<WeightedText> parse_prompt_attention(const std::string& text);

// One chunk as the text encoder sees it: BOS, 75 tokens (padded with EOS), EOS, and the weight
// of each position (1 for BOS, EOS and padding).
struct PromptChunk {
  std::vector<int64_t> tokens;
  std::vector<double> weights;
};

struct ChunkingOptions {
  int64_t chunk_length = 75;  // tokens per chunk between BOS and EOS (model_max_length - 2)
  int64_t bos_id = 49406;
  int64_t eos_id = 49407;  // also the padding, as SD1.5's text encoder in A1111
  int64_t comma_id = -1;   // ",</w>"; -1: none
  // A1111's comma_padding_backtrack (default 20): a chunk that fills up within this many tokens
  // after its last comma moves the tokens after that comma into the next chunk. 0: off.
  int64_t comma_padding_backtrack = 20;
};

// A1111's tokenize_line: each parsed piece tokenized on its own (without BOS/EOS), split into
// chunks of chunk_length. At least one chunk.
using TokenizeFn = std::function<std::vector<int64_t>(const std::string&)>;
std::vector<PromptChunk> chunk_weighted_prompt(const std::vector<WeightedText>& parsed,
                                               const TokenizeFn& tokenize,
                                               const ChunkingOptions& options);

// The chunk of an empty prompt (BOS, EOS padding, weights 1): what pads the shorter of a prompt
// and its negative prompt to the same chunk count.
PromptChunk empty_prompt_chunk(const ChunkingOptions& options);

// The options for a CLIP tokenizer: its max_length - 2 tokens a chunk, its BOS, EOS and ",</w>".
ChunkingOptions chunking_options(const ClipTokenizer& tokenizer);

}  // namespace ldcp::clip
