#include <fstream>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/pipelines/image_io.h"
#include "tests/common/test_util.h"

namespace ldcp::pipelines {
namespace {

TEST(ImageIo, PngRoundTripIsLossless) {
  auto image = torch::randint(0, 256, {37, 53, 3}, torch::kUInt8);
  auto path = ldcp::testing::temp_dir("png") / "image.png";
  write_png(path, image);
  EXPECT_TRUE(torch::equal(read_png(path), image));
  EXPECT_FALSE(std::filesystem::exists(path.string() + ".tmp"));
}

TEST(ImageIo, EncodedBytesStartWithThePngSignature) {
  auto bytes = encode_png(torch::zeros({8, 8, 3}, torch::kUInt8));
  ASSERT_GT(bytes.size(), 8u);
  EXPECT_EQ(bytes.substr(0, 8), std::string("\x89PNG\r\n\x1a\n", 8));
}

TEST(ImageIo, RejectsWrongTensorLayout) {
  EXPECT_THROW(encode_png(torch::zeros({8, 8, 4}, torch::kUInt8)), ImageError);
  EXPECT_THROW(encode_png(torch::zeros({8, 8, 3}, torch::kFloat)), ImageError);
}

TEST(ImageIo, CorruptFileGivesAnErrorNamingIt) {
  auto path = ldcp::testing::temp_dir("png") / "broken.png";
  auto bytes = encode_png(torch::zeros({16, 16, 3}, torch::kUInt8));
  std::ofstream(path, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  try {
    read_png(path);
    FAIL() << "expected ImageError";
  } catch (const ImageError& e) {
    EXPECT_NE(std::string(e.what()).find("broken.png"), std::string::npos) << e.what();
  }
  EXPECT_THROW(read_png(path.parent_path() / "missing.png"), ImageError);
}

}  // namespace
}  // namespace ldcp::pipelines
