#pragma once
// PNG files through libpng.

#include <filesystem>
#include <stdexcept>

#include <ATen/core/Tensor.h>

namespace ldcp::pipelines {

class ImageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Writes an 8-bit RGB image, a uint8 tensor [height, width, 3] (CPU). Writes to a temporary
// file and renames it, so readers never see a partial image. Throws ImageError naming the file.
void write_png(const std::filesystem::path& path, const at::Tensor& rgb);

// Encodes to PNG bytes in memory (for network payloads).
std::string encode_png(const at::Tensor& rgb);

// Reads a PNG as uint8 [height, width, 3] (gray, palette, alpha and 16-bit inputs converted).
at::Tensor read_png(const std::filesystem::path& path);

}  // namespace ldcp::pipelines
