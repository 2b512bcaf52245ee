// A1111 prompt weighting and clip skip against an independent Python reference
// (tests/parity/ref_prompt_weighting.py: transformers' CLIPTextModel, diffusers' clip_skip).

#include <gtest/gtest.h>
#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "model/clip/modeling_clip.h"
#include "model/clip/prompt_weighting.h"
#include "model/clip/tokenization_clip.h"
#include "model/clip/weighted_encoding.h"
#include "model/io/json_file.h"
#include "model/io/safetensors.h"
#include "model/pipelines/pipeline_stable_diffusion.h"
#include "tests/common/test_util.h"

namespace ldcp::clip {
namespace {

namespace fs = std::filesystem;
using ldcp::testing::parity_dir;

fs::path ref_dir() { return parity_dir() / "ref" / "prompt_weighting"; }

struct Fixture {
  nlohmann::json cases = io::read_json_file(ref_dir() / "cases.json");
  io::TensorMap tensors = io::load_safetensors(ref_dir() / "embeddings.safetensors");
  fs::path model = parity_dir() / cases.at("model").get<std::string>();
  ClipTokenizer tokenizer = ClipTokenizer::from_folder(model / "tokenizer");
  ClipTextModel encoder = load_clip_text_model(model / "text_encoder");
};

Fixture& fixture() {
  static Fixture f;
  return f;
}

std::vector<PromptChunk> chunks_of(const std::string& text) {
  auto& f = fixture();
  return chunk_weighted_prompt(
      parse_prompt_attention(text), [&](const std::string& s) { return f.tokenizer.tokenize(s); },
      chunking_options(f.tokenizer));
}

void expect_close(const at::Tensor& got, const at::Tensor& want, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const double diff = (got - want).abs().max().item<double>();
  EXPECT_LT(diff, 1e-5) << what;
}

TEST(PromptWeightingParity, ParsedWeightsChunksAndEmbeddings) {
  auto& f = fixture();
  torch::NoGradGuard no_grad;
  const auto& cases = f.cases.at("cases");
  ASSERT_GE(cases.size(), 6u);
  bool saw_long = false;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    const auto prompt = c.at("prompt").get<std::string>();
    const auto negative = c.at("negative").get<std::string>();
    const auto skip = c.at("clip_skip").get<int64_t>();
    const auto parsed = parse_prompt_attention(prompt);
    const auto& want_parsed = c.at("parsed");
    ASSERT_EQ(parsed.size(), want_parsed.size()) << prompt;
    for (size_t k = 0; k < parsed.size(); ++k) {
      EXPECT_EQ(parsed[k].text, want_parsed[k][0].get<std::string>()) << prompt;
      EXPECT_EQ(parsed[k].weight, want_parsed[k][1].get<double>()) << prompt;  // exact
    }
    auto pos = chunks_of(prompt), neg = chunks_of(negative);
    const auto& want_chunks = c.at("chunks");
    const auto& want_weights = c.at("weights");
    if (want_chunks.size() > 1) saw_long = true;
    // The reference pads the prompt to the negative's chunk count too.
    const PromptChunk empty = chunks_of("").front();
    while (pos.size() < neg.size()) pos.push_back(empty);
    while (neg.size() < pos.size()) neg.push_back(empty);
    ASSERT_EQ(pos.size(), want_chunks.size()) << prompt;
    for (size_t k = 0; k < pos.size(); ++k) {
      EXPECT_EQ(pos[k].tokens, want_chunks[k].get<std::vector<int64_t>>()) << prompt;
      EXPECT_EQ(pos[k].weights, want_weights[k].get<std::vector<double>>()) << prompt;
    }
    const auto name = "case" + std::to_string(i);
    expect_close(encode_weighted_chunks(*f.encoder, pos, skip), f.tensors.at(name + ".prompt"),
                 name + " prompt");
    expect_close(encode_weighted_chunks(*f.encoder, neg, skip), f.tensors.at(name + ".negative"),
                 name + " negative");
  }
  EXPECT_TRUE(saw_long) << "no prompt longer than 77 tokens";
}

TEST(ClipSkipParity, HiddenStatesAndDiffusers) {
  auto& f = fixture();
  torch::NoGradGuard no_grad;
  for (int64_t skip : {1, 2, 3}) {
    const auto key = "skip" + std::to_string(skip);
    const auto got = encode_with_clip_skip(*f.encoder, f.tensors.at(key + ".input_ids"), skip);
    expect_close(got, f.tensors.at(key + ".hidden_state"), key + " transformers");
    expect_close(got, f.tensors.at(key + ".diffusers"), key + " diffusers");
  }
  // clip skip 0 is the last layer, as 1; differing skips differ.
  const auto ids = f.tensors.at("skip1.input_ids");
  EXPECT_TRUE(torch::equal(encode_with_clip_skip(*f.encoder, ids, 0),
                           encode_with_clip_skip(*f.encoder, ids, 1)));
  EXPECT_FALSE(torch::allclose(encode_with_clip_skip(*f.encoder, ids, 1),
                               encode_with_clip_skip(*f.encoder, ids, 2)));
  EXPECT_THROW(encode_with_clip_skip(*f.encoder, ids, 4), std::invalid_argument);
  EXPECT_THROW(encode_with_clip_skip(*f.encoder, ids, -1), std::invalid_argument);
}

// Through the pipeline: A1111 requests get the reference's [negative; positive] embeddings
// (chunk padding included), plain requests with clip_skip get diffusers' clip_skip, and plain
// prompts are unchanged by the new fields' defaults.
TEST(PromptWeightingParity, PipelineEncodePrompt) {
  auto& f = fixture();
  auto pipe = pipelines::StableDiffusionPipeline::load(f.model);
  const auto& cases = f.cases.at("cases");
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    const auto name = "case" + std::to_string(i);
    const auto got = pipe->encode_prompt(
        c.at("prompt").get<std::string>(), c.at("negative").get<std::string>(), 2, true,
        pipelines::PromptSyntax::kA1111, c.at("clip_skip").get<int64_t>());
    const auto neg = f.tensors.at(name + ".negative"), pos = f.tensors.at(name + ".prompt");
    expect_close(got, torch::cat({neg, neg, pos, pos}), name + " pipeline");
  }
  for (int64_t skip : {2, 3}) {
    const auto key = "skip" + std::to_string(skip);
    const auto got = pipe->encode_prompt("a photo of an astronaut riding a horse", "", 1, false,
                                         pipelines::PromptSyntax::kPlain, skip);
    expect_close(got, f.tensors.at(key + ".diffusers"), key + " pipeline");
  }
  pipelines::GenerationParams p;
  p.width = p.height = 64;
  p.steps = 2;
  p.clip_skip = 4;  // tiny-b has 3 layers
  EXPECT_THROW(pipe->validate(p), std::invalid_argument);
  p.clip_skip = 3;
  EXPECT_NO_THROW(pipe->validate(p));
  p.prompt_syntax = pipelines::PromptSyntax::kA1111;
  std::string huge;
  for (int k = 0; k < 700; ++k) huge += "cat ";
  p.prompt = huge;  // 700 tokens: 10 chunks > kMaxPromptChunks
  EXPECT_THROW(pipe->validate(p), std::invalid_argument);
  // A1111 requests batch only with the same prompts; plain ones as before.
  auto q = p;
  q.prompt = "other";
  EXPECT_FALSE(pipelines::batchable(p, q));
  q.prompt = p.prompt;
  EXPECT_TRUE(pipelines::batchable(p, q));
  q.prompt_syntax = pipelines::PromptSyntax::kPlain;
  EXPECT_FALSE(pipelines::batchable(p, q));
}

}  // namespace
}  // namespace ldcp::clip
