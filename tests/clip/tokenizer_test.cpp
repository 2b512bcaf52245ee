// ClipTokenizer behaviour that needs no reference run: BPE on the real CLIP vocabulary
// (data/clip) and on a hand-made one, BOS/EOS/padding/truncation, tokenizer folder layouts and
// their errors. Equality with transformers is in clip_parity_test.

#include <fstream>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/clip/tokenization_clip.h"
#include "model/io/json_file.h"
#include "tests/common/test_util.h"

namespace ldcp::clip {
namespace {

namespace fs = std::filesystem;
using ldcp::testing::source_dir;
using ldcp::testing::temp_dir;

fs::path clip_vocab_dir() { return source_dir() / "data" / "clip"; }

const ClipTokenizer& full_tokenizer() {
  static const ClipTokenizer tokenizer = ClipTokenizer::from_folder(clip_vocab_dir());
  return tokenizer;
}

void write_file(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  ASSERT_TRUE(out.good()) << path;
}

// The message of the exception `fn` throws (empty, with a test failure, if none).
template <typename Exception, typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Exception& e) {
    return e.what();
  }
  ADD_FAILURE() << "no exception thrown";
  return {};
}

std::vector<std::string> tokens_of(const ClipTokenizer& tokenizer,
                                   const std::vector<int64_t>& ids) {
  static const auto vocab = io::read_json_file(clip_vocab_dir() / "vocab.json");
  static const auto inverse = [] {
    std::map<int64_t, std::string> out;
    for (const auto& [token, id] : vocab.items()) out[id.get<int64_t>()] = token;
    return out;
  }();
  std::vector<std::string> tokens;
  for (auto id : ids) tokens.push_back(inverse.at(id));
  return tokens;
}

TEST(ClipTokenizer, KnownWordsAreSingleTokens) {
  const auto& tok = full_tokenizer();
  EXPECT_EQ(tok.tokenize("photo"), std::vector<int64_t>{tok.token_to_id("photo</w>")});
  EXPECT_EQ(tok.tokenize("a photo of a cat"),
            (std::vector<int64_t>{tok.token_to_id("a</w>"), tok.token_to_id("photo</w>"),
                                  tok.token_to_id("of</w>"), tok.token_to_id("a</w>"),
                                  tok.token_to_id("cat</w>")}));
  // Lower-cased before BPE, white space only separates.
  EXPECT_EQ(tok.tokenize("  A\tPHOTO\n"), tok.tokenize("a photo"));
  EXPECT_GE(tok.token_to_id("photo</w>"), 0);
}

TEST(ClipTokenizer, RareWordSplitsIntoPiecesThatSpellIt) {
  const auto& tok = full_tokenizer();
  const auto ids = tok.tokenize("supercalifragilisticexpialidocious");
  ASSERT_GT(ids.size(), 2u);
  std::string spelled;
  for (const auto& token : tokens_of(tok, ids)) spelled += token;
  EXPECT_EQ(spelled, "supercalifragilisticexpialidocious</w>");
  // Only the last piece ends the word.
  for (const auto& token : tokens_of(tok, {ids.begin(), ids.end() - 1})) {
    EXPECT_EQ(token.find("</w>"), std::string::npos) << token;
  }
}

TEST(ClipTokenizer, BytesOutsideAsciiUseTheByteAlphabet) {
  const auto& tok = full_tokenizer();
  // "é" is C3 A9; GPT-2's byte alphabet maps C3 -> "Ã" and A9 -> "©".
  std::string spelled;
  for (const auto& token : tokens_of(tok, tok.tokenize("\xC3\xA9"))) spelled += token;
  EXPECT_EQ(spelled, "\xC3\x83\xC2\xA9</w>");
  // NFC: "e" + combining acute is "é".
  EXPECT_EQ(tok.tokenize("cafe\xCC\x81"), tok.tokenize("caf\xC3\xA9"));
}

// A hand-made vocabulary where the merge order decides the result.
ClipTokenizer small_tokenizer(bool ab_first) {
  ClipTokenizer::Vocab vocab = {{"a", 0},
                                {"b", 1},
                                {"c", 2},
                                {"a</w>", 3},
                                {"b</w>", 4},
                                {"c</w>", 5},
                                {"ab", 6},
                                {"bc</w>", 7},
                                {"abc</w>", 8},
                                {"<|startoftext|>", 9},
                                {"<|endoftext|>", 10}};
  ClipTokenizer::Merges merges = {{"b", "c</w>"}, {"a", "b"}, {"ab", "c</w>"}};
  if (ab_first) std::swap(merges[0], merges[1]);
  ClipTokenizerOptions options;
  options.model_max_length = 6;
  return ClipTokenizer(vocab, merges, options);
}

TEST(ClipTokenizer, MergesApplyInRankOrder) {
  EXPECT_EQ(small_tokenizer(false).tokenize("abc"), (std::vector<int64_t>{0, 7}));  // a bc</w>
  EXPECT_EQ(small_tokenizer(true).tokenize("abc"), (std::vector<int64_t>{8}));      // abc</w>
  EXPECT_EQ(small_tokenizer(true).tokenize("ab"), (std::vector<int64_t>{0, 4}));    // a b</w>
  // Characters outside the vocabulary become unk (<|endoftext|>), one per character.
  EXPECT_EQ(small_tokenizer(true).tokenize("xa"), (std::vector<int64_t>{10, 3}));
}

TEST(ClipTokenizer, PadsAndTruncatesToModelMaxLength) {
  const auto tok = small_tokenizer(true);
  EXPECT_EQ(tok.max_length(), 6);
  EXPECT_EQ(tok.encode(""), (std::vector<int64_t>{9, 10, 10, 10, 10, 10}));
  EXPECT_EQ(tok.encode("abc a"), (std::vector<int64_t>{9, 8, 3, 10, 10, 10}));
  EXPECT_EQ(tok.encode("a a a a"), (std::vector<int64_t>{9, 3, 3, 3, 3, 10}));
  EXPECT_EQ(tok.encode("a a a a a a a a"), (std::vector<int64_t>{9, 3, 3, 3, 3, 10}));
}

TEST(ClipTokenizer, EncodeIsAlways77OnTheFullVocabulary) {
  const auto& tok = full_tokenizer();
  EXPECT_EQ(tok.max_length(), 77);
  EXPECT_EQ(tok.bos_id(), tok.token_to_id("<|startoftext|>"));
  EXPECT_EQ(tok.eos_id(), tok.token_to_id("<|endoftext|>"));
  EXPECT_EQ(tok.pad_id(), tok.eos_id());

  std::string long_text;
  for (int i = 0; i < 200; ++i) long_text += "cat ";
  for (const std::string& text : {std::string(), std::string("a photo of a cat"), long_text}) {
    const auto ids = tok.encode(text);
    const auto content = tok.tokenize(text);
    ASSERT_EQ(ids.size(), 77u);
    EXPECT_EQ(ids.front(), tok.bos_id());
    const size_t kept = std::min<size_t>(content.size(), 75);
    EXPECT_TRUE(std::equal(content.begin(), content.begin() + kept, ids.begin() + 1));
    EXPECT_EQ(ids[kept + 1], tok.eos_id());
    for (size_t i = kept + 2; i < ids.size(); ++i) EXPECT_EQ(ids[i], tok.pad_id());
  }
}

TEST(ClipTokenizer, SpecialTokensInTheTextKeepTheirIds) {
  const auto& tok = full_tokenizer();
  const auto ids = tok.tokenize("a<|endoftext|>b<|startoftext|>");
  EXPECT_EQ(ids, (std::vector<int64_t>{tok.token_to_id("a</w>"), tok.eos_id(),
                                       tok.token_to_id("b</w>"), tok.bos_id()}));
}

TEST(ClipTokenizer, RejectsInvalidUtf8) {
  const auto& tok = full_tokenizer();
  for (const std::string bad : {"\xC3", "abc\xFF", "\xED\xA0\x80", "\xC0\xAF"}) {
    EXPECT_THROW(tok.encode(bad), std::invalid_argument) << bad;
  }
}

TEST(ClipTokenizer, IsSafeToShareAcrossThreads) {
  const auto& tok = full_tokenizer();
  const std::vector<std::string> texts = {"a photo of a cat", "an astronaut riding a horse",
                                          "Zo\xC3\xAB's caf\xC3\xA9, 1024x768"};
  std::vector<std::vector<int64_t>> expected;
  for (const auto& text : texts) expected.push_back(tok.encode(text));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        const auto k = static_cast<size_t>((i + t) % 3);
        if (tok.encode(texts[k]) != expected[k]) ++mismatches;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(mismatches.load(), 0);
}

// ---- folders -----------------------------------------------------------------------------

// Found by fuzz_clip_tokenizer_files: a special token outside the vocabulary kept its configured
// id, beyond vocab_size(). Added tokens extend the vocabulary (as in transformers); an absurd id
// is refused.
TEST(ClipTokenizer, AddedTokensBeyondTheVocabularyExtendItAndAbsurdIdsAreRefused) {
  ClipTokenizer::Vocab vocab{{"a</w>", 0}, {"<|startoftext|>", 1}};
  ClipTokenizerOptions options;
  options.eos_token = AddedToken{"<|endoftext|>"};
  options.eos_token.id = 2;
  options.pad_token = options.unk_token = options.eos_token;
  const ClipTokenizer tok(vocab, {}, options);
  EXPECT_EQ(tok.vocab_size(), 3);
  for (int64_t id : tok.encode("a <|endoftext|>")) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, tok.vocab_size());
  }
  // Vocabulary ids need not be contiguous; every id encode() gives is below vocab_size().
  ClipTokenizer::Vocab sparse{{"a</w>", 5000}, {"<|startoftext|>", 1}, {"<|endoftext|>", 2}};
  const ClipTokenizer gaps(sparse, {}, ClipTokenizerOptions{});
  EXPECT_EQ(gaps.vocab_size(), 5001);
  for (int64_t id : gaps.encode("a a")) EXPECT_LT(id, gaps.vocab_size());
  sparse["a</w>"] = -3;
  EXPECT_NE(error_of<TokenizerError>([&] {
              ClipTokenizer(sparse, {}, ClipTokenizerOptions{});
            }).find("outside [0, 2^24)"),
            std::string::npos);
  options.eos_token.id = int64_t{1} << 40;
  options.pad_token = options.unk_token = options.eos_token;
  EXPECT_NE(error_of<TokenizerError>([&] {
              ClipTokenizer(vocab, {}, options, "tok.json");
            }).find("far beyond the vocabulary"),
            std::string::npos);
}

TEST(ClipTokenizerFolder, ReadsTokenizerConfig) {
  const auto dir = temp_dir("clip-config");
  fs::copy(clip_vocab_dir() / "vocab.json", dir / "vocab.json");
  fs::copy(clip_vocab_dir() / "merges.txt", dir / "merges.txt");
  write_file(
      dir / "tokenizer_config.json",
      R"({"model_max_length": 16, "pad_token": "!", "bos_token": {"content": "<|startoftext|>",
                "normalized": true, "__type": "AddedToken"}})");
  const auto tok = ClipTokenizer::from_folder(dir);
  EXPECT_EQ(tok.max_length(), 16);
  EXPECT_EQ(tok.pad_id(), tok.token_to_id("!"));
  const auto ids = tok.encode("a photo");
  ASSERT_EQ(ids.size(), 16u);
  EXPECT_EQ(ids[3], tok.eos_id());
  EXPECT_EQ(ids[4], tok.token_to_id("!"));
  // A normalized bos_token also matches its upper-case spelling (lower-cased first).
  EXPECT_EQ(tok.tokenize("<|STARTOFTEXT|>"), std::vector<int64_t>{tok.bos_id()});
  EXPECT_GT(full_tokenizer().tokenize("<|STARTOFTEXT|>").size(), 1u);
}

TEST(ClipTokenizerFolder, ReadsTokenizerJsonWithEitherMergeFormat) {
  const auto vocab = io::read_json_file(clip_vocab_dir() / "vocab.json");
  std::ifstream merges_in(clip_vocab_dir() / "merges.txt");
  nlohmann::json pairs = nlohmann::json::array(), strings = nlohmann::json::array();
  std::string line;
  while (std::getline(merges_in, line)) {
    if (line.empty() || line.rfind("#version", 0) == 0) continue;
    const auto space = line.find(' ');
    pairs.push_back({line.substr(0, space), line.substr(space + 1)});
    strings.push_back(line);
  }
  const std::string text = "Portrait of Zo\xC3\xAB, trending on artstation, 8k!";
  for (const auto& merges : {pairs, strings}) {
    const auto dir = temp_dir("clip-json");
    nlohmann::json tokenizer = {{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}}}};
    write_file(dir / "tokenizer.json", tokenizer.dump());
    EXPECT_EQ(ClipTokenizer::from_folder(dir).encode(text), full_tokenizer().encode(text));
  }
}

TEST(ClipTokenizerFolder, ErrorsNameTheFile) {
  const auto missing = temp_dir("clip-missing") / "nope";
  EXPECT_NE(error_of<TokenizerError>([&] { ClipTokenizer::from_folder(missing); }).find("nope"),
            std::string::npos);

  const auto empty = temp_dir("clip-empty");
  EXPECT_NE(
      error_of<TokenizerError>([&] { ClipTokenizer::from_folder(empty); }).find("tokenizer.json"),
      std::string::npos);

  const auto no_merges = temp_dir("clip-no-merges");
  fs::copy(clip_vocab_dir() / "vocab.json", no_merges / "vocab.json");
  EXPECT_NE(error_of<TokenizerError>([&] {
              ClipTokenizer::from_folder(no_merges);
            }).find((no_merges / "merges.txt").string()),
            std::string::npos);

  const auto no_vocab = temp_dir("clip-no-vocab");
  fs::copy(clip_vocab_dir() / "merges.txt", no_vocab / "merges.txt");
  EXPECT_NE(error_of<TokenizerError>([&] {
              ClipTokenizer::from_folder(no_vocab);
            }).find((no_vocab / "vocab.json").string()),
            std::string::npos);

  const auto bad_merge = temp_dir("clip-bad-merge");
  fs::copy(clip_vocab_dir() / "vocab.json", bad_merge / "vocab.json");
  write_file(bad_merge / "merges.txt", "#version: 0.2\ni n\nthree parts here\n");
  const auto message = error_of<TokenizerError>([&] { ClipTokenizer::from_folder(bad_merge); });
  EXPECT_NE(message.find("merges.txt"), std::string::npos) << message;
  EXPECT_NE(message.find("merge 3"), std::string::npos) << message;

  const auto unknown_merge = temp_dir("clip-unknown-merge");
  fs::copy(clip_vocab_dir() / "vocab.json", unknown_merge / "vocab.json");
  write_file(unknown_merge / "merges.txt", "#version: 0.2\nqqqq zzzz\n");
  EXPECT_NE(
      error_of<TokenizerError>([&] { ClipTokenizer::from_folder(unknown_merge); }).find("qqqq"),
      std::string::npos);

  const auto bad_json = temp_dir("clip-bad-json");
  write_file(bad_json / "tokenizer.json", "{\"model\": ");
  EXPECT_NE(error_of<io::ConfigError>([&] {
              ClipTokenizer::from_folder(bad_json);
            }).find("tokenizer.json"),
            std::string::npos);

  const auto bad_length = temp_dir("clip-bad-length");
  fs::copy(clip_vocab_dir() / "vocab.json", bad_length / "vocab.json");
  fs::copy(clip_vocab_dir() / "merges.txt", bad_length / "merges.txt");
  write_file(bad_length / "tokenizer_config.json", R"({"model_max_length": 1e30})");
  EXPECT_NE(error_of<TokenizerError>([&] {
              ClipTokenizer::from_folder(bad_length);
            }).find("model_max_length"),
            std::string::npos);

  const auto no_special = temp_dir("clip-no-special");
  write_file(no_special / "tokenizer.json", R"({"model": {"type": "BPE", "vocab": {"a": 0}}})");
  EXPECT_NE(error_of<TokenizerError>([&] {
              ClipTokenizer::from_folder(no_special);
            }).find("<|startoftext|>"),
            std::string::npos);
}

}  // namespace
}  // namespace ldcp::clip
