#include "model/io/safetensors_header.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include <nlohmann/json.hpp>

// The format stores little-endian numbers; the length field is read as the host's.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes little endian");

namespace ldcp::io {
namespace {

struct DtypeSize {
  const char* name;
  size_t size;
};

constexpr DtypeSize kDtypeSizes[] = {
    {"F64", 8},         {"F32", 4},     {"F16", 2},         {"BF16", 2},    {"I64", 8},
    {"I32", 4},         {"I16", 2},     {"I8", 1},          {"U64", 8},     {"U32", 4},
    {"U16", 2},         {"U8", 1},      {"BOOL", 1},        {"C64", 8},     {"F8_E4M3", 1},
    {"F8_E4M3FNUZ", 1}, {"F8_E5M2", 1}, {"F8_E5M2FNUZ", 1}, {"F8_E8M0", 1},
};

std::string quote_name(const std::string& name) { return "\"" + name + "\""; }

std::string errno_text() { return errno != 0 ? std::strerror(errno) : "the file ended early"; }

// Reads one non-negative JSON integer (shape dimension or offset); floats, negatives, strings
// and booleans are rejected, as the reference's usize fields do.
std::optional<uint64_t> as_unsigned(const nlohmann::json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  return value.get<uint64_t>();
}

TensorInfo parse_entry(const std::filesystem::path& path, const std::string& name,
                       const nlohmann::json& entry) {
  if (!entry.is_object()) safetensors_fail_tensor(path, name, "header entry is not a JSON object");
  TensorInfo info;

  auto dtype = entry.find("dtype");
  if (dtype == entry.end()) safetensors_fail_tensor(path, name, "no \"dtype\"");
  if (!dtype->is_string()) safetensors_fail_tensor(path, name, "\"dtype\" is not a string");
  info.dtype = dtype->get<std::string>();
  const uint64_t element_size = safetensors_dtype_size(info.dtype);
  if (element_size == 0)
    safetensors_fail_tensor(path, name, "unknown dtype " + quote_name(info.dtype));

  auto shape = entry.find("shape");
  if (shape == entry.end()) safetensors_fail_tensor(path, name, "no \"shape\"");
  if (!shape->is_array()) safetensors_fail_tensor(path, name, "\"shape\" is not an array");
  // The product of the non-zero dimensions must stay below 2^63, whatever the order and
  // whether a dimension is zero: libtorch refuses such shapes even for an empty tensor.
  constexpr uint64_t kMaxElements = std::numeric_limits<int64_t>::max();
  uint64_t nonzero_product = 1;
  bool empty = false;
  for (const auto& dim : *shape) {
    const auto value = as_unsigned(dim);
    if (!value)
      safetensors_fail_tensor(path, name,
                              "shape " + shape->dump() + " is not non-negative integers");
    if (*value > kMaxElements) {
      safetensors_fail_tensor(path, name, "shape " + shape->dump() + " has a dimension too large");
    }
    info.shape.push_back(static_cast<int64_t>(*value));
    if (*value == 0) {
      empty = true;
    } else if (nonzero_product > kMaxElements / *value) {
      safetensors_fail_tensor(path, name, "shape " + shape->dump() + " has 2^63 or more elements");
    } else {
      nonzero_product *= *value;
    }
  }
  const uint64_t numel = empty ? 0 : nonzero_product;
  const bool overflow = numel > std::numeric_limits<uint64_t>::max() / element_size;
  const uint64_t nbytes = overflow ? 0 : numel * element_size;

  auto offsets = entry.find("data_offsets");
  if (offsets == entry.end()) safetensors_fail_tensor(path, name, "no \"data_offsets\"");
  if (!offsets->is_array() || offsets->size() != 2) {
    safetensors_fail_tensor(path, name, "\"data_offsets\" is not an array [begin, end]");
  }
  const auto begin = as_unsigned((*offsets)[0]);
  const auto end = as_unsigned((*offsets)[1]);
  if (!begin || !end) {
    safetensors_fail_tensor(path, name,
                            "data_offsets " + offsets->dump() + " are not non-negative integers");
  }
  if (*begin > *end) {
    safetensors_fail_tensor(path, name, "data_offsets " + offsets->dump() + " have begin > end");
  }
  info.begin = *begin;
  info.end = *end;
  if (overflow || nbytes != info.end - info.begin) {
    safetensors_fail_tensor(
        path, name,
        "data_offsets " + offsets->dump() + " span " + std::to_string(info.end - info.begin) +
            " bytes but dtype " + info.dtype + " and shape " + shape->dump() + " need " +
            (overflow ? std::string("more than 2^64") : std::to_string(nbytes)));
  }
  return info;
}

// The tensors must tile the data area exactly: sorted by offsets, each begins where the
// previous one ended, and the last one ends at the end of the file.
void check_tiling(const std::filesystem::path& path, const SafetensorsHeader& header) {
  std::vector<std::pair<std::string, const TensorInfo*>> by_offset;
  for (const auto& [name, info] : header.tensors) by_offset.emplace_back(name, &info);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
    if (a.second->begin != b.second->begin) return a.second->begin < b.second->begin;
    return a.second->end < b.second->end;
  });
  uint64_t position = 0;
  for (const auto& [name, info] : by_offset) {
    const std::string offsets =
        "data_offsets [" + std::to_string(info->begin) + ", " + std::to_string(info->end) + "]";
    if (info->end > header.data_size) {
      safetensors_fail_tensor(
          path, name,
          offsets + " run past the data area (" + std::to_string(header.data_size) + " bytes)");
    }
    if (info->begin < position) {
      safetensors_fail_tensor(
          path, name,
          offsets + " overlap the previous tensor, which ends at " + std::to_string(position));
    }
    if (info->begin > position) {
      safetensors_fail_tensor(path, name,
                              offsets + " leave a hole after byte " + std::to_string(position));
    }
    position = info->end;
  }
  if (position != header.data_size) {
    safetensors_fail(path, "data area has " + std::to_string(header.data_size - position) +
                               " trailing bytes after the last tensor (tensors end at " +
                               std::to_string(position) + " of " +
                               std::to_string(header.data_size) + ")");
  }
}

}  // namespace

void safetensors_fail(const std::filesystem::path& path, const std::string& what) {
  throw SafetensorsError(path.string() + ": " + what);
}

void safetensors_fail_tensor(const std::filesystem::path& path, const std::string& name,
                             const std::string& what) {
  throw SafetensorsError(path.string() + ": tensor " + quote_name(name) + ": " + what);
}

size_t safetensors_dtype_size(const std::string& dtype) {
  for (const auto& entry : kDtypeSizes) {
    if (dtype == entry.name) return entry.size;
  }
  return 0;
}

const std::vector<std::string>& safetensors_dtypes() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& entry : kDtypeSizes) out.emplace_back(entry.name);
    return out;
  }();
  return names;
}

SafetensorsHeader read_safetensors_header(const std::filesystem::path& path, uint64_t file_size,
                                          const ReadAt& read_at) {
  if (file_size < 8) {
    safetensors_fail(path, "file is " + std::to_string(file_size) +
                               " bytes, shorter than the 8-byte header length");
  }
  uint64_t header_size = 0;
  errno = 0;
  if (!read_at(&header_size, 8, 0)) safetensors_fail(path, "cannot read: " + errno_text());
  if (header_size > kMaxSafetensorsHeaderSize) {
    safetensors_fail(path, "header length " + std::to_string(header_size) +
                               " exceeds the limit of " +
                               std::to_string(kMaxSafetensorsHeaderSize) + " bytes");
  }
  if (header_size > file_size - 8) {
    safetensors_fail(path, "header length " + std::to_string(header_size) +
                               " is larger than the file (" + std::to_string(file_size) +
                               " bytes)");
  }
  std::string header_text(header_size, '\0');
  errno = 0;
  if (header_size > 0 && !read_at(header_text.data(), header_size, 8)) {
    safetensors_fail(path, "cannot read the header: " + errno_text());
  }
  if (header_size == 0 || header_text[0] != '{')
    safetensors_fail(path, "header does not start with '{'");

  nlohmann::json json;
  // A valid header nests three levels deep; the cap keeps hostile nesting from exhausting
  // memory or stack.
  constexpr int kMaxDepth = 8;
  const nlohmann::json::parser_callback_t limit_depth =
      [&path](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
        if (depth > kMaxDepth) safetensors_fail(path, "header JSON nests deeper than expected");
        return true;
      };
  try {
    json = nlohmann::json::parse(header_text.begin(), header_text.end(), limit_depth);
  } catch (const nlohmann::json::exception& e) {
    // parse_error, and out_of_range for numbers beyond a double ("1E400").
    safetensors_fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!json.is_object()) safetensors_fail(path, "header is not a JSON object");

  SafetensorsHeader header;
  for (const auto& [name, entry] : json.items()) {
    if (name == "__metadata__") {
      if (entry.is_null()) continue;
      if (!entry.is_object()) safetensors_fail(path, "\"__metadata__\" is not a JSON object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          safetensors_fail(path,
                           "\"__metadata__\" value of " + quote_name(key) + " is not a string");
        }
        header.metadata.emplace(key, value.get<std::string>());
      }
      continue;
    }
    header.tensors.emplace(name, parse_entry(path, name, entry));
  }
  header.data_begin = 8 + header_size;
  header.data_size = file_size - 8 - header_size;
  check_tiling(path, header);
  return header;
}

SafetensorsHeader parse_safetensors_bytes(const std::filesystem::path& path,
                                          const std::string& bytes) {
  return read_safetensors_header(path, bytes.size(),
                                 [&bytes](void* out, size_t size, uint64_t offset) {
                                   if (offset > bytes.size() || size > bytes.size() - offset) {
                                     errno = 0;
                                     return false;
                                   }
                                   std::memcpy(out, bytes.data() + offset, size);
                                   return true;
                                 });
}

}  // namespace ldcp::io
