#include "model/pruning/image_dataset.h"

#include <algorithm>
#include <cctype>
#include <csetjmp>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <system_error>

#include <jpeglib.h>
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

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError("cannot open image " + path.string());
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw DataError("cannot read image " + path.string());
  return bytes;
}

// libjpeg reports fatal errors through error_exit, which must not return: jump back to the
// decoder, which then throws (no C++ exception crosses the C library).
struct JpegError {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void jpeg_error_exit(j_common_ptr info) {
  auto* error = reinterpret_cast<JpegError*>(info->err);
  (*info->err->format_message)(info, error->message);
  std::longjmp(error->jump, 1);
}

// Decoder state on the heap, so nothing the decoder touches lives in registers across setjmp.
struct JpegDecode {
  jpeg_decompress_struct info{};
  JpegError error{};
  std::vector<uint8_t> pixels;
  int64_t height = 0, width = 0, components = 0;
  bool created = false;
};

at::Tensor decode_jpeg(const std::string& bytes, const fs::path& path) {
  auto state = std::make_unique<JpegDecode>();
  JpegDecode* s = state.get();
  s->info.err = jpeg_std_error(&s->error.manager);
  s->error.manager.error_exit = jpeg_error_exit;
  if (setjmp(s->error.jump)) {
    if (s->created) jpeg_destroy_decompress(&s->info);
    throw DataError("cannot decode JPEG " + path.string() + ": " + s->error.message);
  }
  jpeg_create_decompress(&s->info);
  s->created = true;
  jpeg_mem_src(&s->info, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&s->info, TRUE);
  const bool cmyk = s->info.jpeg_color_space == JCS_CMYK || s->info.jpeg_color_space == JCS_YCCK;
  s->info.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&s->info);
  s->height = s->info.output_height;
  s->width = s->info.output_width;
  s->components = s->info.output_components;
  const auto row_bytes = static_cast<size_t>(s->width * s->components);
  s->pixels.resize(row_bytes * static_cast<size_t>(s->height));
  while (s->info.output_scanline < s->info.output_height) {
    JSAMPROW row = s->pixels.data() + row_bytes * s->info.output_scanline;
    jpeg_read_scanlines(&s->info, &row, 1);
  }
  jpeg_finish_decompress(&s->info);
  jpeg_destroy_decompress(&s->info);
  s->created = false;

  auto image =
      torch::from_blob(s->pixels.data(), {s->height, s->width, s->components}, torch::kUInt8)
          .clone();
  if (cmyk) {
    // Adobe writes inverted CMYK (what libjpeg hands back for Photoshop files): R = C * K / 255.
    auto f = image.to(torch::kFloat);
    auto k = f.narrow(2, 3, 1);
    image = (f.narrow(2, 0, 3) * k / 255.0).round().clamp(0, 255).to(torch::kUInt8);
  }
  return image;
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

at::Tensor read_image(const fs::path& path) {
  const auto bytes = read_bytes(path);
  auto starts_with = [&](std::initializer_list<unsigned char> magic) {
    if (bytes.size() < magic.size()) return false;
    size_t i = 0;
    for (unsigned char c : magic) {
      if (static_cast<unsigned char>(bytes[i++]) != c) return false;
    }
    return true;
  };
  if (starts_with({0x89, 'P', 'N', 'G'})) {
    try {
      return pipelines::read_png(path);
    } catch (const pipelines::ImageError& e) {
      throw DataError(e.what());
    }
  }
  if (starts_with({0xFF, 0xD8, 0xFF})) return decode_jpeg(bytes, path);
  throw DataError("image " + path.string() + " is neither a PNG nor a JPEG file");
}

void write_jpeg(const fs::path& path, const at::Tensor& rgb, int quality) {
  if (rgb.dim() != 3 || rgb.size(2) != 3 || rgb.scalar_type() != torch::kUInt8) {
    throw DataError("write_jpeg " + path.string() + ": expected a uint8 [H, W, 3] tensor");
  }
  struct Encode {
    jpeg_compress_struct info{};
    JpegError error{};
    unsigned char* buffer = nullptr;
    unsigned long size = 0;
    bool created = false;
  };
  auto pixels = rgb.cpu().contiguous();
  auto state = std::make_unique<Encode>();
  Encode* s = state.get();
  s->info.err = jpeg_std_error(&s->error.manager);
  s->error.manager.error_exit = jpeg_error_exit;
  if (setjmp(s->error.jump)) {
    if (s->created) jpeg_destroy_compress(&s->info);
    std::free(s->buffer);
    throw DataError("cannot encode JPEG " + path.string() + ": " + s->error.message);
  }
  jpeg_create_compress(&s->info);
  s->created = true;
  jpeg_mem_dest(&s->info, &s->buffer, &s->size);
  s->info.image_width = static_cast<JDIMENSION>(pixels.size(1));
  s->info.image_height = static_cast<JDIMENSION>(pixels.size(0));
  s->info.input_components = 3;
  s->info.in_color_space = JCS_RGB;
  jpeg_set_defaults(&s->info);
  jpeg_set_quality(&s->info, std::clamp(quality, 1, 100), TRUE);
  jpeg_start_compress(&s->info, TRUE);
  const auto row_bytes = static_cast<size_t>(pixels.size(1) * 3);
  auto* data = pixels.data_ptr<uint8_t>();
  while (s->info.next_scanline < s->info.image_height) {
    JSAMPROW row = data + row_bytes * s->info.next_scanline;
    jpeg_write_scanlines(&s->info, &row, 1);
  }
  jpeg_finish_compress(&s->info);
  jpeg_destroy_compress(&s->info);
  s->created = false;
  std::string bytes(reinterpret_cast<const char*>(s->buffer), s->size);
  std::free(s->buffer);
  s->buffer = nullptr;
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
