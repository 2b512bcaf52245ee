#include "model/pruning/image_dataset.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <system_error>

#include <torch/torch.h>

#include "model/pipelines/image_io.h"

namespace ldcp::pruning {
namespace fs = std::filesystem;

namespace {

bool is_image_name(const fs::path& path) {
  std::string ext = path.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext == ".png" || ext == ".jpg" || ext == ".jpeg";
}

}  // namespace

std::vector<fs::path> list_images(const fs::path& root) {
  std::error_code ec;
  const auto status = fs::status(root, ec);
  if (ec || !fs::exists(status))
    throw DataError("data folder " + root.string() + " does not exist");
  if (!fs::is_directory(status))
    throw DataError("data folder " + root.string() + " is not a folder");
  std::vector<fs::path> images;
  fs::recursive_directory_iterator it(root, fs::directory_options::follow_directory_symlink, ec);
  if (ec) throw DataError("cannot read data folder " + root.string() + ": " + ec.message());
  for (const fs::recursive_directory_iterator end; it != end; it.increment(ec)) {
    if (ec) throw DataError("cannot read data folder " + root.string() + ": " + ec.message());
    const auto name = it->path().filename().string();
    if (!name.empty() && name[0] == '.') {
      if (it->is_directory(ec)) it.disable_recursion_pending();
      continue;
    }
    if (it->is_regular_file(ec) && is_image_name(it->path())) {
      images.push_back(fs::relative(it->path(), root));
    }
  }
  if (ec) throw DataError("cannot read data folder " + root.string() + ": " + ec.message());
  if (images.empty()) {
    throw DataError("data folder " + root.string() + " holds no PNG or JPEG images");
  }
  std::sort(images.begin(), images.end());
  for (auto& path : images) path = root / path;
  return images;
}

at::Tensor read_image(const fs::path& path, const pipelines::ImageLimits& limits) {
  try {
    const auto bytes = pipelines::read_image_file(path, limits);
    if (!pipelines::is_png(bytes) && !pipelines::is_jpeg(bytes)) {
      throw DataError("image " + path.string() + " is neither a PNG nor a JPEG file");
    }
    return pipelines::to_tensor(pipelines::decode_image(bytes, path.string(), limits));
  } catch (const pipelines::ImageError& e) {
    throw DataError(e.what());
  }
}

void write_jpeg(const fs::path& path, const at::Tensor& rgb, int quality) {
  if (rgb.dim() != 3 || rgb.size(2) != 3 || rgb.scalar_type() != torch::kUInt8) {
    throw DataError("write_jpeg " + path.string() + ": expected a uint8 [H, W, 3] tensor");
  }
  auto pixels = rgb.cpu().contiguous();
  std::string bytes;
  try {
    bytes =
        pipelines::encode_jpeg(pixels.data_ptr<uint8_t>(), static_cast<uint32_t>(pixels.size(1)),
                               static_cast<uint32_t>(pixels.size(0)), quality);
  } catch (const pipelines::ImageError& e) {
    throw DataError("write_jpeg " + path.string() + ": " + e.what());
  }
  const auto partial = fs::path(path.string() + ".partial");
  {
    std::ofstream out(partial, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw DataError("cannot write " + partial.string());
  }
  std::error_code ec;
  fs::rename(partial, path, ec);
  if (ec) throw DataError("cannot write " + path.string() + ": " + ec.message());
}

at::Tensor center_crop_resize(const at::Tensor& rgb, int64_t resolution) {
  if (rgb.dim() != 3 || rgb.size(2) != 3) throw DataError("expected an RGB image [H, W, 3]");
  if (resolution <= 0) throw DataError("resolution must be positive");
  const int64_t height = rgb.size(0), width = rgb.size(1), side = std::min(height, width);
  auto square = rgb.narrow(0, (height - side) / 2, side).narrow(1, (width - side) / 2, side);
  auto image = square.permute({2, 0, 1}).unsqueeze(0).to(torch::kFloat);
  if (side != resolution) {
    namespace F = torch::nn::functional;
    image = F::interpolate(image, F::InterpolateFuncOptions()
                                      .size(std::vector<int64_t>{resolution, resolution})
                                      .mode(torch::kBilinear)
                                      .align_corners(false)
                                      .antialias(true));
  }
  return (image.squeeze(0).clamp(0, 255) / 127.5 - 1.0).contiguous();
}

}  // namespace ldcp::pruning
