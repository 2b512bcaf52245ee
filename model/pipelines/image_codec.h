#pragma once
// PNG (libpng) and JPEG (libjpeg) decoding to 8-bit RGB bytes and encoding from them, without
// libtorch: image_io (PNG files as tensors) and the training-image reader use it, and the fuzz
// build (tests/fuzz) links it alone. Decoding is bounded: the header's size is checked against
// ImageLimits, and against what the input's length can hold, before any pixel memory is taken.

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

namespace ldcp::pipelines {

class ImageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What a decoder accepts. The defaults fit every image the project reads (FFHQ's 1024x1024,
// generated images up to 1024x1024) with room to spare: at most 8192 pixels a side, 16 Mpixel
// (4096x4096; 48 MiB of RGB) in all, 256 MiB of input.
struct ImageLimits {
  uint32_t max_width = 8192;
  uint32_t max_height = 8192;
  uint64_t max_pixels = uint64_t{4096} * 4096;
  uint64_t max_file_bytes = uint64_t{256} << 20;
};

struct RgbImage {
  uint32_t width = 0, height = 0;
  std::vector<uint8_t> pixels;  // height x width x 3, row-major RGB
};

// Decode the bytes of a file; `name` (its path) starts every error message. Grey, palette,
// alpha and 16-bit PNGs and grey, YCbCr and (Adobe, inverted) CMYK JPEGs are converted to RGB.
// Throws ImageError naming the file and the field for anything malformed, truncated, beyond
// `limits`, or claiming more pixels than the input could encode.
RgbImage decode_png(const std::string& bytes, const std::string& name,
                    const ImageLimits& limits = {});
RgbImage decode_jpeg(const std::string& bytes, const std::string& name,
                     const ImageLimits& limits = {});
// PNG or JPEG, chosen by the first bytes (not the name).
RgbImage decode_image(const std::string& bytes, const std::string& name,
                      const ImageLimits& limits = {});
bool is_png(const std::string& bytes);
bool is_jpeg(const std::string& bytes);

// A whole file, refused (ImageError naming it) when larger than limits.max_file_bytes.
std::string read_image_file(const std::filesystem::path& path, const ImageLimits& limits = {});

// A PNG text chunk: a keyword (1-79 printable Latin-1 characters, e.g. "parameters") and UTF-8
// text. encode_png writes tEXt when the text is printable ASCII (and line breaks), iTXt (UTF-8,
// uncompressed) otherwise, as PIL's PngInfo.add_text does; a NUL byte is refused (ImageError).
struct PngText {
  std::string keyword, text;
};

// RGB rows (height x width x 3 bytes) to an 8-bit RGB PNG / a baseline JPEG (quality 1..100).
// The text chunks go before the image data, where readers that stop there find them.
std::string encode_png(const uint8_t* rgb, uint32_t width, uint32_t height,
                       const std::vector<PngText>& text = {});
// The tEXt, zTXt and iTXt chunks before a PNG's image data (bounded as decode_png).
std::vector<PngText> read_png_text(const std::string& bytes, const std::string& name);
std::string encode_jpeg(const uint8_t* rgb, uint32_t width, uint32_t height, int quality);

}  // namespace ldcp::pipelines
