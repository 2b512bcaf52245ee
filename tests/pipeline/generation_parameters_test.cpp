// The PNG "parameters" text (model/pipelines/generation_parameters.h): A1111's infotext layout,
// its quoting, the optional keys, the sampler names, the project's own keys, what sanitizing
// does to hostile prompts; and the PNG encoder's text chunks (image_codec.h), read back with
// libpng.

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "model/pipelines/generation_parameters.h"
#include "model/pipelines/image_codec.h"

namespace ldcp::pipelines {
namespace {

GenerationInfo txt2img() {
  GenerationInfo info;
  info.prompt = "a red fox in the snow";
  info.steps = 20;
  info.sampler = "euler_a";
  info.guidance_scale = 7.5;
  info.seed = 42;
  info.width = 512;
  info.height = 768;
  info.model_name = "v1-5-pruned-emaonly";
  info.model_hash = "6ce0161689";
  info.gate_scores = "magnitude";
  info.step_levels = std::vector<double>(20, 0.0);
  return info;
}

TEST(GenerationParameters, TextToImageAsA1111WritesIt) {
  EXPECT_EQ(format_generation_parameters(txt2img()),
            "a red fox in the snow\n"
            "Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x768, "
            "Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, LDCP sampler: euler_a");
}

TEST(GenerationParameters, OptionalKeys) {
  auto info = txt2img();
  info.negative_prompt = "blurry, low quality";
  info.sampler = "dpmpp_2m_karras";
  info.guidance_scale = 7;
  info.seed = 9007199254740991ULL;
  info.batch_size = 4;
  info.batch_pos = 2;
  info.denoising_strength = 0.75;
  info.inpainting = true;
  info.clip_skip = 2;
  info.a1111_prompt_syntax = true;
  info.guidance_rescale = 0.7;
  info.step_levels = {0.5, 0.5, 0.5};
  info.gates_file_hash = "0123456789";
  info.gate_scores = "learned";
  EXPECT_EQ(format_generation_parameters(info),
            "a red fox in the snow\n"
            "Negative prompt: blurry, low quality\n"
            "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7.0, "
            "Seed: 9007199254740991, Size: 512x768, Model hash: 6ce0161689, "
            "Model: v1-5-pruned-emaonly, Batch size: 4, Batch pos: 2, Denoising strength: 0.75, "
            "Clip skip: 2, LDCP sampler: dpmpp_2m_karras, LDCP mode: inpaint, "
            "LDCP prompt syntax: a1111, LDCP guidance rescale: 0.7, LDCP pruning: 0.5, "
            "LDCP gate scores: learned, LDCP gates hash: 0123456789");
}

TEST(GenerationParameters, LeftOutWhenDefault) {
  auto info = txt2img();
  info.clip_skip = 1;  // A1111 writes clip skip only above 1
  info.model_hash.clear();
  info.model_name.clear();
  info.sampler = "ddim";
  info.eta = 0.5;
  const auto text = format_generation_parameters(info);
  EXPECT_EQ(text.find("Clip skip"), std::string::npos) << text;
  EXPECT_EQ(text.find("Model"), std::string::npos) << text;
  EXPECT_EQ(text.find("Negative prompt"), std::string::npos) << text;
  EXPECT_EQ(text.find("LDCP pruning"), std::string::npos) << text;  // every level 0
  EXPECT_EQ(text.find("LDCP gate scores"), std::string::npos) << text;
  EXPECT_NE(text.find("Sampler: DDIM, CFG scale: 7.5"), std::string::npos) << text;
  EXPECT_NE(text.find("Eta DDIM: 0.5"), std::string::npos) << text;
}

TEST(GenerationParameters, PerStepLevelsAsAQuotedList) {
  auto info = txt2img();
  info.step_levels = {0.0, 0.5, 0.35, 0.0};
  const auto text = format_generation_parameters(info);
  EXPECT_NE(text.find(", LDCP pruning levels: \"0,0.5,0.35,0\", LDCP gate scores: magnitude"),
            std::string::npos)
      << text;
}

TEST(GenerationParameters, SamplerNames) {
  const std::vector<std::pair<std::string, std::string>> names{
      {"pndm", "PLMS"},       {"ddim", "DDIM"},         {"euler", "Euler"},
      {"euler_a", "Euler a"}, {"dpmpp_2m", "DPM++ 2M"}, {"dpmpp_2m_karras", "DPM++ 2M"}};
  for (const auto& [ours, theirs] : names) {
    EXPECT_EQ(a1111_sampler(ours).name, theirs) << ours;
    EXPECT_EQ(a1111_sampler(ours).schedule_type, ours == "dpmpp_2m_karras" ? "Karras" : "");
  }
  EXPECT_EQ(a1111_sampler("heun").name, "heun");
}

TEST(GenerationParameters, QuotesAsA1111) {
  EXPECT_EQ(quote_infotext_value("plain value"), "plain value");
  EXPECT_EQ(quote_infotext_value("a, b"), "\"a, b\"");
  EXPECT_EQ(quote_infotext_value("k: v"), "\"k: v\"");
  EXPECT_EQ(quote_infotext_value("two\nlines"), "\"two\\nlines\"");
  EXPECT_EQ(quote_infotext_value("say \"hi\""), "\"say \\\"hi\\\"\"");
  EXPECT_EQ(quote_infotext_value("back\\slash, too"), "\"back\\\\slash, too\"");
  EXPECT_EQ(quote_infotext_value("caf\xC3\xA9, ok"), "\"caf\xC3\xA9, ok\"");  // UTF-8 kept
  // A model name with a comma stays one value.
  auto info = txt2img();
  info.model_name = "my model, v2";
  EXPECT_NE(format_generation_parameters(info).find("Model: \"my model, v2\", "),
            std::string::npos);
}

TEST(GenerationParameters, PythonFloats) {
  EXPECT_EQ(python_float(7.5), "7.5");
  EXPECT_EQ(python_float(7), "7.0");
  EXPECT_EQ(python_float(0), "0.0");
  EXPECT_EQ(python_float(0.35), "0.35");
  EXPECT_EQ(python_float(100000), "100000.0");
  EXPECT_EQ(python_float(1e-5), "1e-05");
  EXPECT_EQ(python_float(1e16), "1e+16");
}

TEST(GenerationParameters, HostilePromptsCannotBreakTheText) {
  auto info = txt2img();
  info.prompt = std::string("a\0b\x01\x1b[31m\r\nnext\rline\x7f\xC2\x85", 23) + "\xff\xc0\xaf";
  info.negative_prompt = "\xed\xa0\x80";  // a surrogate: not UTF-8
  const auto text = format_generation_parameters(info);
  EXPECT_EQ(text.substr(0, text.find("\nSteps")),
            "a b  [31m\nnext\nline  \xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\n"
            "Negative prompt: \xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  for (const char c : text) {
    EXPECT_TRUE(c == '\n' || static_cast<uint8_t>(c) >= 0x20) << static_cast<int>(c);
  }
}

TEST(GenerationParameters, LorasAsA1111WritesThem) {
  auto info = txt2img();
  info.loras = {{"detail", 0.8, "abcdef0123"}, {"style", 1.0, ""}};
  const auto text = format_generation_parameters(info);
  EXPECT_EQ(text.substr(0, text.find('\n')),
            "a red fox in the snow <lora:detail:0.8> <lora:style:1>");
  EXPECT_NE(text.find(", Lora hashes: \"detail: abcdef0123\", "), std::string::npos) << text;
}

TEST(GenerationParameters, EmptyPromptLeavesNoBlankLine) {
  auto info = txt2img();
  info.prompt.clear();
  EXPECT_EQ(format_generation_parameters(info).rfind("Steps: 20, ", 0), 0u);
}

TEST(FileHash, Sha256OfAFile) {
  const auto path = std::filesystem::temp_directory_path() / "ldcp-hash-test.bin";
  {
    std::ofstream out(path, std::ios::binary);
    out << "abc";
  }
  EXPECT_EQ(sha256_file_hex(path),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(short_file_hash(path), "ba7816bf8f");
  std::filesystem::remove(path);
  EXPECT_THROW(short_file_hash(path), std::runtime_error);
}

// ---- the PNG encoder's text chunks ----

std::string chunk_types(const std::string& png) {
  std::string types;
  for (size_t at = 8; at + 8 <= png.size();) {
    const uint32_t length = (uint32_t{static_cast<uint8_t>(png[at])} << 24) |
                            (uint32_t{static_cast<uint8_t>(png[at + 1])} << 16) |
                            (uint32_t{static_cast<uint8_t>(png[at + 2])} << 8) |
                            static_cast<uint8_t>(png[at + 3]);
    types += png.substr(at + 4, 4) + " ";
    at += 12 + length;
  }
  return types;
}

TEST(PngText, AsciiAsTextUtf8AsItxtBeforeTheImage) {
  const std::vector<uint8_t> rgb(4 * 4 * 3, 128);
  const std::string ascii = format_generation_parameters(txt2img());
  const std::string utf8 = "un renard roux \xE2\x80\x94 caf\xC3\xA9\nSteps: 2";
  const auto png = encode_png(rgb.data(), 4, 4, {{"parameters", ascii}, {"other", utf8}});
  EXPECT_EQ(chunk_types(png), "IHDR tEXt iTXt IDAT IEND ");
  const auto text = read_png_text(png, "x.png");
  ASSERT_EQ(text.size(), 2u);
  EXPECT_EQ(text[0].keyword, "parameters");
  EXPECT_EQ(text[0].text, ascii);
  EXPECT_EQ(text[1].keyword, "other");
  EXPECT_EQ(text[1].text, utf8);
  // The pixels are unchanged by the chunks.
  EXPECT_EQ(decode_png(png, "x.png").pixels, rgb);
  EXPECT_EQ(chunk_types(encode_png(rgb.data(), 4, 4)), "IHDR IDAT IEND ");
}

TEST(PngText, RefusesWhatWouldBreakTheChunk) {
  const std::vector<uint8_t> rgb(4 * 4 * 3, 0);
  EXPECT_THROW(encode_png(rgb.data(), 4, 4, {{"parameters", std::string("a\0b", 3)}}), ImageError);
  EXPECT_THROW(encode_png(rgb.data(), 4, 4, {{"", "x"}}), ImageError);
  EXPECT_THROW(encode_png(rgb.data(), 4, 4, {{std::string(80, 'k'), "x"}}), ImageError);
  EXPECT_THROW(read_png_text("not a png", "y.png"), ImageError);
}

}  // namespace
}  // namespace ldcp::pipelines
