// The safetensors reader and writer: round trips, interoperability with the reference Python
// package in both directions, and rejection of every malformed file with SafetensorsError.

#include "model/io/safetensors.h"

#include <cstdlib>
#include <functional>
#include <random>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "tests/common/test_util.h"
#include "tests/io/io_test_util.h"

namespace ldcp::io {
namespace {

namespace fs = std::filesystem;
using namespace ldcp::io::testing;
using ldcp::testing::temp_dir;

// Random values of the dtype: normal values for floating types, small integers otherwise.
at::Tensor sample(at::ScalarType type, at::IntArrayRef shape, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  if (type == at::kBool) return at::randint(0, 2, shape, gen, at::kLong).to(at::kBool);
  if (type == at::kComplexFloat) return at::randn(shape, gen, at::kComplexFloat);
  if (at::isFloatingType(type)) return (at::randn(shape, gen, at::kFloat) * 3).to(type);
  const bool is_unsigned =
      type == at::kByte || type == at::kUInt16 || type == at::kUInt32 || type == at::kUInt64;
  return at::randint(is_unsigned ? 0 : -100, 120, shape, gen, at::kLong).to(type);
}

const std::vector<std::pair<at::ScalarType, std::string>> kAllDtypes = {
    {at::kDouble, "F64"},         {at::kFloat, "F32"},        {at::kHalf, "F16"},
    {at::kBFloat16, "BF16"},      {at::kLong, "I64"},         {at::kInt, "I32"},
    {at::kShort, "I16"},          {at::kChar, "I8"},          {at::kUInt64, "U64"},
    {at::kUInt32, "U32"},         {at::kUInt16, "U16"},       {at::kByte, "U8"},
    {at::kBool, "BOOL"},          {at::kComplexFloat, "C64"}, {at::kFloat8_e4m3fn, "F8_E4M3"},
    {at::kFloat8_e5m2, "F8_E5M2"}};

// `action` throws SafetensorsError whose message contains every fragment.
void expect_error(const std::function<void()>& action, const std::vector<std::string>& fragments) {
  try {
    action();
    ADD_FAILURE() << "no SafetensorsError";
  } catch (const SafetensorsError& e) {
    const std::string message = e.what();
    for (const auto& fragment : fragments) {
      EXPECT_NE(message.find(fragment), std::string::npos)
          << "\"" << fragment << "\" not in: " << message;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Round trips

class DtypeRoundTrip : public ::testing::TestWithParam<std::pair<at::ScalarType, std::string>> {};

TEST_P(DtypeRoundTrip, SavesAndLoadsBitExact) {
  const auto [type, name] = GetParam();
  const auto path = temp_dir("st-dtype") / "t.safetensors";
  TensorMap tensors{{"matrix", sample(type, {3, 5}, 1)},
                    {"cube", sample(type, {2, 1, 4}, 2)},
                    {"scalar", sample(type, {}, 3)},
                    {"empty", sample(type, {0, 7}, 4)}};
  save_safetensors(path, tensors);

  SafetensorsFile file(path);
  EXPECT_EQ(file.names(), (std::vector<std::string>{"cube", "empty", "matrix", "scalar"}));
  for (const auto& [key, expected] : tensors) {
    EXPECT_EQ(file.info(key).dtype, name);
    EXPECT_EQ(file.info(key).shape, expected.sizes().vec());
    const auto actual = file.tensor(key);
    EXPECT_EQ(actual.scalar_type(), type) << key;
    EXPECT_EQ(actual.sizes(), expected.sizes()) << key;
    EXPECT_EQ(tensor_bytes(actual), tensor_bytes(expected)) << key;
  }
  const auto loaded = load_safetensors(path);
  ASSERT_EQ(loaded.size(), tensors.size());
  EXPECT_EQ(tensor_bytes(loaded.at("matrix")), tensor_bytes(tensors.at("matrix")));
}

INSTANTIATE_TEST_SUITE_P(AllDtypes, DtypeRoundTrip, ::testing::ValuesIn(kAllDtypes),
                         [](const auto& info) { return info.param.second; });

TEST(Safetensors, MetadataRoundTrip) {
  const auto path = temp_dir("st-meta") / "m.safetensors";
  const Metadata metadata{{"format", "pt"}, {"empty", ""}, {"unicode", "ünïcode ✓"}};
  save_safetensors(path, {{"x", at::ones({2})}}, metadata);
  Metadata loaded;
  const auto tensors = load_safetensors(path, &loaded);
  EXPECT_EQ(loaded, metadata);
  EXPECT_EQ(SafetensorsFile(path).metadata(), metadata);
  EXPECT_TRUE(at::equal(tensors.at("x"), at::ones({2})));
}

TEST(Safetensors, EmptyFileRoundTrip) {
  const auto path = temp_dir("st-none") / "none.safetensors";
  save_safetensors(path, {});
  SafetensorsFile file(path);
  EXPECT_TRUE(file.names().empty());
  EXPECT_TRUE(file.metadata().empty());
}

TEST(Safetensors, NonContiguousTensorsAreStoredContiguous) {
  const auto path = temp_dir("st-strided") / "s.safetensors";
  const auto base = at::arange(12, at::kFloat).reshape({3, 4});
  save_safetensors(path, {{"t", base.t()}, {"slice", base.index({at::indexing::Slice(), 1})}});
  const auto loaded = load_safetensors(path);
  EXPECT_TRUE(at::equal(loaded.at("t"), base.t()));
  EXPECT_TRUE(at::equal(loaded.at("slice"), base.index({at::indexing::Slice(), 1})));
}

TEST(Safetensors, WriterLayoutIsAlignedSortedAndTight) {
  const auto path = temp_dir("st-layout") / "l.safetensors";
  save_safetensors(path,
                   {{"b_half", at::ones({3}, at::kHalf)},
                    {"a_byte", at::ones({5}, at::kByte)},
                    {"c_double", at::ones({2}, at::kDouble)},
                    {"d_float", at::ones({1}, at::kFloat)}},
                   {{"k", "v"}});
  const auto bytes = read_bytes(path);
  uint64_t header_size = 0;
  std::memcpy(&header_size, bytes.data(), 8);
  EXPECT_EQ((8 + header_size) % 8, 0u) << "data area must start 8-byte aligned";
  const std::string header = bytes.substr(8, header_size);
  const auto json_end = header.find_last_of('}');
  EXPECT_EQ(header.find_first_not_of(' ', json_end + 1), std::string::npos)
      << "padding must be spaces: [" << header << "]";
  const auto parsed = nlohmann::ordered_json::parse(header);
  std::vector<std::string> keys;
  for (const auto& item : parsed.items()) keys.push_back(item.key());
  EXPECT_TRUE(std::is_sorted(keys.begin(), keys.end())) << header;
  uint64_t total = 0;
  for (const auto& item : parsed.items()) {
    if (item.key() == "__metadata__") continue;
    const auto begin = item.value()["data_offsets"][0].get<uint64_t>();
    const auto end = item.value()["data_offsets"][1].get<uint64_t>();
    const auto element =
        SafetensorsFile(path).tensor(item.key()).element_size();  // dtype's size in bytes
    EXPECT_EQ(begin % element, 0u) << item.key() << " is not aligned to its element size";
    total += end - begin;
  }
  EXPECT_EQ(bytes.size(), 8 + header_size + total) << "data must be contiguous";
}

TEST(Safetensors, WriterReplacesExistingFileAndLeavesNoTemporary) {
  const auto dir = temp_dir("st-replace");
  const auto path = dir / "w.safetensors";
  save_safetensors(path, {{"a", at::zeros({100})}});
  save_safetensors(path, {{"b", at::ones({2})}});
  SafetensorsFile file(path);
  EXPECT_EQ(file.names(), std::vector<std::string>{"b"});
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

TEST(Safetensors, WriterRejectsUnsupportedInput) {
  const auto dir = temp_dir("st-wbad");
  EXPECT_THROW(save_safetensors(dir / "c.safetensors", {{"z", at::ones({2}, at::kComplexDouble)}}),
               SafetensorsError);
  EXPECT_THROW(save_safetensors(dir / "u.safetensors", {{"u", at::Tensor()}}), SafetensorsError);
  EXPECT_THROW(save_safetensors(dir / "m.safetensors", {{"__metadata__", at::ones({1})}}),
               SafetensorsError);
  EXPECT_THROW(save_safetensors(dir / "no-such-dir" / "x.safetensors", {{"a", at::ones({1})}}),
               SafetensorsError);
  EXPECT_FALSE(fs::exists(dir / "c.safetensors"));
}

TEST(Safetensors, UnknownTensorNameIsAnError) {
  const auto path = temp_dir("st-name") / "n.safetensors";
  save_safetensors(path, {{"a", at::ones({1})}});
  SafetensorsFile file(path);
  EXPECT_FALSE(file.contains("b"));
  EXPECT_TRUE(file.contains("a"));
  expect_error([&] { file.tensor("b"); }, {"\"b\"", path.string()});
}

TEST(Safetensors, TensorsOutliveTheFile) {
  const auto path = temp_dir("st-outlive") / "o.safetensors";
  const auto expected = at::randn({16});
  save_safetensors(path, {{"x", expected}});
  at::Tensor loaded;
  {
    SafetensorsFile file(path);
    loaded = file.tensor("x");
  }
  fs::remove(path);
  EXPECT_TRUE(at::equal(loaded, expected));
}

TEST(Safetensors, ReadIntoEveryKindOfTarget) {
  const auto path = temp_dir("st-read-into") / "r.safetensors";
  const auto expected = at::randn({6, 5, 3, 3});
  save_safetensors(path, {{"w", expected}});
  SafetensorsFile file(path);

  auto direct = at::zeros({6, 5, 3, 3});  // contiguous, same dtype: read straight into it
  const void* storage = direct.data_ptr();
  file.read_into("w", direct);
  EXPECT_TRUE(at::equal(direct, expected));
  EXPECT_EQ(direct.data_ptr(), storage);  // into the target's own memory

  at::Tensor staging;
  auto channels_last = at::zeros({6, 5, 3, 3}).contiguous(at::MemoryFormat::ChannelsLast);
  file.read_into("w", channels_last, &staging);
  EXPECT_TRUE(at::equal(channels_last, expected));
  EXPECT_TRUE(channels_last.is_contiguous(at::MemoryFormat::ChannelsLast));
  ASSERT_TRUE(staging.defined());
  const void* staged = staging.data_ptr();
  auto half = at::zeros({6, 5, 3, 3}, at::kHalf);
  file.read_into("w", half, &staging);  // converts; the staging buffer is reused, not regrown
  EXPECT_TRUE(at::equal(half, expected.to(at::kHalf)));
  EXPECT_EQ(staging.data_ptr(), staged);

  auto transposed = at::zeros({3, 3, 5, 6}).permute({3, 2, 1, 0});  // no staging: a new tensor
  file.read_into("w", transposed);
  EXPECT_TRUE(at::equal(transposed, expected));

  auto wrong = at::zeros({6, 5, 9});
  expect_error([&] { file.read_into("w", wrong); }, {"\"w\"", "shape", path.string()});
}

TEST(Safetensors, FileTruncatedAfterOpeningIsAReadError) {
  const auto path = temp_dir("st-truncated") / "t.safetensors";
  save_safetensors(path, {{"x", at::randn({64})}});
  SafetensorsFile file(path);
  fs::resize_file(path, fs::file_size(path) - 16);
  expect_error([&] { file.tensor("x"); }, {"cannot read", path.string()});
}

// ---------------------------------------------------------------------------------------------
// Interoperability with the reference package

std::string shell_quote(const std::string& text) { return "'" + text + "'"; }

// Runs tests/parity/ref_io.py (the reference safetensors package) with `arguments`.
void run_reference_script(const std::string& arguments) {
  const std::string command =
      shell_quote(LDCP_TEST_PYTHON) + " " + shell_quote(LDCP_TEST_REF_IO_SCRIPT) + " " + arguments;
  ASSERT_EQ(std::system(command.c_str()), 0) << command;
}

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in) << path;
  return nlohmann::json::parse(in);
}

void expect_matches_dump(const TensorMap& tensors, const Metadata& metadata,
                         const nlohmann::json& dump) {
  EXPECT_EQ(dump["metadata"].get<Metadata>(), metadata);
  ASSERT_EQ(dump["tensors"].size(), tensors.size());
  for (const auto& [name, tensor] : tensors) {
    ASSERT_TRUE(dump["tensors"].contains(name)) << name;
    const auto& entry = dump["tensors"][name];
    EXPECT_EQ(entry["shape"].get<std::vector<int64_t>>(), tensor.sizes().vec()) << name;
    EXPECT_EQ(entry["hex"].get<std::string>(), to_hex(tensor_bytes(tensor))) << name;
  }
}

TEST(SafetensorsPython, FileWrittenByPythonLoads) {
  const auto dir = temp_dir("st-from-py");
  ASSERT_NO_FATAL_FAILURE(run_reference_script("--write " + shell_quote(dir.string())));
  const auto dump = read_json(dir / "python_written.json");
  SafetensorsFile file(dir / "python_written.safetensors");
  TensorMap tensors;
  for (const auto& name : file.names()) {
    tensors.emplace(name, file.tensor(name));
    EXPECT_EQ(file.info(name).dtype, dump["tensors"][name]["dtype"].get<std::string>()) << name;
  }
  EXPECT_GE(tensors.size(), kAllDtypes.size());
  expect_matches_dump(tensors, file.metadata(), dump);
  EXPECT_EQ(file.metadata().at("note"), "ünïcode ✓");
}

TEST(SafetensorsPython, FileWrittenByCppLoadsInPython) {
  const auto dir = temp_dir("st-py");
  const auto path = dir / "cpp_written.safetensors";
  TensorMap tensors;
  uint64_t seed = 10;
  for (const auto& [type, name] : kAllDtypes) {
    tensors.emplace("t." + name, sample(type, {2, 3}, seed++));
  }
  tensors.emplace("scalar", at::scalar_tensor(1.5));
  tensors.emplace("empty", at::zeros({3, 0}, at::kHalf));
  const Metadata metadata{{"format", "pt"}, {"writer", "c++"}};
  save_safetensors(path, tensors, metadata);

  const auto out = dir / "dump.json";
  ASSERT_NO_FATAL_FAILURE(run_reference_script("--dump " + shell_quote(path.string()) + " --out " +
                                               shell_quote(out.string())));
  const auto dump = read_json(out);
  expect_matches_dump(tensors, metadata, dump);
  for (const auto& [type, name] : kAllDtypes) {
    EXPECT_EQ(dump["tensors"]["t." + name]["dtype"], name);
  }
}

// ---------------------------------------------------------------------------------------------
// Malformed files: each must throw SafetensorsError naming the file (and the tensor).

fs::path write_file(const std::string& tag, const std::string& bytes) {
  const auto path = temp_dir("st-bad-" + tag) / (tag + ".safetensors");
  write_bytes(path, bytes);
  return path;
}

void expect_rejected(const fs::path& path, std::vector<std::string> fragments) {
  fragments.push_back(path.string());
  expect_error([&] { SafetensorsFile file(path); }, fragments);
  EXPECT_THROW(load_safetensors(path), SafetensorsError);
}

// A valid two-tensor file ("a": 2 floats, "b": 1 float) with the header replaced.
std::string with_header(const std::string& header, size_t data_bytes = 12) {
  return raw_file(header, std::string(data_bytes, '\x01'));
}

const char* kTwoTensors = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                          R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})";

TEST(SafetensorsMalformed, ValidBaselineIsAccepted) {
  // The fixtures below differ from this file in one respect each.
  const auto path = write_file("baseline", with_header(kTwoTensors));
  SafetensorsFile file(path);
  EXPECT_EQ(file.names().size(), 2u);
}

TEST(SafetensorsMalformed, MissingFile) {
  expect_rejected(temp_dir("st-missing") / "absent.safetensors", {"cannot open"});
}

TEST(SafetensorsMalformed, Directory) { expect_rejected(temp_dir("st-dir"), {}); }

TEST(SafetensorsMalformed, EmptyFile) { expect_rejected(write_file("empty", ""), {"8"}); }

TEST(SafetensorsMalformed, ShorterThanEightBytes) {
  expect_rejected(write_file("short", std::string("\x02\x00\x00", 3)), {"3 bytes"});
}

TEST(SafetensorsMalformed, TruncatedFile) {
  const auto path = temp_dir("st-trunc-src") / "src.safetensors";
  save_safetensors(path, {{"weight", at::randn({4, 4})}});
  const auto bytes = read_bytes(path);
  expect_rejected(write_file("truncated", bytes.substr(0, bytes.size() - 5)), {"\"weight\""});
}

TEST(SafetensorsMalformed, TruncatedInsideHeader) {
  const auto path = temp_dir("st-trunc-h-src") / "src.safetensors";
  save_safetensors(path, {{"weight", at::randn({4, 4})}});
  expect_rejected(write_file("truncated-header", read_bytes(path).substr(0, 20)),
                  {"larger than the file"});
}

TEST(SafetensorsMalformed, HeaderLengthLargerThanFile) {
  expect_rejected(write_file("long-header", raw_file(kTwoTensors, std::string(12, '\0'), 1000)),
                  {"larger than the file"});
}

TEST(SafetensorsMalformed, HugeHeaderLength) {
  expect_rejected(write_file("huge-header", raw_file(kTwoTensors, "", uint64_t{1} << 63)),
                  {"exceeds the limit"});
  expect_rejected(write_file("max-header", raw_file(kTwoTensors, "", ~uint64_t{0})),
                  {"exceeds the limit"});
}

TEST(SafetensorsMalformed, ZeroHeaderLength) {
  expect_rejected(write_file("zero-header", raw_file("", "", 0)), {});
}

TEST(SafetensorsMalformed, BadJson) {
  expect_rejected(write_file("bad-json", with_header(R"({"a":{"dtype":"F32",)", 0)), {"JSON"});
}

TEST(SafetensorsMalformed, TrailingGarbageAfterJson) {
  expect_rejected(write_file("json-trailing", with_header(std::string(kTwoTensors) + "x")),
                  {"JSON"});
}

TEST(SafetensorsMalformed, InvalidUtf8InHeader) {
  expect_rejected(
      write_file("bad-utf8",
                 with_header(
                     "{\"\xff\xfe\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}}", 0)),
      {"JSON"});
}

TEST(SafetensorsMalformed, NonObjectJson) {
  expect_rejected(write_file("array-json", with_header("[1, 2, 3]", 0)), {});
  expect_rejected(write_file("string-json", with_header("\"text\"", 0)), {});
}

TEST(SafetensorsMalformed, EntryNotAnObject) {
  expect_rejected(write_file("entry-number", with_header(R"({"a":5})", 0)), {"\"a\""});
}

TEST(SafetensorsMalformed, DeeplyNestedJson) {
  std::string header = "{\"a\":" + std::string(10000, '[') + std::string(10000, ']') + "}";
  expect_rejected(write_file("nested", with_header(header, 0)), {});
}

TEST(SafetensorsMalformed, UnknownDtype) {
  expect_rejected(
      write_file("dtype",
                 with_header(R"({"w":{"dtype":"F17","shape":[2],"data_offsets":[0,8]}})", 8)),
      {"\"w\"", "F17"});
}

TEST(SafetensorsMalformed, DtypeNotAString) {
  expect_rejected(
      write_file("dtype-num",
                 with_header(R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", 8)),
      {"\"w\"", "dtype"});
}

TEST(SafetensorsMalformed, MissingFields) {
  expect_rejected(
      write_file("no-dtype", with_header(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8)),
      {"\"w\"", "dtype"});
  expect_rejected(
      write_file("no-shape", with_header(R"({"w":{"dtype":"F32","data_offsets":[0,8]}})", 8)),
      {"\"w\"", "shape"});
  expect_rejected(write_file("no-offsets", with_header(R"({"w":{"dtype":"F32","shape":[2]}})", 8)),
                  {"\"w\"", "data_offsets"});
}

TEST(SafetensorsMalformed, NegativeShape) {
  expect_rejected(
      write_file("neg-shape",
                 with_header(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8)),
      {"\"w\"", "shape"});
}

TEST(SafetensorsMalformed, NonIntegerShape) {
  expect_rejected(
      write_file("float-shape",
                 with_header(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8)),
      {"\"w\"", "shape"});
  expect_rejected(
      write_file("string-shape",
                 with_header(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", 8)),
      {"\"w\"", "shape"});
  expect_rejected(
      write_file("scalar-shape",
                 with_header(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8)),
      {"\"w\"", "shape"});
}

TEST(SafetensorsMalformed, ShapeProductOverflows) {
  // 2^32 * 2^32 elements wrap to 0 in 64 bits; a naive check would accept empty offsets.
  expect_rejected(
      write_file(
          "overflow",
          with_header(
              R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", 0)),
      {"\"w\""});
  expect_rejected(
      write_file(
          "overflow-bytes",
          with_header(R"({"w":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}})",
                      0)),
      {"\"w\""});
}

TEST(SafetensorsMalformed, BadOffsets) {
  expect_rejected(
      write_file("offsets-three",
                 with_header(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", 8)),
      {"\"w\"", "data_offsets"});
  expect_rejected(
      write_file("offsets-neg",
                 with_header(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8)),
      {"\"w\"", "data_offsets"});
  expect_rejected(
      write_file("offsets-reversed",
                 with_header(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", 8)),
      {"\"w\"", "begin > end"});
}

TEST(SafetensorsMalformed, OffsetsOutsideDataArea) {
  expect_rejected(
      write_file("offsets-out",
                 with_header(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 4)),
      {"\"w\"", "past the data area"});
  expect_rejected(
      write_file(
          "offsets-far",
          with_header(
              R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[1000000000000,1000000000008]}})",
              8)),
      {"\"w\""});
}

TEST(SafetensorsMalformed, LyingOffsets) {
  // Three floats need 12 bytes; the offsets claim 8.
  expect_rejected(
      write_file("lying",
                 with_header(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8)),
      {"\"w\"", "need 12"});
}

TEST(SafetensorsMalformed, OverlappingTensors) {
  expect_rejected(
      write_file("overlap", with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                                        12)),
      {"\"b\"", "overlap"});
}

TEST(SafetensorsMalformed, SameOffsetsTwice) {
  expect_rejected(
      write_file("alias", with_header(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                                      8)),
      {"overlap"});
}

TEST(SafetensorsMalformed, HoleBetweenTensors) {
  expect_rejected(
      write_file("hole", with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                     R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                                     12)),
      {"\"b\"", "hole"});
}

TEST(SafetensorsMalformed, HoleAtStart) {
  expect_rejected(
      write_file("hole-start",
                 with_header(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8)),
      {"\"a\"", "hole"});
}

TEST(SafetensorsMalformed, TrailingBytesAfterLastTensor) {
  expect_rejected(write_file("trailing", with_header(kTwoTensors, 13)), {"trailing"});
  expect_rejected(write_file("trailing-only", with_header("{}", 4)), {"trailing"});
}

TEST(SafetensorsMalformed, MetadataNotStringMap) {
  expect_rejected(write_file("meta-num", with_header(R"({"__metadata__":{"k":1}})", 0)),
                  {"__metadata__", "\"k\""});
  expect_rejected(write_file("meta-array", with_header(R"({"__metadata__":["a"]})", 0)),
                  {"__metadata__"});
}

// ---------------------------------------------------------------------------------------------
// Fuzz: random byte flips, truncations and extensions of a valid file are either read or
// rejected with SafetensorsError; nothing else may escape, and no read may leave the mapping.

TEST(SafetensorsFuzz, MutatedFilesOnlyThrowSafetensorsError) {
  const auto dir = temp_dir("st-fuzz");
  const auto source = dir / "valid.safetensors";
  save_safetensors(source,
                   {{"a.weight", at::randn({3, 4})},
                    {"a.bias", at::randn({4}).to(at::kHalf)},
                    {"b", at::arange(5, at::kLong)},
                    {"empty", at::zeros({0})}},
                   {{"format", "pt"}});
  const std::string original = read_bytes(source);
  uint64_t header_size = 0;
  std::memcpy(&header_size, original.data(), 8);
  // LDCP_IO_FUZZ_ITERATIONS raises the count for longer runs (e.g. under valgrind: smaller).
  const char* iterations_env = std::getenv("LDCP_IO_FUZZ_ITERATIONS");
  const int iterations = iterations_env != nullptr ? std::atoi(iterations_env) : 2000;

  std::mt19937_64 rng(20240607);
  int accepted = 0, rejected = 0;
  for (int iteration = 0; iteration < iterations; ++iteration) {
    // A new file each time: rewriting one file in place makes ext4 flush it on every close.
    const auto path = dir / ("mutated-" + std::to_string(iteration) + ".safetensors");
    std::string bytes = original;
    switch (rng() % 5) {
      case 0:  // flip bits in the length field or the header
      case 1: {
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int i = 0; i < flips; ++i) {
          const size_t at = rng() % (8 + header_size);
          bytes[at] = static_cast<char>(bytes[at] ^ (1 << (rng() % 8)));
        }
        break;
      }
      case 2: {  // replace a header byte with a JSON-significant character
        static const std::string kSignificant = "{}[]:,\"0123456789-.e ";
        const size_t at = 8 + rng() % header_size;
        bytes[at] = kSignificant[rng() % kSignificant.size()];
        break;
      }
      case 3:  // truncate anywhere
        bytes.resize(rng() % bytes.size());
        break;
      default:  // extend with garbage
        bytes.append(1 + rng() % 16, static_cast<char>(rng()));
        break;
    }
    write_bytes(path, bytes);
    try {
      SafetensorsFile file(path);
      for (const auto& name : file.names()) {
        const auto t = file.tensor(name);
        ASSERT_EQ(static_cast<uint64_t>(t.nbytes()), file.info(name).end - file.info(name).begin);
      }
      ++accepted;
    } catch (const SafetensorsError& e) {
      ASSERT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
      ++rejected;
    } catch (const std::exception& e) {
      FAIL() << "iteration " << iteration << ": unexpected exception " << e.what();
    }
    fs::remove(path);
  }
  // Most mutations break the file; some (e.g. a changed metadata letter) do not.
  EXPECT_GT(rejected, iterations / 3) << accepted << " accepted";
  if (iterations >= 100) {
    EXPECT_GT(accepted, 0) << rejected << " rejected";
  }
}

}  // namespace
}  // namespace ldcp::io
