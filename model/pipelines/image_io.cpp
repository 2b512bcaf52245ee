#include "model/pipelines/image_io.h"

#include <cstdio>
#include <fstream>
#include <memory>
#include <vector>

#include <png.h>
#include <torch/torch.h>

namespace ldcp::pipelines {
namespace {

void check_rgb(const at::Tensor& rgb) {
  if (!rgb.defined() || rgb.dim() != 3 || rgb.size(2) != 3 || rgb.scalar_type() != at::kByte) {
    throw ImageError("image must be a uint8 tensor [height, width, 3]");
  }
}

// libpng reports errors through longjmp by default; routing them into an exception keeps
// destructors running and gives a message.
[[noreturn]] void on_png_error(png_structp, png_const_charp message) { throw ImageError(message); }
void on_png_warning(png_structp, png_const_charp) {}

void append_bytes(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<std::string*>(png_get_io_ptr(png));
  out->append(reinterpret_cast<const char*>(data), length);
}
void flush_nothing(png_structp) {}

}  // namespace

std::string encode_png(const at::Tensor& rgb_in) {
  check_rgb(rgb_in);
  auto rgb = rgb_in.to(at::kCPU).contiguous();
  const auto height = static_cast<png_uint_32>(rgb.size(0));
  const auto width = static_cast<png_uint_32>(rgb.size(1));
  std::string out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, on_png_error,
                                            on_png_warning);
  if (png == nullptr) throw ImageError("libpng: out of memory");
  png_infop info = png_create_info_struct(png);
  try {
    if (info == nullptr) throw ImageError("libpng: out of memory");
    png_set_write_fn(png, &out, append_bytes, flush_nothing);
    png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    const auto* data = rgb.data_ptr<uint8_t>();
    for (png_uint_32 y = 0; y < height; ++y) {
      png_write_row(png, const_cast<png_bytep>(data + static_cast<size_t>(y) * width * 3));
    }
    png_write_end(png, nullptr);
  } catch (...) {
    png_destroy_write_struct(&png, &info);
    throw;
  }
  png_destroy_write_struct(&png, &info);
  return out;
}

void write_png(const std::filesystem::path& path, const at::Tensor& rgb) {
  const std::string bytes = encode_png(rgb);
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

at::Tensor read_png(const std::filesystem::path& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> file(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!file) throw ImageError("cannot open " + path.string());
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, on_png_error,
                                           on_png_warning);
  if (png == nullptr) throw ImageError("libpng: out of memory");
  png_infop info = png_create_info_struct(png);
  at::Tensor image;
  try {
    if (info == nullptr) throw ImageError("libpng: out of memory");
    png_init_io(png, file.get());
    png_read_info(png, info);
    png_set_expand(png);  // palette and low-bit gray to 8-bit, tRNS to alpha
    png_set_strip_16(png);
    png_set_strip_alpha(png);
    png_set_gray_to_rgb(png);
    png_read_update_info(png, info);
    const auto width = png_get_image_width(png, info);
    const auto height = png_get_image_height(png, info);
    if (png_get_channels(png, info) != 3) throw ImageError("unsupported PNG layout");
    image = at::empty({static_cast<int64_t>(height), static_cast<int64_t>(width), 3}, at::kByte);
    std::vector<png_bytep> rows(height);
    for (png_uint_32 y = 0; y < height; ++y) {
      rows[y] = image.data_ptr<uint8_t>() + static_cast<size_t>(y) * width * 3;
    }
    png_read_image(png, rows.data());
    png_read_end(png, nullptr);
  } catch (const ImageError& e) {
    png_destroy_read_struct(&png, &info, nullptr);
    throw ImageError(path.string() + ": " + e.what());
  }
  png_destroy_read_struct(&png, &info, nullptr);
  return image;
}

}  // namespace ldcp::pipelines
