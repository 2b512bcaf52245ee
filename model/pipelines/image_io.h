#pragma once
// PNG files as tensors (decoding and encoding: image_codec.h).

#include <filesystem>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/pipelines/image_codec.h"

namespace ldcp::pipelines {

// Writes an 8-bit RGB image, a uint8 tensor [height, width, 3] (CPU), with `text` chunks
// (image_codec.h). Writes to a temporary file and renames it, so readers never see a partial
// image. Throws ImageError naming the file.
void write_png(const std::filesystem::path& path, const at::Tensor& rgb,
               const std::vector<PngText>& text = {});

// Encodes to PNG bytes in memory (for network payloads).
std::string encode_png(const at::Tensor& rgb, const std::vector<PngText>& text = {});

// Reads a PNG as uint8 [height, width, 3] (gray, palette, alpha and 16-bit inputs converted).
// Throws ImageError naming the file when it is malformed or beyond `limits`.
at::Tensor read_png(const std::filesystem::path& path, const ImageLimits& limits = {});

// Reads a PNG or JPEG (chosen by its first bytes) as uint8 [height, width, 3], bounded as
// read_png.
at::Tensor read_image(const std::filesystem::path& path, const ImageLimits& limits = {});

// Decoded RGB bytes as a uint8 tensor [height, width, 3].
at::Tensor to_tensor(RgbImage image);

}  // namespace ldcp::pipelines
