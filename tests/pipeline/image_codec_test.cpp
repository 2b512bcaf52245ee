// The bounded PNG and JPEG decoders (model/pipelines/image_codec.h), on crafted headers: sizes
// beyond the limits, and sizes the file is far too small to hold, are refused from the header,
// with the file and the field named, before any pixel memory is taken (issue 12: a 625-byte
// JPEG claiming 16000x16000 reached 1.8 GB of resident memory).

#include <sys/resource.h>
#include <zlib.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "model/pipelines/image_codec.h"
#include "tests/common/error_text.h"

namespace ldcp::pipelines {
namespace {

std::vector<uint8_t> gradient(uint32_t width, uint32_t height) {
  std::vector<uint8_t> rgb(size_t{width} * height * 3);
  for (size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<uint8_t>((i * 7) % 251);
  return rgb;
}

std::string image_error(const std::function<void()>& action) {
  return ldcp::testing::error_text<ImageError>(action);
}

void put_be32(std::string& bytes, size_t at, uint32_t value) {
  for (int i = 0; i < 4; ++i) bytes[at + i] = static_cast<char>((value >> (24 - 8 * i)) & 0xff);
}

// A valid small PNG with IHDR's size replaced (and its CRC recomputed, so that only the size
// is wrong).
std::string png_claiming(uint32_t width, uint32_t height) {
  const auto pixels = gradient(2, 2);
  std::string png = encode_png(pixels.data(), 2, 2);
  put_be32(png, 16, width);
  put_be32(png, 20, height);
  const auto crc =
      crc32(0, reinterpret_cast<const Bytef*>(png.data() + 12), 17);  // "IHDR" + 13 data bytes
  put_be32(png, 29, static_cast<uint32_t>(crc));
  return png;
}

// A valid small JPEG with the frame header's (SOF0) size replaced.
std::string jpeg_claiming(uint16_t width, uint16_t height) {
  const auto pixels = gradient(16, 16);
  std::string jpeg = encode_jpeg(pixels.data(), 16, 16, 90);
  const auto sof = jpeg.find("\xFF\xC0");
  EXPECT_NE(sof, std::string::npos);
  jpeg[sof + 5] = static_cast<char>(height >> 8);
  jpeg[sof + 6] = static_cast<char>(height & 0xff);
  jpeg[sof + 7] = static_cast<char>(width >> 8);
  jpeg[sof + 8] = static_cast<char>(width & 0xff);
  return jpeg;
}

long max_rss_kb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

TEST(ImageCodec, PngAndJpegRoundTrip) {
  const auto pixels = gradient(37, 21);
  const auto png = decode_png(encode_png(pixels.data(), 37, 21), "x.png");
  EXPECT_EQ(png.width, 37u);
  EXPECT_EQ(png.height, 21u);
  EXPECT_EQ(png.pixels, pixels);
  const auto jpeg = decode_image(encode_jpeg(pixels.data(), 37, 21, 95), "x.jpg");
  EXPECT_EQ(jpeg.width, 37u);
  EXPECT_EQ(jpeg.pixels.size(), pixels.size());
}

TEST(ImageCodec, JpegClaimingAHugeImageIsRefusedWithoutAllocating) {
  const auto jpeg = jpeg_claiming(16000, 16000);
  EXPECT_LT(jpeg.size(), 1000u);
  const long before = max_rss_kb();
  // Beyond the default limits: refused from the header.
  auto message = image_error([&] { decode_jpeg(jpeg, "huge.jpg"); });
  EXPECT_CONTAINS(message, "huge.jpg: JPEG header: image size 16000x16000 exceeds the limit");
  // Within raised limits it is still refused: the file cannot hold that many blocks.
  ImageLimits generous;
  generous.max_width = generous.max_height = 16000;
  generous.max_pixels = uint64_t{16000} * 16000;
  message = image_error([&] { decode_jpeg(jpeg, "huge.jpg", generous); });
  EXPECT_CONTAINS(message, "huge.jpg: JPEG header: image size 16000x16000 needs at least");
  EXPECT_LT(max_rss_kb() - before, 100 * 1024) << "decoding allocated from the header";
}

TEST(ImageCodec, TruncatedJpegIsRefused) {
  const auto pixels = gradient(64, 64);
  const std::string jpeg = encode_jpeg(pixels.data(), 64, 64, 90);
  const auto message =
      image_error([&] { decode_jpeg(jpeg.substr(0, jpeg.size() * 2 / 3), "cut.jpg"); });
  EXPECT_CONTAINS(message, "cut.jpg: cannot decode JPEG");
}

TEST(ImageCodec, PngClaimingAHugeImageIsRefusedWithoutAllocating) {
  const long before = max_rss_kb();
  auto message = image_error([&] { decode_png(png_claiming(16000, 16000), "huge.png"); });
  EXPECT_CONTAINS(message, "huge.png: ");
  EXPECT_CONTAINS(message, "limit");
  // Within the limits, but far more samples than a tiny file can inflate to.
  message = image_error([&] { decode_png(png_claiming(4000, 4000), "big.png"); });
  EXPECT_CONTAINS(message, "big.png: PNG header: image size 4000x4000 needs 48000000 bytes");
  EXPECT_LT(max_rss_kb() - before, 100 * 1024) << "decoding allocated from the header";
}

TEST(ImageCodec, LimitsAreTheCallers) {
  const auto pixels = gradient(64, 48);
  ImageLimits small;
  small.max_pixels = 1000;
  const auto message =
      image_error([&] { decode_png(encode_png(pixels.data(), 64, 48), "p.png", small); });
  EXPECT_CONTAINS(message,
                  "p.png: PNG header: image size 64x48 is 3072 pixels, more than the "
                  "limit of 1000");
  small = {};
  small.max_width = 32;
  EXPECT_CONTAINS(
      image_error([&] { decode_jpeg(encode_jpeg(pixels.data(), 64, 48, 90), "j.jpg", small); }),
      "j.jpg: JPEG header: image size 64x48 exceeds the limit of 32x8192");
  EXPECT_CONTAINS(image_error([&] { decode_image("GIF89a", "g.gif"); }),
                  "g.gif: neither a PNG nor a JPEG");
}

}  // namespace
}  // namespace ldcp::pipelines
