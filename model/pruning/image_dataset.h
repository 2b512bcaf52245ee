#pragma once
// The training images of `ldcp train-gates`: any folder tree of PNG or JPEG files (FFHQ's
// images1024x1024/00000/00000.png, thumbnails128x128/..., a flat folder of photos), decoded to
// RGB, centre-cropped to a square and resized to the training resolution.

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/pipelines/image_codec.h"

namespace ldcp::pruning {

// A data folder or image that cannot be used; the message names the path.
class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The image files under `root`, recursively: names ending in .png, .jpg or .jpeg (any case),
// hidden entries (".name") skipped, sorted by their path relative to `root` so the order is the
// same on every machine. Throws DataError when `root` does not exist, is not a directory, cannot
// be read, or holds no image file.
std::vector<std::filesystem::path> list_images(const std::filesystem::path& root);

// Decodes a PNG or JPEG file (chosen by its first bytes, not its name) to uint8 [H, W, 3] RGB
// (grey, palette, alpha, 16-bit and CMYK inputs converted). Throws DataError naming the file,
// also for images beyond `limits` (checked from the header, before decoding).
at::Tensor read_image(const std::filesystem::path& path, const pipelines::ImageLimits& limits = {});

// Writes uint8 [H, W, 3] RGB as a baseline JPEG (quality 1..100); for tests and tools.
void write_jpeg(const std::filesystem::path& path, const at::Tensor& rgb, int quality = 95);

// The largest centred square of uint8 [H, W, 3], resized to `resolution` x `resolution`
// (bilinear with antialiasing, as PIL's and torchvision's resize) -> float32 [3, R, R] in
// [-1, 1], the VAE's input range.
at::Tensor center_crop_resize(const at::Tensor& rgb, int64_t resolution);

}  // namespace ldcp::pruning
