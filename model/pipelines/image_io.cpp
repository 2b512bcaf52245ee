#include "model/pipelines/image_io.h"

#include <fstream>
#include <memory>
#include <system_error>

#include <torch/torch.h>

namespace ldcp::pipelines {

std::string encode_png(const at::Tensor& rgb_in, const std::vector<PngText>& text) {
  if (!rgb_in.defined() || rgb_in.dim() != 3 || rgb_in.size(2) != 3 ||
      rgb_in.scalar_type() != at::kByte) {
    throw ImageError("image must be a uint8 tensor [height, width, 3]");
  }
  auto rgb = rgb_in.to(at::kCPU).contiguous();
  return encode_png(rgb.data_ptr<uint8_t>(), static_cast<uint32_t>(rgb.size(1)),
                    static_cast<uint32_t>(rgb.size(0)), text);
}

void write_png(const std::filesystem::path& path, const at::Tensor& rgb,
               const std::vector<PngText>& text) {
  const std::string bytes = encode_png(rgb, text);
  auto tmp = path;
  tmp += ".tmp";
  {
    std::ofstream file(tmp, std::ios::binary | std::ios::trunc);
    if (!file) throw ImageError("cannot write " + path.string());
    file.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!file) throw ImageError("cannot write " + path.string());
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw ImageError("cannot write " + path.string() + ": " + ec.message());
}

at::Tensor to_tensor(RgbImage image) {
  // The tensor owns the decoded bytes: no copy.
  auto* pixels = new std::vector<uint8_t>(std::move(image.pixels));
  return torch::from_blob(
      pixels->data(), {static_cast<int64_t>(image.height), static_cast<int64_t>(image.width), 3},
      [pixels](void*) { delete pixels; }, torch::kUInt8);
}

at::Tensor read_png(const std::filesystem::path& path, const ImageLimits& limits) {
  const std::string bytes = read_image_file(path, limits);
  if (!is_png(bytes)) throw ImageError(path.string() + ": not a PNG file");
  return to_tensor(decode_png(bytes, path.string(), limits));
}

at::Tensor read_image(const std::filesystem::path& path, const ImageLimits& limits) {
  return to_tensor(decode_image(read_image_file(path, limits), path.string(), limits));
}

}  // namespace ldcp::pipelines
