// A1111's attention syntax and chunking (model/clip/prompt_weighting.h), the expected values as
// A1111's parse_prompt_attention gives them.
#include "model/clip/prompt_weighting.h"

#include <gtest/gtest.h>

namespace ldcp::clip {
namespace {

using P = std::vector<WeightedText>;
WeightedText w(const std::string& t, double weight) { return {t, weight, false}; }
WeightedText brk() { return {"BREAK", -1.0, true}; }

void expect_parse(const std::string& text, const P& want) {
  const auto got = parse_prompt_attention(text);
  ASSERT_EQ(got.size(), want.size()) << text;
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_EQ(got[i].text, want[i].text) << text << " piece " << i;
    EXPECT_DOUBLE_EQ(got[i].weight, want[i].weight) << text << " piece " << i;
    EXPECT_EQ(got[i].is_break, want[i].is_break) << text << " piece " << i;
  }
}

TEST(PromptAttention, PlainAndEmpty) {
  expect_parse("normal text", {w("normal text", 1.0)});
  expect_parse("", {w("", 1.0)});
}

// Found by fuzz_prompt_attention: strchr matches a NUL byte against any set, so a prompt with
// one never advanced and appended empty pieces until memory ran out.
TEST(PromptAttention, NulBytesAreText) {
  const std::string text("a\0b (c\0:1.2)", 12);
  expect_parse(text, {w(std::string("a\0b ", 4), 1.0), w(std::string("c\0", 2), 1.2)});
}

TEST(PromptAttention, RoundSquareAndExplicit) {
  expect_parse("an (important) word", {w("an ", 1), w("important", 1.1), w(" word", 1)});
  expect_parse("a ((very)) b", {w("a ", 1), w("very", 1.1 * 1.1), w(" b", 1)});
  expect_parse("a [less] b", {w("a ", 1), w("less", 1 / 1.1), w(" b", 1)});
  expect_parse("(word:1.3)", {w("word", 1.3)});
  expect_parse("(word: 0.5 )", {w("word", 0.5)});
  expect_parse("a (b:1.5) (c) [[d]]",
               {w("a ", 1), w("b", 1.5), w(" ", 1), w("c", 1.1), w(" ", 1), w("d", 1 / 1.1 / 1.1)});
}

TEST(PromptAttention, Nested) {
  expect_parse("a (b [c] (d:2)) e", {w("a ", 1), w("b ", 1.1), w("c", 1.1 / 1.1), w(" ", 1.1),
                                     w("d", 2 * 1.1), w(" e", 1)});
  expect_parse("(a ((b)))", {w("a ", 1.1), w("b", 1.1 * 1.1 * 1.1)});
}

TEST(PromptAttention, Escaped) {
  expect_parse("\\(literal\\)", {w("(literal)", 1)});
  expect_parse("\\[x\\] \\\\ y", {w("[x] \\ y", 1)});
  expect_parse("(a \\) b)", {w("a ) b", 1.1)});
  expect_parse("a\\b", {w("ab", 1)});  // a lone backslash is dropped, as A1111's text[1:]
}

TEST(PromptAttention, UnbalancedTolerated) {
  // Unclosed brackets weight to the end; stray closers are literal.
  expect_parse("a (b", {w("a ", 1), w("b", 1.1)});
  expect_parse("a [b", {w("a ", 1), w("b", 1 / 1.1)});
  expect_parse("a) b]", {w("a) b]", 1)});
  expect_parse("((a)", {w("a", 1.1 * 1.1)});
  expect_parse("a :1.2) b", {w("a :1.2) b", 1)});   // a weight with nothing open is text
  expect_parse("(a:1.2.3)", {w("a:1.2.3)", 1.1)});  // not a number: text, "(" unclosed
  expect_parse("time: 3", {w("time: 3", 1)});
}

TEST(PromptAttention, Break) {
  expect_parse("a BREAK b", {w("a", 1), brk(), w("b", 1)});
  expect_parse("aBREAK b BREAKING", {w("aBREAK b BREAKING", 1)});
  // Inside brackets the marker's -1 is weighted too, so A1111 reads it as the word "BREAK".
  expect_parse("(a BREAK b)", {w("a", 1.1), {"BREAK", -1.1, true}, w("b", 1.1)});
}

// Token ids: one per character, so the chunk arithmetic is visible.
std::vector<int64_t> by_char(const std::string& s) {
  std::vector<int64_t> ids;
  for (char c : s) {
    if (c != ' ') ids.push_back(c == ',' ? 7 : 100 + (c - 'a'));
  }
  return ids;
}

TEST(PromptChunking, ShortPromptIsOneChunk) {
  ChunkingOptions opts;
  opts.bos_id = 1;
  opts.eos_id = 2;
  const auto chunks = chunk_weighted_prompt(parse_prompt_attention("a(b)"), by_char, opts);
  ASSERT_EQ(chunks.size(), 1u);
  ASSERT_EQ(chunks[0].tokens.size(), 77u);
  EXPECT_EQ(chunks[0].tokens[0], 1);
  EXPECT_EQ(chunks[0].tokens[1], 100);
  EXPECT_EQ(chunks[0].tokens[2], 101);
  EXPECT_EQ(chunks[0].tokens[3], 2);
  EXPECT_EQ(chunks[0].tokens[76], 2);
  EXPECT_DOUBLE_EQ(chunks[0].weights[2], 1.1);
  EXPECT_DOUBLE_EQ(chunks[0].weights[3], 1.0);
  // An empty prompt is one chunk too, equal to the padding chunk.
  const auto empty = chunk_weighted_prompt(parse_prompt_attention(""), by_char, opts);
  ASSERT_EQ(empty.size(), 1u);
  EXPECT_EQ(empty[0].tokens, empty_prompt_chunk(opts).tokens);
}

TEST(PromptChunking, LongPromptAndBreak) {
  ChunkingOptions opts;
  opts.comma_padding_backtrack = 0;
  EXPECT_EQ(chunk_weighted_prompt({w(std::string(75, 'a'), 1)}, by_char, opts).size(), 1u);
  const auto two = chunk_weighted_prompt({w(std::string(76, 'a'), 1)}, by_char, opts);
  ASSERT_EQ(two.size(), 2u);
  EXPECT_EQ(two[1].tokens[1], 100);
  EXPECT_EQ(two[1].tokens[2], opts.eos_id);
  EXPECT_EQ(chunk_weighted_prompt(parse_prompt_attention("a BREAK b"), by_char, opts).size(), 2u);
  EXPECT_EQ(
      chunk_weighted_prompt(parse_prompt_attention(std::string(200, 'a')), by_char, opts).size(),
      3u);
}

TEST(PromptChunking, CommaBacktrack) {
  ChunkingOptions opts;
  opts.comma_id = 7;
  // 70 letters, a comma, 10 letters: the chunk fills 4 tokens after the comma, so those move on.
  std::string text(70, 'a');
  text += ',';
  text.append(10, 'b');
  const auto chunks = chunk_weighted_prompt({w(text, 1)}, by_char, opts);
  ASSERT_EQ(chunks.size(), 2u);
  EXPECT_EQ(chunks[0].tokens[71], 7);
  EXPECT_EQ(chunks[0].tokens[72], opts.eos_id);
  EXPECT_EQ(chunks[1].tokens[1], 101);
  EXPECT_EQ(chunks[1].tokens[10], 101);
  EXPECT_EQ(chunks[1].tokens[11], opts.eos_id);
}

}  // namespace
}  // namespace ldcp::clip
