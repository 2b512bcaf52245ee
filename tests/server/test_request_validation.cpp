// Request parsing and validation (server/request_validation.h), without libtorch: what a bad
// request may make the server say or log, the work bound, and bytes protobuf cannot parse.

#include <cmath>

#include <gtest/gtest.h>

#include "server/request_validation.h"

namespace ldcp::server {
namespace {

RequestLimits limits() {
  RequestLimits l;
  l.default_size = 512;
  l.default_steps = 30;
  return l;
}

v1::GenerateRequest valid() {
  v1::GenerateRequest r;
  r.set_prompt("a lighthouse at dawn");
  r.set_width(512);
  r.set_height(512);
  r.set_steps(20);
  return r;
}

std::string check(const v1::GenerateRequest& r, const RequestLimits& l = limits()) {
  ValidatedRequest v;
  return validate_request(r, l, 7, v);
}

TEST(RequestValidation, ValidRequestPassesWithDefaults) {
  ValidatedRequest v;
  v1::GenerateRequest r;
  ASSERT_EQ(validate_request(r, limits(), 7, v), "");
  EXPECT_EQ(v.width, 512);
  EXPECT_EQ(v.steps, 30);
  EXPECT_EQ(v.seed, 7u);
  EXPECT_EQ(v.sampler, "pndm");
  EXPECT_EQ(v.work, request_work(512, 512, 1, 30, true));
}

TEST(RequestValidation, BadSamplerIsQuotedAsAShortPrefix) {
  auto r = valid();
  r.set_sampler(std::string(1000000, 's'));
  const auto error = check(r);
  ASSERT_EQ(error.rfind("sampler: must be one of", 0), 0u) << error.substr(0, 200);
  EXPECT_LT(error.size(), 200u);
  EXPECT_NE(error.find("\"" + std::string(32, 's') + "...\" (1000000 bytes)"), std::string::npos)
      << error;
  r.set_sampler("heun_magic");
  EXPECT_NE(check(r).find("got \"heun_magic\""), std::string::npos) << check(r);
}

TEST(RequestValidation, QuotePrefixEscapesAndCutsAtCharacterBoundaries) {
  EXPECT_EQ(quote_prefix("ab"), "\"ab\"");
  EXPECT_EQ(quote_prefix("a\"b\\c\n"), "\"a\\\"b\\\\c\\n\"");
  EXPECT_EQ(quote_prefix("x\x01y\x7fz"), "\"x\\u0001y\\u007fz\"");
  EXPECT_EQ(quote_prefix("c1\xc2\x85!"), "\"c1\\u0085!\"");  // U+0085 (NEL)
  EXPECT_EQ(quote_prefix("bad\xff"), "\"bad\\xff\"");
  EXPECT_EQ(quote_prefix("caf\xc3\xa9"), "\"caf\xc3\xa9\"");  // printable non-ASCII stays
  // 4 bytes allowed: "abc" fits, the 2-byte character after it does not.
  EXPECT_EQ(quote_prefix("abc\xc3\xa9xyz", 4), "\"abc...\" (8 bytes)");
}

TEST(RequestValidation, RequestIdIsBoundedAndFreeOfControlCharacters) {
  auto r = valid();
  r.set_request_id(std::string(128, 'r'));
  EXPECT_EQ(check(r), "");
  r.set_request_id(std::string(129, 'r'));
  const auto long_error = check(r);
  EXPECT_EQ(long_error.rfind("request_id: at most 128 bytes", 0), 0u) << long_error;
  r.set_request_id(std::string(1000000, 'r'));
  EXPECT_LT(check(r).size(), 200u);
  for (const std::string& bad :
       {std::string("a\nb"), std::string("a\x1b[31m"), std::string("del\x7f"),
        std::string("nel\xc2\x85 status=OK"), std::string("csi\xc2\x9b"), std::string("bad\xff"),
        std::string("overlong\xc0\xaf"), std::string("a\0b", 3)}) {
    r.set_request_id(bad);
    const auto error = check(r);
    EXPECT_EQ(error.rfind("request_id: control characters", 0), 0u) << quote_prefix(bad);
  }
  r.set_request_id("caf\xc3\xa9-42 with spaces");
  EXPECT_EQ(check(r), "");
}

TEST(RequestValidation, Utf8) {
  EXPECT_TRUE(is_valid_utf8(""));
  EXPECT_TRUE(is_valid_utf8("plain"));
  EXPECT_TRUE(is_valid_utf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));  // é € 😀
  EXPECT_FALSE(is_valid_utf8("\xff"));
  EXPECT_FALSE(is_valid_utf8("\xc3"));              // truncated
  EXPECT_FALSE(is_valid_utf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(is_valid_utf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_TRUE(has_control_chars("\xc2\x80"));
  EXPECT_TRUE(has_control_chars("\xc2\x9f"));
  EXPECT_FALSE(has_control_chars("\xc2\xa0"));  // NBSP is not a control character
}

TEST(RequestValidation, AskedShapeIsWhatTheRequestAskedFor) {
  v1::GenerateRequest r;
  r.set_width(7);
  r.set_num_images(99);
  const auto a = asked_shape(r, limits());
  EXPECT_EQ(a.width, 7);
  EXPECT_EQ(a.height, 512);  // the server's default, as it would have run
  EXPECT_EQ(a.steps, 30);
  EXPECT_EQ(a.images, 99);
  EXPECT_EQ(check(r).rfind("width", 0), 0u);
}

TEST(RequestValidation, WorkBoundCountsGuidanceDouble) {
  const auto l = limits();
  ASSERT_EQ(l.max_work, 4 * kDefaultRequestWork);
  auto r = valid();
  // 4 images x 512x512 x 50 steps guided: exactly 4x the default request.
  r.set_num_images(4);
  r.set_steps(50);
  EXPECT_EQ(check(r), "");
  r.set_steps(51);
  const auto error = check(r);
  EXPECT_EQ(error.rfind("work: 512x512 x 4 image(s) x 51 steps x 2 (guided)", 0), 0u) << error;
  EXPECT_NE(error.find("--max-request-work"), std::string::npos);
  r.set_guidance_scale(1.0);  // unguided: half the work
  EXPECT_EQ(check(r), "");
  // 1024x1024 x 4 x 150 guided: 80x a default request.
  r = valid();
  r.set_width(1024);
  r.set_height(1024);
  r.set_num_images(4);
  r.set_steps(150);
  EXPECT_EQ(check(r).rfind("work:", 0), 0u);
  auto unbounded = l;
  unbounded.max_work = 0;
  EXPECT_EQ(check(r, unbounded), "");
}

TEST(RequestValidation, FixedLevelsAndModes) {
  auto r = valid();
  r.mutable_pruning()->set_mode(v1::PRUNING_MODE_FIXED);
  r.mutable_pruning()->set_level(0.3);
  ValidatedRequest v;
  ASSERT_EQ(validate_request(r, limits(), 0, v), "");
  EXPECT_EQ(v.pruning, ValidatedRequest::Pruning::kFixedLevel);
  r.mutable_pruning()->set_max_level(0.2);
  EXPECT_EQ(check(r).rfind("pruning.max_level", 0), 0u);
  r.mutable_pruning()->clear_max_level();
  r.mutable_pruning()->set_level(0);
  r.mutable_pruning()->set_flops_budget(0.5);
  ASSERT_EQ(validate_request(r, limits(), 0, v), "");
  EXPECT_EQ(v.pruning, ValidatedRequest::Pruning::kFixedBudget);
  r.mutable_pruning()->set_mode(v1::PRUNING_MODE_AUTO);
  EXPECT_EQ(check(r).rfind("pruning.flops_budget", 0), 0u);
}

TEST(ParseRequest, ValidBytesParse) {
  const std::string bytes = valid().SerializeAsString();
  v1::GenerateRequest r;
  std::string error;
  ASSERT_TRUE(parse_request(bytes, r, error)) << error;
  EXPECT_EQ(r.prompt(), "a lighthouse at dawn");
  ASSERT_TRUE(parse_request("", r, error));  // every field at its default
}

TEST(ParseRequest, GarbageAndInvalidUtf8AreNamed) {
  v1::GenerateRequest r;
  std::string error;
  const std::string prefix = "request is not a valid ldcp.v1.GenerateRequest: ";
  EXPECT_FALSE(parse_request("\xff\xff\xff\xff", r, error));
  EXPECT_EQ(error.rfind(prefix + "malformed protobuf wire format", 0), 0u) << error;
  // Field 1 (prompt), length 2: 0xff 0xfe.
  EXPECT_FALSE(parse_request(std::string("\x0a\x02\xff\xfe", 4), r, error));
  EXPECT_EQ(error, prefix + "field prompt is not valid UTF-8");
  // Field 12 (request_id), length 1: 0x80.
  EXPECT_FALSE(parse_request(std::string("\x62\x01\x80", 3), r, error));
  EXPECT_EQ(error, prefix + "field request_id is not valid UTF-8");
  // Field 10 (pruning), length 1: a truncated varint inside.
  EXPECT_FALSE(parse_request(std::string("\x52\x01\x08", 3), r, error));
  EXPECT_EQ(error, prefix + "field pruning is not a valid ldcp.v1.Pruning");
}

// ---- img2img and inpainting: init_image, strength, mask_image ----

std::string png(uint32_t width, uint32_t height, uint8_t value = 128) {
  const std::vector<uint8_t> rgb(size_t{width} * height * 3, value);
  return pipelines::encode_png(rgb.data(), width, height);
}

v1::GenerateRequest img2img(uint32_t width = 64, uint32_t height = 96) {
  auto r = valid();
  r.set_width(0);
  r.set_height(0);
  r.set_init_image(png(width, height));
  return r;
}

// The message starts with the field, and is short whatever the input's size.
void expect_field_error(const v1::GenerateRequest& r, const std::string& start) {
  const auto error = check(r);
  EXPECT_EQ(error.rfind(start, 0), 0u) << error;
  EXPECT_LT(error.size(), 300u) << error;
}

TEST(RequestValidation, InitImageSetsTheSizeAndIsDecoded) {
  ValidatedRequest v;
  auto r = img2img();
  ASSERT_EQ(validate_request(r, limits(), 7, v), "");
  EXPECT_EQ(v.width, 64);
  EXPECT_EQ(v.height, 96);
  EXPECT_EQ(v.init_image.pixels.size(), 64u * 96 * 3);
  EXPECT_FALSE(v.strength.has_value());  // the pipeline's default for the kind
  EXPECT_EQ(v.work, request_work(64, 96, 1, 20, true));
  r.set_width(64);  // the image's own size may be given
  r.set_strength(1.0);
  r.set_mask_image(png(64, 96, 255));
  ASSERT_EQ(validate_request(r, limits(), 7, v), "");
  EXPECT_EQ(v.strength, 1.0);
  EXPECT_EQ(v.mask_image.width, 64u);
}

TEST(RequestValidation, BadImagesAreInvalidArgumentNamingTheField) {
  auto r = img2img();
  r.set_init_image(std::string(100000, 'x'));
  expect_field_error(r, "init_image: must be a PNG or JPEG");
  r.set_init_image(png(64, 64).substr(0, 60));  // truncated
  expect_field_error(r, "init_image: ");
  r.set_init_image("\xFF\xD8\xFF" + std::string(50, '\0'));  // a JPEG's start, then nothing
  expect_field_error(r, "init_image: ");
  r.set_init_image(png(60, 64));
  expect_field_error(r, "init_image: the image is 60x64; each side must be a multiple of 8");
  r.set_init_image(png(32, 64));  // below --min-size 64
  expect_field_error(r, "init_image: the image is 32x64");
  r = img2img(64, 64);
  r.set_width(128);
  expect_field_error(r, "init_image: the image is 64x64 but width is 128");
  r = img2img();
  r.set_mask_image("not an image");
  expect_field_error(r, "mask_image: must be a PNG or JPEG");
  r.set_mask_image(png(64, 64));
  expect_field_error(r, "mask_image: the mask is 64x64, init_image 64x96");
}

TEST(RequestValidation, ImagesBeyondTheSizeBoundAreRefusedFromTheHeader) {
  auto l = limits();
  l.max_size = 256;
  auto r = img2img();
  r.set_init_image(png(264, 64));
  const auto error = check(r, l);
  // libpng's user limits (set from ImageLimits) refuse it while reading the header.
  EXPECT_EQ(error.rfind("init_image: ", 0), 0u) << error;
  EXPECT_NE(error.find("exceeds user limit"), std::string::npos) << error;
  EXPECT_NE(error.find("at most 256x256 pixels"), std::string::npos) << error;
  const auto bounds = request_image_limits(l);
  EXPECT_EQ(bounds.max_width, 256u);
  EXPECT_EQ(bounds.max_pixels, 256u * 256u);
  EXPECT_EQ(bounds.max_file_bytes, static_cast<uint64_t>(l.max_receive_bytes));
}

TEST(RequestValidation, StrengthAndMaskNeedAnInitImageAndStrengthIsInRange) {
  auto r = valid();
  r.set_strength(0.5);
  expect_field_error(r, "strength: only allowed with init_image");
  r = valid();
  r.set_mask_image(png(512, 512));
  expect_field_error(r, "mask_image: only allowed with init_image");
  for (double bad : {0.0, -0.1, 1.5, std::nan(""), HUGE_VAL}) {
    r = img2img();
    r.set_strength(bad);
    expect_field_error(r, "strength: must be in (0, 1]");
  }
}

// ---- prompt_syntax and clip_skip ----

TEST(RequestValidation, PromptSyntaxAndClipSkip) {
  ValidatedRequest v;
  auto r = valid();
  ASSERT_EQ(validate_request(r, limits(), 7, v), "");
  EXPECT_FALSE(v.a1111_syntax);
  EXPECT_EQ(v.clip_skip, 0);
  r.set_prompt_syntax(v1::PROMPT_SYNTAX_A1111);
  r.set_clip_skip(2);
  ASSERT_EQ(validate_request(r, limits(), 7, v), "");
  EXPECT_TRUE(v.a1111_syntax);
  EXPECT_EQ(v.clip_skip, 2);
  r.set_prompt_syntax(v1::PROMPT_SYNTAX_PLAIN);
  ASSERT_EQ(validate_request(r, limits(), 7, v), "");
  EXPECT_FALSE(v.a1111_syntax);
  r.set_prompt_syntax(static_cast<v1::PromptSyntax>(7));
  EXPECT_EQ(check(r).rfind("prompt_syntax: must be PLAIN or A1111", 0), 0u) << check(r);
  r = valid();
  r.set_clip_skip(12);
  EXPECT_EQ(check(r), "");
  r.set_clip_skip(13);
  EXPECT_EQ(check(r).rfind("clip_skip: must be in [0, 12]", 0), 0u) << check(r);
  auto l = limits();
  l.text_encoder_layers = 3;
  r.set_clip_skip(4);
  EXPECT_EQ(check(r, l).rfind("clip_skip: must be in [0, 3]", 0), 0u) << check(r, l);
}

}  // namespace
}  // namespace ldcp::server

namespace ldcp::server {
namespace {

RequestLimits two_models() {
  auto l = limits();
  l.models = {{"base", 512}, {"small", 64}};
  return l;
}

TEST(RequestValidation, ModelPicksTheModelAndItsDefaultSize) {
  v1::GenerateRequest r;
  ValidatedRequest v;
  ASSERT_EQ(validate_request(r, two_models(), 7, v), "");  // empty: the first, the default
  EXPECT_EQ(v.model, 0u);
  EXPECT_EQ(v.width, 512);
  r.set_model("small");
  ValidatedRequest w;
  ASSERT_EQ(validate_request(r, two_models(), 7, w), "");
  EXPECT_EQ(w.model, 1u);
  EXPECT_EQ(w.width, 64);  // that model's default size
  EXPECT_EQ(w.height, 64);
  r.set_model("base");
  ValidatedRequest x;
  ASSERT_EQ(validate_request(r, two_models(), 7, x), "");
  EXPECT_EQ(x.model, 0u);
}

// A rejected request's log line shows the size it would have run at: its model's default.
TEST(RequestValidation, AskedShapeUsesTheNamedModelsDefaultSize) {
  v1::GenerateRequest r;
  r.set_model("small");
  r.set_steps(9999);  // rejected, but logged with what it asked for
  const auto a = asked_shape(r, two_models());
  EXPECT_EQ(a.width, 64);
  EXPECT_EQ(a.height, 64);
  EXPECT_EQ(a.steps, 9999);
  r.set_model("nosuchmodel");  // unknown: the first model's
  EXPECT_EQ(asked_shape(r, two_models()).width, 512);
}

TEST(RequestValidation, UnknownModelIsQuotedShortAndListsTheServersModels) {
  auto r = valid();
  r.set_model(std::string(100000, 'm'));
  auto error = check(r, two_models());
  ASSERT_EQ(error.rfind("model: unknown model \"", 0), 0u) << error.substr(0, 200);
  EXPECT_LT(error.size(), 200u);
  EXPECT_NE(error.find("(100000 bytes)"), std::string::npos) << error;
  EXPECT_NE(error.find("this server has: base, small; empty: base"), std::string::npos) << error;
  r.set_model("Base");  // names are exact
  EXPECT_EQ(check(r, two_models()).rfind("model: unknown model \"Base\"", 0), 0u);
  r.set_model("a\nb\x01");
  EXPECT_NE(check(r, two_models()).find("\"a\\nb\\u0001\""), std::string::npos);
  // No model list: only an empty name.
  r.set_model("x");
  EXPECT_EQ(check(r).rfind("model: unknown model \"x\"", 0), 0u);
  r.clear_model();
  EXPECT_EQ(check(r), "");
}

}  // namespace
}  // namespace ldcp::server
