#include "model/clip/prompt_weighting.h"

#include <cstdlib>
#include <cstring>

#include "model/clip/tokenization_clip.h"

namespace ldcp::clip {
namespace {

constexpr double kRound = 1.1;
constexpr double kSquare = 1 / 1.1;

bool is_space(char c) { return std::strchr(" \t\n\r\f\v", c) != nullptr && c != '\0'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
// strchr finds a NUL byte in every set (the terminator): a prompt may contain one.
bool in_set(const char* set, char c) { return c != '\0' && std::strchr(set, c) != nullptr; }
// Python's \w on str, approximated per byte: ASCII letters, digits, '_' and any non-ASCII byte.
bool is_word(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || is_digit(c) || c == '_' || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

// Python's float() on [+-]?[.0-9]+: false when it is not a number ("." or "1.2.3").
bool parse_number(const std::string& s, double& out) {
  size_t i = (s[0] == '+' || s[0] == '-') ? 1 : 0;
  size_t dots = 0, digits = 0;
  for (size_t k = i; k < s.size(); ++k) (s[k] == '.' ? dots : digits)++;
  if (digits == 0 || dots > 1) return false;
  out = std::strtod(s.c_str(), nullptr);
  return true;
}

// Matches ":\s*([+-]?[.\d]+)\s*\)" at pos; returns its length (0: no match) and the number.
size_t match_weight(const std::string& t, size_t pos, std::string& number) {
  size_t i = pos + 1;
  while (i < t.size() && is_space(t[i])) ++i;
  const size_t start = i;
  if (i < t.size() && (t[i] == '+' || t[i] == '-')) ++i;
  const size_t digits = i;
  while (i < t.size() && (is_digit(t[i]) || t[i] == '.')) ++i;
  if (i == digits) return 0;
  number = t.substr(start, i - start);
  while (i < t.size() && is_space(t[i])) ++i;
  if (i >= t.size() || t[i] != ')') return 0;
  return i + 1 - pos;
}

// re.split(r"\s*\bBREAK\b\s*", text), each separator a BREAK marker.
void append_text(const std::string& text, std::vector<WeightedText>& res) {
  size_t pos = 0;
  size_t search = 0;
  while (true) {
    size_t b = text.find("BREAK", search);
    while (b != std::string::npos) {
      const bool left = b == 0 || !is_word(text[b - 1]);
      const bool right = b + 5 >= text.size() || !is_word(text[b + 5]);
      if (left && right) break;
      b = text.find("BREAK", b + 1);
    }
    if (b == std::string::npos) break;
    size_t start = b;
    while (start > pos && is_space(text[start - 1])) --start;
    size_t end = b + 5;
    while (end < text.size() && is_space(text[end])) ++end;
    res.push_back({text.substr(pos, start - pos), 1.0, false});
    res.push_back({"BREAK", -1.0, true});
    pos = end;
    search = end;
  }
  res.push_back({text.substr(pos), 1.0, false});
}

}  // namespace

std::vector<WeightedText> parse_prompt_attention(const std::string& text) {
  std::vector<WeightedText> res;
  std::vector<size_t> round, square;
  auto multiply = [&](size_t from, double m) {
    for (size_t p = from; p < res.size(); ++p) res[p].weight *= m;
  };
  size_t i = 0;
  const size_t n = text.size();
  while (i < n) {
    const char c = text[i];
    if (c == '\\') {
      // \( \) \[ \] \\ give the character; a lone backslash gives "" (text[1:] in A1111).
      if (i + 1 < n && in_set("()[]\\", text[i + 1])) {
        res.push_back({std::string(1, text[i + 1]), 1.0, false});
        i += 2;
      } else {
        res.push_back({"", 1.0, false});
        i += 1;
      }
      continue;
    }
    if (c == '(') {
      round.push_back(res.size());
      ++i;
      continue;
    }
    if (c == '[') {
      square.push_back(res.size());
      ++i;
      continue;
    }
    if (c == ':') {
      std::string number;
      const size_t len = match_weight(text, i, number);
      double weight = 0;
      if (len > 0 && !round.empty() && parse_number(number, weight)) {
        multiply(round.back(), weight);
        round.pop_back();
        i += len;
      } else if (len > 0) {
        append_text(text.substr(i, len), res);  // A1111: the match as text
        i += len;
      } else {
        append_text(":", res);
        ++i;
      }
      continue;
    }
    if (c == ')' && !round.empty()) {
      multiply(round.back(), kRound);
      round.pop_back();
      ++i;
      continue;
    }
    if (c == ']' && !square.empty()) {
      multiply(square.back(), kSquare);
      square.pop_back();
      ++i;
      continue;
    }
    if (c == ')' || c == ']') {
      append_text(std::string(1, c), res);
      ++i;
      continue;
    }
    size_t j = i;
    while (j < n && !in_set("\\()[]:", text[j])) ++j;
    append_text(text.substr(i, j - i), res);
    i = j;
  }
  for (const size_t p : round) multiply(p, kRound);
  for (const size_t p : square) multiply(p, kSquare);
  if (res.empty()) res.push_back({"", 1.0, false});
  for (size_t k = 0; k + 1 < res.size();) {
    if (res[k].weight == res[k + 1].weight) {
      res[k].text += res[k + 1].text;
      res.erase(res.begin() + static_cast<std::ptrdiff_t>(k) + 1);
    } else {
      ++k;
    }
  }
  return res;
}

std::vector<PromptChunk> chunk_weighted_prompt(const std::vector<WeightedText>& parsed,
                                               const TokenizeFn& tokenize,
                                               const ChunkingOptions& options) {
  const auto length = static_cast<size_t>(options.chunk_length);
  std::vector<PromptChunk> chunks;
  PromptChunk chunk;
  int64_t last_comma = -1;
  auto next_chunk = [&]() {
    chunk.tokens.resize(length, options.eos_id);
    chunk.weights.resize(length, 1.0);
    chunk.tokens.insert(chunk.tokens.begin(), options.bos_id);
    chunk.tokens.push_back(options.eos_id);
    chunk.weights.insert(chunk.weights.begin(), 1.0);
    chunk.weights.push_back(1.0);
    last_comma = -1;
    chunks.push_back(std::move(chunk));
    chunk = PromptChunk{};
  };
  for (const auto& piece : parsed) {
    if (piece.is_break && piece.weight == -1.0) {
      next_chunk();
      continue;
    }
    for (const int64_t token : tokenize(piece.text)) {
      if (options.comma_id >= 0 && token == options.comma_id) {
        last_comma = static_cast<int64_t>(chunk.tokens.size());
      } else if (options.comma_padding_backtrack != 0 && chunk.tokens.size() == length &&
                 last_comma != -1 &&
                 static_cast<int64_t>(chunk.tokens.size()) - last_comma <=
                     options.comma_padding_backtrack) {
        const auto at = static_cast<std::ptrdiff_t>(last_comma + 1);
        std::vector<int64_t> moved_tokens(chunk.tokens.begin() + at, chunk.tokens.end());
        std::vector<double> moved_weights(chunk.weights.begin() + at, chunk.weights.end());
        chunk.tokens.resize(static_cast<size_t>(at));
        chunk.weights.resize(static_cast<size_t>(at));
        next_chunk();
        chunk.tokens = std::move(moved_tokens);
        chunk.weights = std::move(moved_weights);
      }
      if (chunk.tokens.size() == length) next_chunk();
      chunk.tokens.push_back(token);
      chunk.weights.push_back(piece.weight);
    }
  }
  if (!chunk.tokens.empty() || chunks.empty()) next_chunk();
  return chunks;
}

PromptChunk empty_prompt_chunk(const ChunkingOptions& options) {
  PromptChunk chunk;
  chunk.tokens.assign(static_cast<size_t>(options.chunk_length) + 2, options.eos_id);
  chunk.tokens.front() = options.bos_id;
  chunk.weights.assign(chunk.tokens.size(), 1.0);
  return chunk;
}

ChunkingOptions chunking_options(const ClipTokenizer& tokenizer) {
  ChunkingOptions options;
  options.chunk_length = tokenizer.max_length() - 2;
  options.bos_id = tokenizer.bos_id();
  options.eos_id = tokenizer.eos_id();
  options.comma_id = tokenizer.token_to_id(",</w>");
  return options;
}

}  // namespace ldcp::clip
