#pragma once
// CLIP's byte-level BPE tokenizer, equal to transformers' CLIPTokenizer (tokenizers backend):
//   1. added tokens (<|startoftext|>, <|endoftext|>, ...) are cut out of the text, those marked
//      "normalized": false on the raw text, the others on the normalized text;
//   2. normalizer: NFC, runs of white space -> " ", lower case (per code point, no context);
//   3. pre-tokenizer: the pattern
//      <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//      keeps its matches and drops the rest (white space); then GPT-2's byte-level split and the
//      byte -> printable-character map;
//   4. BPE over each word with "</w>" on its last symbol, merges applied by rank.
// Unicode properties, normalisation and case mapping come from ICU.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

namespace ldcp::clip {

// A tokenizer folder that cannot be read: the message names the file (and the entry).
class TokenizerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A token matched in the text before BPE (transformers' AddedToken; CLIP's are special).
struct AddedToken {
  std::string content;
  bool normalized = false;  // matched on the normalized text rather than the raw one
  int64_t id = -1;          // its id when the vocabulary lacks it (else the vocabulary's)
};

// What tokenizer_config.json (and friends) decide besides the vocabulary. Defaults are
// CLIPTokenizer's.
struct ClipTokenizerOptions {
  int64_t model_max_length = 77;  // CLIP's context; also used when tokenizer_config.json has none
  AddedToken bos_token{"<|startoftext|>"};
  AddedToken eos_token{"<|endoftext|>"};
  AddedToken pad_token{"<|endoftext|>"};
  AddedToken unk_token{"<|endoftext|>"};
  // Further added tokens (from added_tokens_decoder / tokenizer.json's added_tokens).
  std::vector<AddedToken> extra_added_tokens;
};

class ClipTokenizer {
 public:
  using Vocab = std::unordered_map<std::string, int64_t>;
  using Merges = std::vector<std::pair<std::string, std::string>>;

  // Tokenizer folder of a diffusers model. Like transformers, the vocabulary and merges come
  // from tokenizer.json when the folder has one, else from vocab.json + merges.txt (SD1.5's
  // layout); tokenizer_config.json (if present), special_tokens_map.json and tokenizer.json's
  // added_tokens give model_max_length and the special tokens, resolved as transformers 5
  // does. Throws TokenizerError (or io::ConfigError for malformed JSON) naming the file.
  static ClipTokenizer from_folder(const std::filesystem::path& dir);

  // Vocabulary and merges in the byte-level alphabet, as in vocab.json / merges.txt. Every
  // special token must be in the vocabulary; merges must join vocabulary tokens into one.
  // `source` names where they came from, for error messages.
  ClipTokenizer(Vocab vocab, const Merges& merges, ClipTokenizerOptions options,
                const std::string& source = "<memory>");

  // As tokenizer(text, padding="max_length", max_length=model_max_length, truncation=True)
  // .input_ids: BOS, at most max_length-2 tokens, EOS, then pad tokens up to max_length.
  // Throws std::invalid_argument when the text is not valid UTF-8.
  std::vector<int64_t> encode(const std::string& utf8_text) const;
  // BPE token ids without BOS/EOS, padding or truncation (added tokens in the text included).
  std::vector<int64_t> tokenize(const std::string& utf8_text) const;

  int64_t max_length() const;
  int64_t bos_id() const;
  int64_t eos_id() const;
  int64_t pad_id() const;
  int64_t unk_id() const;
  // Token strings -> ids (the byte-level alphabet of vocab.json); -1 when absent.
  int64_t token_to_id(const std::string& token) const;
  // Ids encode() can give: vocab.json's tokens and added tokens beyond them (transformers'
  // len(tokenizer)); every id is in [0, vocab_size()).
  int64_t vocab_size() const;

 private:
  struct Impl;
  std::shared_ptr<const Impl> impl_;  // immutable after construction; the BPE cache locks
};

}  // namespace ldcp::clip
