#include "model/clip/tokenization_clip.h"

#include <algorithm>
#include <array>
#include <climits>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>

#include <unicode/locid.h>
#include <unicode/normalizer2.h>
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/utf16.h>
#include <unicode/utf8.h>
#include <nlohmann/json.hpp>

#include "model/io/json_file.h"

namespace ldcp::clip {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// CLIPTokenizer's pre-tokenizer pattern and the byte-level pre-tokenizer's (GPT-2's) one.
// tokenizers compiles them with Oniguruma, whose \s is Unicode's White_Space property; ICU's \s
// is narrower ([\t\n\f\r\p{Z}]), so the property is spelled out.
constexpr const char* kClipSplitPattern =
    R"(<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|)"
    R"([^\p{White_Space}\p{L}\p{N}]+)";
constexpr const char* kByteLevelPattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\p{White_Space}\p{L}\p{N}]+|)"
    R"(\p{White_Space}+(?!\P{White_Space})|\p{White_Space}+)";
constexpr const char* kEndOfWord = "</w>";
// tokenizers' BPE cache size; words beyond it are tokenized each time.
constexpr size_t kCacheCapacity = 10000;

std::string to_utf8(const icu::UnicodeString& text) {
  std::string out;
  text.toUTF8String(out);
  return out;
}

std::string code_point_utf8(UChar32 c) {
  char buffer[U8_MAX_LENGTH];
  int32_t length = 0;
  U8_APPEND_UNSAFE(buffer, length, c);  // c is a valid code point below U+0200
  return std::string(buffer, static_cast<size_t>(length));
}

// GPT-2's bytes_to_unicode: printable bytes map to themselves, the others to U+0100 onwards.
std::array<std::string, 256> make_byte_alphabet() {
  std::array<std::string, 256> alphabet;
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    alphabet[static_cast<size_t>(b)] = code_point_utf8(printable ? b : 256 + next++);
  }
  return alphabet;
}

const std::array<std::string, 256>& byte_alphabet() {
  static const auto alphabet = make_byte_alphabet();
  return alphabet;
}

void check_utf8(const std::string& text) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(text.data());
  const auto length = static_cast<int32_t>(text.size());
  if (text.size() > static_cast<size_t>(INT32_MAX / 2)) {
    throw std::invalid_argument("CLIP tokenizer: text too long");
  }
  for (int32_t i = 0; i < length;) {
    const int32_t start = i;
    UChar32 c = 0;
    U8_NEXT(bytes, i, length, c);
    if (c < 0) {
      throw std::invalid_argument("CLIP tokenizer: text is not valid UTF-8 (byte offset " +
                                  std::to_string(start) + ")");
    }
  }
}

// transformers' Lowercase normalizer maps each code point on its own (Rust's
// char::to_lowercase: full mappings, no context, so a final capital sigma gives σ, not ς).
void append_lowercase(UChar32 c, icu::UnicodeString& out) {
  if (c < 0x80) {
    out.append(static_cast<UChar32>(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c));
    return;
  }
  icu::UnicodeString single(c);
  single.toLower(icu::Locale::getRoot());
  out.append(single);
}

// One piece of text between added tokens, or an added token's id.
struct Segment {
  std::string text;
  int64_t id = -1;
};

// Cuts the added tokens out of `text` (leftmost-longest, as tokenizers' Aho-Corasick matcher).
std::vector<Segment> split_added(const std::string& text,
                                 const std::vector<std::pair<std::string, int64_t>>& tokens) {
  std::vector<Segment> segments;
  if (tokens.empty()) {
    segments.push_back({text, -1});
    return segments;
  }
  size_t piece_start = 0;
  for (size_t i = 0; i < text.size();) {
    const std::pair<std::string, int64_t>* best = nullptr;
    for (const auto& token : tokens) {
      if (text.compare(i, token.first.size(), token.first) == 0 &&
          (best == nullptr || token.first.size() > best->first.size())) {
        best = &token;
      }
    }
    if (best == nullptr) {
      ++i;
      continue;
    }
    if (i > piece_start) segments.push_back({text.substr(piece_start, i - piece_start), -1});
    segments.push_back({std::string(), best->second});
    i += best->first.size();
    piece_start = i;
  }
  if (piece_start < text.size()) segments.push_back({text.substr(piece_start), -1});
  return segments;
}

std::unique_ptr<icu::RegexPattern> compile(const char* pattern) {
  UErrorCode status = U_ZERO_ERROR;
  UParseError parse_error;
  std::unique_ptr<icu::RegexPattern> compiled(
      icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(pattern), 0, parse_error, status));
  if (U_FAILURE(status)) {
    throw std::logic_error(std::string("CLIP tokenizer: cannot compile a pattern: ") +
                           u_errorName(status));
  }
  return compiled;
}

// The pieces of `text` the pattern matches, and (when `keep_gaps`) the text between them.
std::vector<icu::UnicodeString> regex_split(const icu::RegexPattern& pattern,
                                            const icu::UnicodeString& text, bool keep_gaps) {
  std::vector<icu::UnicodeString> pieces;
  UErrorCode status = U_ZERO_ERROR;
  std::unique_ptr<icu::RegexMatcher> matcher(pattern.matcher(text, status));
  if (U_FAILURE(status)) {
    throw std::runtime_error(std::string("CLIP tokenizer: regex error: ") + u_errorName(status));
  }
  int32_t last_end = 0;
  while (matcher->find(status) && U_SUCCESS(status)) {
    const int32_t start = matcher->start(status);
    const int32_t end = matcher->end(status);
    if (keep_gaps && start > last_end) pieces.emplace_back(text, last_end, start - last_end);
    if (end > start) pieces.emplace_back(text, start, end - start);
    last_end = end;
  }
  if (U_FAILURE(status)) {
    throw std::runtime_error(std::string("CLIP tokenizer: regex error: ") + u_errorName(status));
  }
  if (keep_gaps && last_end < text.length()) {
    pieces.emplace_back(text, last_end);
  }
  return pieces;
}

// ---- tokenizer folders -----------------------------------------------------------------------

std::string file_error(const fs::path& file, const std::string& what) {
  return file.string() + ": " + what;
}

ClipTokenizer::Vocab parse_vocab(const json& vocab, const fs::path& file) {
  if (!vocab.is_object()) throw TokenizerError(file_error(file, "the vocabulary is not an object"));
  ClipTokenizer::Vocab out;
  out.reserve(vocab.size());
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0) {
      throw TokenizerError(file_error(file, "vocabulary entry \"" + token + "\" has no valid id"));
    }
    out.emplace(token, id.get<int64_t>());
  }
  return out;
}

std::pair<std::string, std::string> parse_merge_line(const std::string& line, const fs::path& file,
                                                     size_t number) {
  const auto space = line.find(' ');
  if (space == std::string::npos || space == 0 || space + 1 == line.size() ||
      line.find(' ', space + 1) != std::string::npos) {
    throw TokenizerError(file_error(file, "merge " + std::to_string(number) +
                                              " is not two tokens separated by a space: \"" + line +
                                              "\""));
  }
  return {line.substr(0, space), line.substr(space + 1)};
}

ClipTokenizer::Merges read_merges_txt(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw TokenizerError(file_error(file, "cannot open the file for reading"));
  ClipTokenizer::Merges merges;
  std::string line;
  size_t number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    merges.push_back(parse_merge_line(line, file, number));
  }
  if (in.bad()) throw TokenizerError(file_error(file, "read error"));
  return merges;
}

ClipTokenizer::Merges parse_json_merges(const json& merges, const fs::path& file) {
  if (!merges.is_array()) throw TokenizerError(file_error(file, "model.merges is not a list"));
  ClipTokenizer::Merges out;
  out.reserve(merges.size());
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto& merge = merges[i];
    if (merge.is_string()) {  // older tokenizers: "a b"
      out.push_back(parse_merge_line(merge.get<std::string>(), file, i + 1));
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      out.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
    } else {
      throw TokenizerError(file_error(
          file, "model.merges[" + std::to_string(i) + "] is neither \"a b\" nor [\"a\", \"b\"]"));
    }
  }
  return out;
}

// A token as transformers reads it: a string, or an AddedToken dict whose "normalized"
// defaults to `not special` (tokenizers' AddedToken default).
std::optional<AddedToken> parse_token(const json& value, const fs::path& file,
                                      const std::string& key, bool force_special) {
  if (value.is_null()) return std::nullopt;
  if (value.is_string()) return AddedToken{value.get<std::string>(), false};
  if (value.is_object() && value.contains("content") && value["content"].is_string()) {
    AddedToken token{value["content"].get<std::string>()};
    const bool special = force_special || value.value("special", false);
    const auto normalized = value.find("normalized");
    token.normalized =
        normalized != value.end() && normalized->is_boolean() ? normalized->get<bool>() : !special;
    return token;
  }
  throw TokenizerError(file_error(file, "\"" + key + "\" is neither a string nor a token"));
}

json read_optional_json(const fs::path& file) {
  return fs::exists(file) ? io::read_json_file(file) : json::object();
}

}  // namespace

// ---- the tokenizer ---------------------------------------------------------------------------

struct ClipTokenizer::Impl {
  Vocab vocab;
  std::unordered_map<std::string, int32_t> merge_ranks;  // "a b" -> rank
  int64_t max_length = 77;
  int64_t bos = 0, eos = 0, pad = 0, unk = 0;
  int64_t size = 0;  // ids encode() can give: the vocabulary's and added tokens' beyond it
  // Added tokens as (content, id), matched on the raw and on the normalized text.
  std::vector<std::pair<std::string, int64_t>> raw_added, normalized_added;
  std::unique_ptr<icu::RegexPattern> split_pattern, byte_level_pattern;
  const icu::Normalizer2* nfc = nullptr;

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache;

  icu::UnicodeString normalize(const std::string& text) const;
  void tokenize_normalized(const icu::UnicodeString& text, std::vector<int64_t>& ids) const;
  void bpe(const std::string& word, std::vector<int64_t>& ids) const;
};

// NFC, white space runs -> " ", lower case: transformers' normalizer sequence for CLIP.
icu::UnicodeString ClipTokenizer::Impl::normalize(const std::string& text) const {
  UErrorCode status = U_ZERO_ERROR;
  const icu::UnicodeString composed = nfc->normalize(icu::UnicodeString::fromUTF8(text), status);
  if (U_FAILURE(status)) {
    throw std::runtime_error(std::string("CLIP tokenizer: NFC failed: ") + u_errorName(status));
  }
  icu::UnicodeString out;
  bool in_space = false;
  for (int32_t i = 0; i < composed.length();) {
    const UChar32 c = composed.char32At(i);
    i += U16_LENGTH(c);
    if (u_hasBinaryProperty(c, UCHAR_WHITE_SPACE)) {
      if (!in_space) out.append(static_cast<UChar>(0x20));
      in_space = true;
      continue;
    }
    in_space = false;
    append_lowercase(c, out);
  }
  return out;
}

void ClipTokenizer::Impl::tokenize_normalized(const icu::UnicodeString& text,
                                              std::vector<int64_t>& ids) const {
  const auto& alphabet = byte_alphabet();
  // Split(pattern, behavior="removed", invert=True) keeps the matches only; ByteLevel then
  // splits each with GPT-2's pattern ("isolated": gaps kept, though the pattern leaves none).
  for (const auto& piece : regex_split(*split_pattern, text, /*keep_gaps=*/false)) {
    for (const auto& word : regex_split(*byte_level_pattern, piece, /*keep_gaps=*/true)) {
      std::string mapped;
      for (const unsigned char byte : to_utf8(word)) mapped += alphabet[byte];
      bpe(mapped, ids);
    }
  }
}

// BPE of one word given in the byte-level alphabet: symbols are its characters, the last one
// with "</w>"; the adjacent pair of lowest merge rank (leftmost on ties) merges until none is
// left, as tokenizers' BPE::merge_word does.
void ClipTokenizer::Impl::bpe(const std::string& word, std::vector<int64_t>& ids) const {
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (auto hit = cache.find(word); hit != cache.end()) {
      ids.insert(ids.end(), hit->second.begin(), hit->second.end());
      return;
    }
  }
  std::vector<std::string> symbols;
  for (size_t i = 0; i < word.size();) {
    size_t length = 1;
    const auto lead = static_cast<unsigned char>(word[i]);
    if (lead >= 0xF0)
      length = 4;
    else if (lead >= 0xE0)
      length = 3;
    else if (lead >= 0xC0)
      length = 2;
    symbols.push_back(word.substr(i, length));
    i += length;
  }
  if (symbols.empty()) return;
  symbols.back() += kEndOfWord;

  std::string key;
  while (symbols.size() > 1) {
    int32_t best_rank = INT32_MAX;
    size_t best = 0;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      key.assign(symbols[i]).append(" ").append(symbols[i + 1]);
      if (auto it = merge_ranks.find(key); it != merge_ranks.end() && it->second < best_rank) {
        best_rank = it->second;
        best = i;
      }
    }
    if (best_rank == INT32_MAX) break;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + static_cast<std::ptrdiff_t>(best) + 1);
  }

  std::vector<int64_t> word_ids;
  word_ids.reserve(symbols.size());
  for (const auto& symbol : symbols) {
    auto it = vocab.find(symbol);
    word_ids.push_back(it == vocab.end() ? unk : it->second);
  }
  ids.insert(ids.end(), word_ids.begin(), word_ids.end());
  std::lock_guard<std::mutex> lock(cache_mutex);
  if (cache.size() < kCacheCapacity) cache.emplace(word, std::move(word_ids));
}

ClipTokenizer::ClipTokenizer(Vocab vocab, const Merges& merges, ClipTokenizerOptions options,
                             const std::string& source) {
  auto impl = std::make_shared<Impl>();
  impl->vocab = std::move(vocab);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& [a, b] = merges[rank];
    for (const auto& token : {a, b, a + b}) {
      if (!impl->vocab.count(token)) {
        throw TokenizerError(source + ": merge " + std::to_string(rank + 1) + " (\"" + a + " " + b +
                             "\") uses \"" + token + "\", which is not in the vocabulary");
      }
    }
    // As tokenizers' merge map (collected from the list), a repeated pair keeps its last rank.
    impl->merge_ranks[a + " " + b] = static_cast<int32_t>(rank);
  }

  if (options.model_max_length < 2 || options.model_max_length > (1 << 20)) {
    throw TokenizerError(source + ": model_max_length " + std::to_string(options.model_max_length) +
                         " is out of range [2, 1048576]");
  }
  impl->max_length = options.model_max_length;

  // Ids need not be contiguous: the size is the largest id + 1, bounded (the text encoder's
  // embedding table is indexed by them).
  constexpr int64_t kMaxTokenId = int64_t{1} << 24;
  impl->size = 0;
  for (const auto& [token, id] : impl->vocab) {
    if (id < 0 || id >= kMaxTokenId) {
      throw TokenizerError(source + ": the id " + std::to_string(id) +
                           " of a vocabulary token is outside [0, 2^24)");
    }
    impl->size = std::max(impl->size, id + 1);
  }
  // A token outside vocab.json keeps its configured id (as transformers' added tokens, which
  // extend the vocabulary); bounded, so that a hostile file cannot name an absurd id. The text
  // encoder refuses ids beyond its own embedding table.
  constexpr int64_t kMaxAddedIdsBeyondVocab = 1 << 16;
  auto id_of = [&](const AddedToken& token, const char* role) {
    if (auto it = impl->vocab.find(token.content); it != impl->vocab.end()) return it->second;
    if (token.id >= 0) {
      if (token.id >= static_cast<int64_t>(impl->vocab.size()) + kMaxAddedIdsBeyondVocab) {
        throw TokenizerError(source + ": the " + std::string(role) + " id " +
                             std::to_string(token.id) + " is far beyond the vocabulary's " +
                             std::to_string(impl->vocab.size()) + " tokens");
      }
      impl->size = std::max(impl->size, token.id + 1);
      return token.id;
    }
    throw TokenizerError(source + ": the " + std::string(role) + " \"" + token.content +
                         "\" is not in the vocabulary");
  };
  impl->bos = id_of(options.bos_token, "bos_token");
  impl->eos = id_of(options.eos_token, "eos_token");
  impl->pad = id_of(options.pad_token, "pad_token");
  impl->unk = id_of(options.unk_token, "unk_token");

  // As tokenizers' AddedVocabulary: a token added again replaces the earlier entry (its flag).
  std::map<std::string, std::pair<int64_t, bool>> added;
  auto add = [&](const AddedToken& token, const char* role) {
    if (token.content.empty()) return;
    added[token.content] = {id_of(token, role), token.normalized};
  };
  for (const auto& token : options.extra_added_tokens) add(token, "added token");
  add(options.bos_token, "bos_token");
  add(options.eos_token, "eos_token");
  add(options.unk_token, "unk_token");
  add(options.pad_token, "pad_token");

  impl->nfc = [] {
    UErrorCode status = U_ZERO_ERROR;
    const icu::Normalizer2* nfc = icu::Normalizer2::getNFCInstance(status);
    if (U_FAILURE(status)) {
      throw std::runtime_error(std::string("CLIP tokenizer: no ICU NFC data: ") +
                               u_errorName(status));
    }
    return nfc;
  }();
  for (const auto& [content, entry] : added) {
    if (entry.second) {
      // Normalized tokens are matched in their normalized form.
      impl->normalized_added.emplace_back(to_utf8(impl->normalize(content)), entry.first);
    } else {
      impl->raw_added.emplace_back(content, entry.first);
    }
  }
  impl->split_pattern = compile(kClipSplitPattern);
  impl->byte_level_pattern = compile(kByteLevelPattern);
  impl_ = std::move(impl);
}

std::vector<int64_t> ClipTokenizer::tokenize(const std::string& utf8_text) const {
  check_utf8(utf8_text);
  std::vector<int64_t> ids;
  for (const auto& raw : split_added(utf8_text, impl_->raw_added)) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    const std::string normalized = to_utf8(impl_->normalize(raw.text));
    for (const auto& piece : split_added(normalized, impl_->normalized_added)) {
      if (piece.id >= 0) {
        ids.push_back(piece.id);
      } else {
        impl_->tokenize_normalized(icu::UnicodeString::fromUTF8(piece.text), ids);
      }
    }
  }
  return ids;
}

std::vector<int64_t> ClipTokenizer::encode(const std::string& utf8_text) const {
  auto tokens = tokenize(utf8_text);
  const auto length = static_cast<size_t>(impl_->max_length);
  if (tokens.size() > length - 2) tokens.resize(length - 2);
  std::vector<int64_t> ids;
  ids.reserve(length);
  ids.push_back(impl_->bos);
  ids.insert(ids.end(), tokens.begin(), tokens.end());
  ids.push_back(impl_->eos);
  ids.resize(length, impl_->pad);
  return ids;
}

int64_t ClipTokenizer::max_length() const { return impl_->max_length; }
int64_t ClipTokenizer::bos_id() const { return impl_->bos; }
int64_t ClipTokenizer::eos_id() const { return impl_->eos; }
int64_t ClipTokenizer::pad_id() const { return impl_->pad; }
int64_t ClipTokenizer::unk_id() const { return impl_->unk; }
int64_t ClipTokenizer::vocab_size() const { return impl_->size; }

int64_t ClipTokenizer::token_to_id(const std::string& token) const {
  auto it = impl_->vocab.find(token);
  return it == impl_->vocab.end() ? -1 : it->second;
}

ClipTokenizer ClipTokenizer::from_folder(const fs::path& dir) {
  if (!fs::is_directory(dir)) {
    throw TokenizerError(dir.string() + ": tokenizer folder not found");
  }
  const auto tokenizer_json_file = dir / "tokenizer.json";
  const auto vocab_file = dir / "vocab.json";
  const auto merges_file = dir / "merges.txt";
  const auto config_file = dir / "tokenizer_config.json";
  const auto special_map_file = dir / "special_tokens_map.json";

  Vocab vocab;
  Merges merges;
  std::string source;
  json tokenizer_json;
  // transformers' CLIPTokenizer takes vocabulary and merges from tokenizer.json when there is
  // one (and rebuilds the normalizer and pre-tokenizer itself), else from vocab.json/merges.txt.
  if (fs::exists(tokenizer_json_file)) {
    tokenizer_json = io::read_json_file(tokenizer_json_file);
    const auto model = tokenizer_json.find("model");
    if (model == tokenizer_json.end() || !model->is_object()) {
      throw TokenizerError(file_error(tokenizer_json_file, "has no \"model\" object"));
    }
    if (model->contains("type") && model->at("type") != "BPE") {
      throw TokenizerError(file_error(tokenizer_json_file, "model.type is not \"BPE\""));
    }
    if (!model->contains("vocab")) {
      throw TokenizerError(file_error(tokenizer_json_file, "model.vocab is missing"));
    }
    vocab = parse_vocab(model->at("vocab"), tokenizer_json_file);
    if (model->contains("merges"))
      merges = parse_json_merges(model->at("merges"), tokenizer_json_file);
    source = tokenizer_json_file.string();
  } else {
    const bool has_vocab = fs::exists(vocab_file), has_merges = fs::exists(merges_file);
    if (!has_vocab && !has_merges) {
      throw TokenizerError(dir.string() +
                           ": tokenizer folder has neither tokenizer.json nor vocab.json and "
                           "merges.txt");
    }
    if (!has_vocab)
      throw TokenizerError(file_error(vocab_file, "file not found (merges.txt is there)"));
    if (!has_merges)
      throw TokenizerError(file_error(merges_file, "file not found (vocab.json is there)"));
    vocab = parse_vocab(io::read_json_file(vocab_file), vocab_file);
    merges = read_merges_txt(merges_file);
    source = vocab_file.string() + " + merges.txt";
  }

  // Special tokens, resolved as PreTrainedTokenizerBase.from_pretrained (transformers 5):
  // tokenizer_config.json gives them; without its added_tokens_decoder, special_tokens_map.json
  // overrides them and tokenizer.json's added_tokens describe the added tokens; a special token
  // whose content is an added token takes that entry (its "normalized" flag).
  const json config = read_optional_json(config_file);
  if (!config.is_object()) throw TokenizerError(file_error(config_file, "is not a JSON object"));
  ClipTokenizerOptions options;
  if (auto it = config.find("model_max_length"); it != config.end() && !it->is_null()) {
    if (!it->is_number_integer()) {
      throw TokenizerError(file_error(config_file, "model_max_length is not an integer"));
    }
    options.model_max_length = it->get<int64_t>();
    if (options.model_max_length < 2 || options.model_max_length > (1 << 20)) {
      throw TokenizerError(file_error(config_file, "model_max_length " +
                                                       std::to_string(options.model_max_length) +
                                                       " is out of range [2, 1048576]"));
    }
  }

  static const std::array<const char*, 7> kSpecialKeys = {
      "bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"};
  std::map<std::string, AddedToken> specials;
  for (const char* key : kSpecialKeys) {
    if (auto it = config.find(key); it != config.end()) {
      if (auto token = parse_token(*it, config_file, key, false)) specials[key] = *token;
    }
  }
  std::vector<AddedToken> added;  // in the order transformers adds them
  if (auto decoder = config.find("added_tokens_decoder"); decoder != config.end()) {
    if (!decoder->is_object()) {
      throw TokenizerError(file_error(config_file, "added_tokens_decoder is not an object"));
    }
    for (const auto& [id, value] : decoder->items()) {
      auto token = parse_token(value, config_file, "added_tokens_decoder." + id, false);
      if (!token) continue;
      try {
        token->id = std::stoll(id);
      } catch (const std::exception&) {
        throw TokenizerError(
            file_error(config_file, "added_tokens_decoder key \"" + id + "\" is not an id"));
      }
      added.push_back(*token);
    }
  } else {
    if (fs::exists(special_map_file)) {
      const json map = io::read_json_file(special_map_file);
      for (const char* key : kSpecialKeys) {
        if (auto it = map.find(key); it != map.end()) {
          if (auto token = parse_token(*it, special_map_file, key, true)) specials[key] = *token;
        }
      }
    }
    if (auto list = tokenizer_json.find("added_tokens"); list != tokenizer_json.end()) {
      if (!list->is_array()) {
        throw TokenizerError(file_error(tokenizer_json_file, "added_tokens is not a list"));
      }
      for (const auto& value : *list) {
        auto token = parse_token(value, tokenizer_json_file, "added_tokens", false);
        if (!token) continue;
        token->id = value.value("id", int64_t{-1});
        added.push_back(*token);
      }
    }
  }
  for (auto& [key, token] : specials) {
    for (const auto& entry : added) {
      if (entry.content == token.content) token = entry;
    }
  }
  auto take = [&](const char* key, AddedToken& slot) {
    if (auto it = specials.find(key); it != specials.end()) slot = it->second;
  };
  take("bos_token", options.bos_token);
  take("eos_token", options.eos_token);
  take("unk_token", options.unk_token);
  take("pad_token", options.pad_token);
  options.extra_added_tokens = added;
  for (const char* key : {"sep_token", "cls_token", "mask_token"}) {
    if (auto it = specials.find(key); it != specials.end())
      options.extra_added_tokens.push_back(it->second);
  }
  return ClipTokenizer(std::move(vocab), merges, std::move(options), source);
}

}  // namespace ldcp::clip
