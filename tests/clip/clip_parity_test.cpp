// Parity with transformers (tests/parity/ref_clip.py): CLIPTokenizer's ids for every prompt of
// the corpus on every tokenizer folder layout, and CLIPTextModel's last_hidden_state.

#include <set>

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "model/clip/modeling_clip.h"
#include "model/clip/tokenization_clip.h"
#include "model/io/json_file.h"
#include "model/io/safetensors.h"
#include "tests/common/test_util.h"

namespace ldcp::clip {
namespace {

namespace fs = std::filesystem;
using ldcp::testing::parity_dir;

fs::path ref_dir() { return parity_dir() / "ref" / "clip"; }

const nlohmann::json& tokenizer_ref() {
  static const auto ref = io::read_json_file(ref_dir() / "tokenizer.json");
  return ref;
}

const io::TensorMap& text_encoder_ref() {
  static const auto ref = io::load_safetensors(ref_dir() / "text_encoder.safetensors");
  return ref;
}

// Printable form of a prompt for failure messages.
std::string quoted(const std::string& text) { return nlohmann::json(text).dump(); }

const std::vector<std::string> kTokenizers = {"tiny-a", "tiny-b", "sd15", "hf5", "legacy-json"};
const std::vector<std::string> kTextEncoders = {
    "tiny-a",   "tiny-b",        "tiny-a-fp16", "act-gelu_new", "act-gelu_pytorch_tanh",
    "act-relu", "act-gelu_fast", "act-silu",    "sd15-layout"};

TEST(ClipParity, ReferenceCoversTheExpectedCases) {
  std::set<std::string> tokenizers;
  for (const auto& item : tokenizer_ref().at("tokenizers").items()) tokenizers.insert(item.key());
  EXPECT_EQ(tokenizers, std::set<std::string>(kTokenizers.begin(), kTokenizers.end()));
  EXPECT_GE(tokenizer_ref().at("prompts").size(), 30u);
  std::set<std::string> encoders;
  const auto encoder_ref = io::read_json_file(ref_dir() / "text_encoder.json");
  for (const auto& item : encoder_ref.at("dirs").items()) encoders.insert(item.key());
  EXPECT_EQ(encoders, std::set<std::string>(kTextEncoders.begin(), kTextEncoders.end()));
}

class TokenizerParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TokenizerParity, IdsEqualTransformers) {
  const auto& ref = tokenizer_ref().at("tokenizers").at(GetParam());
  const auto tokenizer =
      ClipTokenizer::from_folder(parity_dir() / ref.at("dir").get<std::string>());
  EXPECT_EQ(tokenizer.max_length(), ref.at("model_max_length").get<int64_t>());
  EXPECT_EQ(tokenizer.bos_id(), ref.at("bos_id").get<int64_t>());
  EXPECT_EQ(tokenizer.eos_id(), ref.at("eos_id").get<int64_t>());
  EXPECT_EQ(tokenizer.pad_id(), ref.at("pad_id").get<int64_t>());

  const auto& prompts = tokenizer_ref().at("prompts");
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto prompt = prompts[i].get<std::string>();
    SCOPED_TRACE("prompt " + std::to_string(i) + ": " + quoted(prompt));
    EXPECT_EQ(tokenizer.tokenize(prompt), ref.at("tokenize")[i].get<std::vector<int64_t>>());
    EXPECT_EQ(tokenizer.encode(prompt), ref.at("encode")[i].get<std::vector<int64_t>>());
  }
}

INSTANTIATE_TEST_SUITE_P(Folders, TokenizerParity, ::testing::ValuesIn(kTokenizers),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (auto& c : name)
                             c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return name;
                         });

class TextEncoderParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TextEncoderParity, LastHiddenStateEqualsTransformers) {
  const auto dirs = io::read_json_file(ref_dir() / "text_encoder.json").at("dirs");
  auto model = load_clip_text_model(parity_dir() / dirs.at(GetParam()).get<std::string>());
  EXPECT_FALSE(model->is_training());
  torch::NoGradGuard no_grad;
  const auto& ref = text_encoder_ref();
  for (const std::string part : {"", "short_"}) {
    SCOPED_TRACE(part.empty() ? "77 tokens" : "short");
    const auto out = model->forward(ref.at(part + "input_ids"));
    EXPECT_ALLCLOSE(out, ref.at(GetParam() + "." + part + "last_hidden_state"));
  }
}

INSTANTIATE_TEST_SUITE_P(Models, TextEncoderParity, ::testing::ValuesIn(kTextEncoders),
                         [](const auto& info) {
                           std::string name = info.param;
                           for (auto& c : name)
                             c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
                           return name;
                         });

// The pipeline's path: C++ tokenizer ids straight into the C++ text encoder.
TEST(ClipParity, TokenizerFeedsTheTextEncoder) {
  const auto ref = io::read_json_file(ref_dir() / "text_encoder.json");
  const auto layout = ref.at("tokenizer").get<std::string>();
  const auto dir = tokenizer_ref().at("tokenizers").at(layout).at("dir").get<std::string>();
  const auto tokenizer = ClipTokenizer::from_folder(parity_dir() / dir);
  const auto prompts = ref.at("prompts").get<std::vector<std::string>>();
  std::vector<int64_t> flat;
  for (const auto& text : prompts) {
    const auto ids = tokenizer.encode(text);
    flat.insert(flat.end(), ids.begin(), ids.end());
  }
  const auto input_ids = torch::tensor(flat, torch::kLong)
                             .view({static_cast<int64_t>(prompts.size()), tokenizer.max_length()});
  ASSERT_TRUE(torch::equal(input_ids, text_encoder_ref().at("input_ids")));

  auto model = load_clip_text_model(ldcp::testing::parity_model("tiny-b") / "text_encoder");
  torch::NoGradGuard no_grad;
  EXPECT_ALLCLOSE(model->forward(input_ids), text_encoder_ref().at("tiny-b.last_hidden_state"));
}

}  // namespace
}  // namespace ldcp::clip
