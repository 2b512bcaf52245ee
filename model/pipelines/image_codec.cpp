#include "model/pipelines/image_codec.h"

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <system_error>

#include <png.h>
// jpeglib.h needs FILE and size_t declared first (cstdio above).
#include <jerror.h>
#include <jpeglib.h>

namespace ldcp::pipelines {
namespace {

// The largest ancillary chunk libpng may buffer (text, ICC profiles, ...), and how many.
constexpr png_alloc_size_t kMaxPngChunkBytes = 8 << 20;
constexpr png_uint_32 kMaxPngAncillaryChunks = 1000;
// Deflate expands at most 1032-fold (a 258-byte match in two bits); zlib adds a few bytes.
constexpr uint64_t kMaxDeflateRatio = 1032;
// More progressive scans than any encoder writes (libjpeg's most thorough script has 10):
// thousands of scans make decoding quadratic without making the image any larger.
constexpr int kMaxJpegScans = 1000;

std::string size_text(uint64_t width, uint64_t height) {
  return std::to_string(width) + "x" + std::to_string(height);
}

// The header's size against the limits: what is wrong ("" when nothing); `format` starts the
// message ("PNG", "JPEG").
std::string limits_violation(const char* format, uint64_t width, uint64_t height,
                             const ImageLimits& limits) {
  const std::string header =
      std::string(format) + " header: image size " + size_text(width, height);
  if (width == 0 || height == 0) return header + " is empty";
  if (width > limits.max_width || height > limits.max_height) {
    return header + " exceeds the limit of " + size_text(limits.max_width, limits.max_height);
  }
  if (width * height > limits.max_pixels) {
    return header + " is " + std::to_string(width * height) + " pixels, more than the limit of " +
           std::to_string(limits.max_pixels);
  }
  return {};
}

// ---- PNG ----

struct PngReader {
  const std::string* bytes;
  size_t offset = 0;
};

// libpng reports errors through longjmp by default; routing them into an exception keeps
// destructors running and gives a message. Warnings (the error pointer, when given, collects
// them) say what a generic error such as "Invalid IHDR data" was about.
[[noreturn]] void on_png_error(png_structp png, png_const_charp message) {
  const auto* warnings = static_cast<const std::string*>(png_get_error_ptr(png));
  if (warnings == nullptr || warnings->empty()) throw ImageError(message);
  throw ImageError(std::string(message) + " (" + *warnings + ")");
}
void on_png_warning(png_structp png, png_const_charp message) {
  auto* warnings = static_cast<std::string*>(png_get_error_ptr(png));
  if (warnings == nullptr || warnings->size() > 200) return;
  if (!warnings->empty()) *warnings += "; ";
  *warnings += message;
}

void read_from_memory(png_structp png, png_bytep out, png_size_t length) {
  auto* reader = static_cast<PngReader*>(png_get_io_ptr(png));
  if (length > reader->bytes->size() - reader->offset) png_error(png, "the file ends early");
  std::memcpy(out, reader->bytes->data() + reader->offset, length);
  reader->offset += length;
}

// A libpng read over bytes in memory with the chunk bounds every read takes; destroyed with it.
struct PngRead {
  std::string warnings;
  PngReader reader;
  png_structp png = nullptr;
  png_infop info = nullptr;

  PngRead(const std::string& bytes, const std::string& name) : reader{&bytes} {
    png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &warnings, on_png_error, on_png_warning);
    if (png != nullptr) info = png_create_info_struct(png);
    if (info == nullptr) {
      png_destroy_read_struct(&png, nullptr, nullptr);
      throw ImageError(name + ": libpng: out of memory");
    }
    png_set_read_fn(png, &reader, read_from_memory);
    png_set_chunk_malloc_max(png, kMaxPngChunkBytes);
    png_set_chunk_cache_max(png, kMaxPngAncillaryChunks);
  }
  ~PngRead() { png_destroy_read_struct(&png, &info, nullptr); }
  PngRead(const PngRead&) = delete;
  PngRead& operator=(const PngRead&) = delete;
};

// An error of a read of `name`, its message starting with the name (once).
ImageError named_error(const std::string& name, const ImageError& e) {
  const std::string what = e.what();
  return what.rfind(name + ": ", 0) == 0 ? e : ImageError(name + ": " + what);
}

void append_bytes(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<std::string*>(png_get_io_ptr(png));
  out->append(reinterpret_cast<const char*>(data), length);
}
void flush_nothing(png_structp) {}

// tEXt holds Latin-1; text that is printable ASCII and line breaks is the same in UTF-8.
bool is_plain_text(const std::string& text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return c == '\n' || (c >= 0x20 && c < 0x7F); });
}

void check_png_text(const PngText& t) {
  const auto& k = t.keyword;
  const bool keyword_ok =
      !k.empty() && k.size() <= 79 && k.front() != ' ' && k.back() != ' ' &&
      std::all_of(k.begin(), k.end(), [](char c) { return c >= 0x20 && c < 0x7F; });
  if (!keyword_ok) throw ImageError("PNG text: the keyword must be 1-79 printable characters");
  if (t.text.find('\0') != std::string::npos) {
    throw ImageError("PNG text \"" + k + "\": holds a NUL byte");
  }
  if (t.text.size() > kMaxPngChunkBytes / 2) {
    throw ImageError("PNG text \"" + k + "\": " + std::to_string(t.text.size()) +
                     " bytes, more than a reader accepts");
  }
}

// ---- JPEG ----

// libjpeg reports fatal errors through error_exit, which must not return: jump back to the
// decoder, which then throws (no C++ exception crosses the C library).
struct JpegError {
  jpeg_error_mgr manager;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void jpeg_error_exit(j_common_ptr info) {
  auto* error = reinterpret_cast<JpegError*>(info->err);
  (*info->err->format_message)(info, error->message);
  std::longjmp(error->jump, 1);
}

// Warnings that the coded data is missing or corrupt are fatal: libjpeg would go on and fill the
// rest of the image with grey, so a few hundred bytes could pass for a photo of any size (and the
// check of the file's length against the header's size relies on every block being coded).
// Others (extraneous bytes between markers, unknown JFIF versions) are ignored.
void jpeg_emit_message(j_common_ptr info, int level) {
  if (level >= 0) return;
  switch (info->err->msg_code) {
    case JWRN_JPEG_EOF:
    case JWRN_HIT_MARKER:
    case JWRN_HUFF_BAD_CODE:
    case JWRN_MUST_RESYNC:
    case JWRN_BOGUS_PROGRESSION:
      jpeg_error_exit(info);
    default:
      break;
  }
}

void jpeg_count_scans(j_common_ptr common) {
  auto* info = reinterpret_cast<j_decompress_ptr>(common);
  if (info->input_scan_number > kMaxJpegScans) {
    auto* error = reinterpret_cast<JpegError*>(info->err);
    std::snprintf(error->message, sizeof(error->message), "more than %d scans", kMaxJpegScans);
    std::longjmp(error->jump, 1);
  }
}

// Decoder state on the heap, so nothing the decoder touches lives in registers across setjmp.
struct JpegDecode {
  jpeg_decompress_struct info{};
  JpegError error{};
  jpeg_progress_mgr progress{};
  std::vector<uint8_t> pixels;
  std::string failure;  // a check of ours that failed (not libjpeg's message)
  bool created = false;
};

// Huffman-coded data holds at least one bit per 8x8 block of some component (a DC scan), so
// the header's size needs at least this many bytes; arithmetic coding has no such floor.
uint64_t min_huffman_bytes(const jpeg_decompress_struct& info) {
  uint64_t fewest_blocks = UINT64_MAX;
  for (int c = 0; c < info.num_components; ++c) {
    const auto& component = info.comp_info[c];
    fewest_blocks = std::min<uint64_t>(
        fewest_blocks, uint64_t{component.width_in_blocks} * component.height_in_blocks);
  }
  return fewest_blocks / 8;
}

}  // namespace

bool is_png(const std::string& bytes) {
  return bytes.size() >= 8 && bytes.compare(0, 8, "\x89PNG\r\n\x1a\n", 8) == 0;
}

bool is_jpeg(const std::string& bytes) {
  return bytes.size() >= 3 && bytes.compare(0, 3, "\xFF\xD8\xFF", 3) == 0;
}

RgbImage decode_png(const std::string& bytes, const std::string& name, const ImageLimits& limits) {
  PngRead read(bytes, name);
  png_structp png = read.png;
  png_infop info = read.info;
  RgbImage image;
  try {
    png_set_user_limits(png, limits.max_width, limits.max_height);
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
    // The fuzz build (tests/fuzz) lets mutated chunks through to the code behind the checksums.
    png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_QUIET_USE);
    png_set_option(png, PNG_IGNORE_ADLER32, PNG_OPTION_ON);
#endif
    png_read_info(png, info);
    const uint64_t width = png_get_image_width(png, info);
    const uint64_t height = png_get_image_height(png, info);
    if (auto violation = limits_violation("PNG", width, height, limits); !violation.empty()) {
      throw ImageError(violation);
    }
    // The stored samples, before any expansion, must fit what the file can inflate to.
    const uint64_t stored_bytes =
        height * (width * png_get_channels(png, info) * png_get_bit_depth(png, info) / 8);
    if (stored_bytes > kMaxDeflateRatio * bytes.size() + 4096) {
      throw ImageError(name + ": PNG header: image size " + size_text(width, height) + " needs " +
                       std::to_string(stored_bytes) + " bytes of samples, more than a " +
                       std::to_string(bytes.size()) + "-byte file can hold");
    }
    png_set_expand(png);  // palette and low-bit gray to 8-bit, tRNS to alpha
    png_set_strip_16(png);
    png_set_strip_alpha(png);
    png_set_gray_to_rgb(png);
    png_read_update_info(png, info);
    if (png_get_channels(png, info) != 3) throw ImageError("unsupported PNG layout");
    image.width = static_cast<uint32_t>(width);
    image.height = static_cast<uint32_t>(height);
    image.pixels.resize(width * height * 3);
    std::vector<png_bytep> rows(height);
    for (uint64_t y = 0; y < height; ++y) rows[y] = image.pixels.data() + y * width * 3;
    png_read_image(png, rows.data());
    png_read_end(png, nullptr);
  } catch (const ImageError& e) {
    throw named_error(name, e);
  }
  return image;
}

std::vector<PngText> read_png_text(const std::string& bytes, const std::string& name) {
  if (!is_png(bytes)) throw ImageError(name + ": not a PNG file");
  PngRead read(bytes, name);
  std::vector<PngText> out;
  try {
    png_read_info(read.png, read.info);
    png_textp chunks = nullptr;
    const int count = png_get_text(read.png, read.info, &chunks, nullptr);
    for (int i = 0; i < count; ++i) {
      const size_t length = chunks[i].compression >= PNG_ITXT_COMPRESSION_NONE
                                ? chunks[i].itxt_length
                                : chunks[i].text_length;
      out.push_back({chunks[i].key, std::string(chunks[i].text, length)});
    }
  } catch (const ImageError& e) {
    throw named_error(name, e);
  }
  return out;
}

RgbImage decode_jpeg(const std::string& bytes, const std::string& name, const ImageLimits& limits) {
  auto state = std::make_unique<JpegDecode>();
  JpegDecode* s = state.get();
  s->info.err = jpeg_std_error(&s->error.manager);
  s->error.manager.error_exit = jpeg_error_exit;
  s->error.manager.emit_message = jpeg_emit_message;
  if (setjmp(s->error.jump)) {
    if (s->created) jpeg_destroy_decompress(&s->info);
    throw ImageError(
        name + ": " +
        (s->failure.empty() ? "cannot decode JPEG: " + std::string(s->error.message) : s->failure));
  }
  jpeg_create_decompress(&s->info);
  s->created = true;
  s->progress.progress_monitor = jpeg_count_scans;
  s->info.progress = &s->progress;
  jpeg_mem_src(&s->info, reinterpret_cast<const unsigned char*>(bytes.data()),
               static_cast<unsigned long>(bytes.size()));
  jpeg_read_header(&s->info, TRUE);
  const uint64_t width = s->info.image_width, height = s->info.image_height;
  s->failure = limits_violation("JPEG", width, height, limits);
  if (!s->failure.empty()) std::longjmp(s->error.jump, 1);
  if (!s->info.arith_code && min_huffman_bytes(s->info) > bytes.size()) {
    s->failure = "JPEG header: image size " + size_text(width, height) + " needs at least " +
                 std::to_string(min_huffman_bytes(s->info)) +
                 " bytes of coded data, the file has " + std::to_string(bytes.size());
    std::longjmp(s->error.jump, 1);
  }
  const bool cmyk = s->info.jpeg_color_space == JCS_CMYK || s->info.jpeg_color_space == JCS_YCCK;
  s->info.out_color_space = cmyk ? JCS_CMYK : JCS_RGB;
  jpeg_start_decompress(&s->info);
  const size_t components = s->info.output_components;
  const size_t row_bytes = static_cast<size_t>(s->info.output_width) * components;
  s->pixels.resize(row_bytes * s->info.output_height);
  while (s->info.output_scanline < s->info.output_height) {
    JSAMPROW row = s->pixels.data() + row_bytes * s->info.output_scanline;
    jpeg_read_scanlines(&s->info, &row, 1);
  }
  jpeg_finish_decompress(&s->info);
  jpeg_destroy_decompress(&s->info);
  s->created = false;

  RgbImage image;
  image.width = static_cast<uint32_t>(width);
  image.height = static_cast<uint32_t>(height);
  if (!cmyk) {
    image.pixels = std::move(s->pixels);
    return image;
  }
  // Adobe writes inverted CMYK (what libjpeg hands back for Photoshop files): R = C * K / 255,
  // rounded (no ties: 255 is odd).
  image.pixels.resize(width * height * 3);
  for (size_t i = 0; i < width * height; ++i) {
    const uint8_t* in = s->pixels.data() + i * 4;
    for (int c = 0; c < 3; ++c)
      image.pixels[i * 3 + c] = static_cast<uint8_t>((in[c] * in[3] + 127) / 255);
  }
  return image;
}

RgbImage decode_image(const std::string& bytes, const std::string& name,
                      const ImageLimits& limits) {
  if (is_png(bytes)) return decode_png(bytes, name, limits);
  if (is_jpeg(bytes)) return decode_jpeg(bytes, name, limits);
  throw ImageError(name + ": neither a PNG nor a JPEG file");
}

std::string read_image_file(const std::filesystem::path& path, const ImageLimits& limits) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw ImageError("cannot open " + path.string() + ": " + ec.message());
  if (size > limits.max_file_bytes) {
    throw ImageError(path.string() + ": the file is " + std::to_string(size) +
                     " bytes, more than the limit of " + std::to_string(limits.max_file_bytes));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ImageError("cannot open " + path.string());
  std::string bytes(size, '\0');
  in.read(bytes.data(), static_cast<std::streamsize>(size));
  if (static_cast<uint64_t>(in.gcount()) != size) throw ImageError("cannot read " + path.string());
  return bytes;
}

std::string encode_png(const uint8_t* rgb, uint32_t width, uint32_t height,
                       const std::vector<PngText>& text) {
  for (const auto& t : text) check_png_text(t);
  std::string out;
  png_structp png =
      png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, on_png_error, on_png_warning);
  if (png == nullptr) throw ImageError("libpng: out of memory");
  png_infop info = png_create_info_struct(png);
  try {
    if (info == nullptr) throw ImageError("libpng: out of memory");
    png_set_write_fn(png, &out, append_bytes, flush_nothing);
    png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    // libpng copies the chunks' strings in png_set_text.
    std::vector<png_text> chunks(text.size());
    for (size_t i = 0; i < text.size(); ++i) {
      auto& chunk = chunks[i];
      chunk.compression =
          is_plain_text(text[i].text) ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
      chunk.key = const_cast<png_charp>(text[i].keyword.c_str());
      chunk.text = const_cast<png_charp>(text[i].text.c_str());
      chunk.text_length = text[i].text.size();
      chunk.itxt_length = 0;
      chunk.lang = nullptr;
      chunk.lang_key = nullptr;
    }
    if (!chunks.empty()) png_set_text(png, info, chunks.data(), static_cast<int>(chunks.size()));
    png_write_info(png, info);
    for (png_uint_32 y = 0; y < height; ++y) {
      png_write_row(png, const_cast<png_bytep>(rgb + static_cast<size_t>(y) * width * 3));
    }
    png_write_end(png, nullptr);
  } catch (...) {
    png_destroy_write_struct(&png, &info);
    throw;
  }
  png_destroy_write_struct(&png, &info);
  return out;
}

std::string encode_jpeg(const uint8_t* rgb, uint32_t width, uint32_t height, int quality) {
  struct Encode {
    jpeg_compress_struct info{};
    JpegError error{};
    unsigned char* buffer = nullptr;
    unsigned long size = 0;
    bool created = false;
  };
  auto state = std::make_unique<Encode>();
  Encode* s = state.get();
  s->info.err = jpeg_std_error(&s->error.manager);
  s->error.manager.error_exit = jpeg_error_exit;
  if (setjmp(s->error.jump)) {
    if (s->created) jpeg_destroy_compress(&s->info);
    std::free(s->buffer);
    throw ImageError(std::string("cannot encode JPEG: ") + s->error.message);
  }
  jpeg_create_compress(&s->info);
  s->created = true;
  jpeg_mem_dest(&s->info, &s->buffer, &s->size);
  s->info.image_width = width;
  s->info.image_height = height;
  s->info.input_components = 3;
  s->info.in_color_space = JCS_RGB;
  jpeg_set_defaults(&s->info);
  jpeg_set_quality(&s->info, std::clamp(quality, 1, 100), TRUE);
  jpeg_start_compress(&s->info, TRUE);
  const size_t row_bytes = static_cast<size_t>(width) * 3;
  while (s->info.next_scanline < s->info.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(rgb + row_bytes * s->info.next_scanline);
    jpeg_write_scanlines(&s->info, &row, 1);
  }
  jpeg_finish_compress(&s->info);
  jpeg_destroy_compress(&s->info);
  s->created = false;
  std::string bytes(reinterpret_cast<const char*>(s->buffer), s->size);
  std::free(s->buffer);
  s->buffer = nullptr;
  return bytes;
}

}  // namespace ldcp::pipelines
