// The readers of untrusted files in model/io without libtorch: JSON nesting bounds, Python's
// non-finite numbers at any depth, and the safetensors header's shape checks. Each case here was
// a crash or an escaped non-SafetensorsError before its fix.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>

#include <gtest/gtest.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include "model/io/json_file.h"
#include "model/io/safetensors_header.h"
#include "tests/common/error_text.h"

namespace ldcp::io {
namespace {

namespace fs = std::filesystem;

fs::path write_temp(const std::string& name, const std::string& bytes) {
  const auto dir = fs::temp_directory_path() / ("ldcp-parse-test-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto path = dir / name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}

template <typename Error>
std::string error_of(const std::function<void()>& action) {
  return ldcp::testing::error_text<Error>(action);
}

std::string nested(int depth, const std::string& inner = "1") {
  return std::string(depth, '[') + inner + std::string(depth, ']');
}

// Issue 12: a 200 KB "[[[...]]]" config.json overflowed the stack (restore_non_finite recursed
// per level). Now it is refused before parsing, naming the file.
TEST(JsonDepth, DeeplyNestedFileIsRefusedNamingIt) {
  const auto path = write_temp("config.json", nested(100'000));
  const auto message = error_of<ConfigError>([&] { read_json_file(path); });
  EXPECT_CONTAINS(message, path.string());
  EXPECT_CONTAINS(message, "nests deeper than 128");
  // Objects count as well as arrays.
  std::string objects;
  for (int i = 0; i < 200; ++i) objects += "{\"a\":";
  objects += "1" + std::string(200, '}');
  EXPECT_CONTAINS(error_of<ConfigError>([&] { parse_json_text(objects, "x.json"); }), "x.json");
}

TEST(JsonDepth, TheLimitItselfIsAccepted) {
  EXPECT_NO_THROW(parse_json_text(nested(kMaxJsonDepth), "ok.json"));
  EXPECT_THROW(parse_json_text(nested(kMaxJsonDepth + 1), "deep.json"), ConfigError);
  // Brackets inside strings are text, not nesting.
  EXPECT_NO_THROW(parse_json_text("{\"s\": \"" + std::string(10'000, '[') + "\"}", "s.json"));
}

TEST(JsonDepth, NonFiniteNumbersAreRestoredAtEveryDepth) {
  const auto json = parse_json_text(nested(100, "-Infinity"), "inf.json");
  const nlohmann::json* value = &json;
  for (int i = 0; i < 100; ++i) value = &(*value)[0];
  ASSERT_TRUE(value->is_number_float());
  EXPECT_TRUE(std::isinf(value->get<double>()) && value->get<double>() < 0);
}

// Found by fuzz_json_config / fuzz_safetensors_header: a number beyond a double made the parser
// throw out_of_range, which escaped as a nlohmann exception instead of ConfigError.
TEST(JsonNumbers, NumberBeyondADoubleIsAConfigError) {
  const auto message =
      error_of<ConfigError>([] { parse_json_text(R"({"beta_end": 1E400})", "sched.json"); });
  EXPECT_CONTAINS(message, "sched.json: malformed JSON");
  EXPECT_CONTAINS(message, "number overflow");
}

// ---------------------------------------------------------------------------------------------
// safetensors header

std::string le64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return out;
}

std::string file_with(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

// Issue 12: the overflow check restarted at a zero dimension, so [2^32, 2^32, 0] passed and a
// later at::empty threw c10::Error. Every order of the dimensions is refused now.
TEST(SafetensorsHeader, ZeroDimensionDoesNotHideAnOverflow) {
  for (const char* shape : {"[4294967296,4294967296,0]", "[0,4294967296,4294967296]",
                            "[4294967296,0,4294967296]", "[9223372036854775807,2,0]"}) {
    const std::string header =
        std::string(R"({"w":{"dtype":"F32","shape":)") + shape + R"(,"data_offsets":[0,0]}})";
    const auto message = error_of<SafetensorsError>(
        [&] { parse_safetensors_bytes("zero.safetensors", file_with(header)); });
    EXPECT_CONTAINS(message, "zero.safetensors");
    EXPECT_CONTAINS(message, "2^63");
  }
}

TEST(SafetensorsHeader, EmptyTensorsWithSmallShapesAreAccepted) {
  const std::string header = R"({"e":{"dtype":"F32","shape":[3,0,1000000],"data_offsets":[0,0]},)"
                             R"("s":{"dtype":"U8","shape":[],"data_offsets":[0,1]}})";
  const auto parsed = parse_safetensors_bytes("ok.safetensors", file_with(header, "x"));
  ASSERT_EQ(parsed.tensors.size(), 2u);
  EXPECT_EQ(parsed.tensors.at("e").shape, (std::vector<int64_t>{3, 0, 1000000}));
  EXPECT_EQ(parsed.data_size, 1u);
}

// Found by fuzz_safetensors_header (crash-298c0dff): out_of_range escaped the header reader.
TEST(SafetensorsHeader, NumberBeyondADoubleIsASafetensorsError) {
  const std::string header = R"({"a":{"dtype":"F32","shape":[25E555],"data_offsets":[0,4]}})";
  const auto message = error_of<SafetensorsError>(
      [&] { parse_safetensors_bytes("num.safetensors", file_with(header, "abcd")); });
  EXPECT_CONTAINS(message, "num.safetensors: header is not valid JSON");
}

TEST(SafetensorsHeader, ReaderErrorsNameTheFile) {
  EXPECT_CONTAINS(error_of<SafetensorsError>([] { parse_safetensors_bytes("a.st", "1234"); }),
                  "a.st: ");
  EXPECT_CONTAINS(
      error_of<SafetensorsError>([] { parse_safetensors_bytes("b.st", le64(100) + "{}"); }),
      "larger than the file");
  EXPECT_EQ(safetensors_dtype_size("BF16"), 2u);
  EXPECT_EQ(safetensors_dtype_size("F4"), 0u);
}

}  // namespace
}  // namespace ldcp::io
