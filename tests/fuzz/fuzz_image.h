#pragma once
// The image fuzz targets' shared check: decoding may only throw ImageError naming the input,
// and a decoded image has width x height x 3 bytes within the limits.

#include <cstdint>
#include <cstdlib>
#include <string>

#include "model/pipelines/image_codec.h"

namespace ldcp::fuzz {

// Smaller than the defaults so that each input decodes quickly; the checks are the same.
inline pipelines::ImageLimits fuzz_limits() {
  pipelines::ImageLimits limits;
  limits.max_width = 2048;
  limits.max_height = 2048;
  limits.max_pixels = 1 << 20;
  return limits;
}

template <typename Decode>
int check_decode(const uint8_t* data, size_t size, const std::string& name, Decode&& decode) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  const auto limits = fuzz_limits();
  try {
    const auto image = decode(bytes, name, limits);
    if (image.width == 0 || image.height == 0 || image.width > limits.max_width ||
        image.height > limits.max_height ||
        uint64_t{image.width} * image.height > limits.max_pixels ||
        image.pixels.size() != uint64_t{image.width} * image.height * 3) {
      std::abort();
    }
  } catch (const pipelines::ImageError& e) {
    if (std::string(e.what()).rfind(name + ": ", 0) != 0) std::abort();
  }
  return 0;
}

}  // namespace ldcp::fuzz
