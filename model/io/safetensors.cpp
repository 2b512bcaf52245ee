#include "model/io/safetensors.h"

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

// The format stores little-endian data; tensors are copied byte for byte.
static_assert(std::endian::native == std::endian::little, "safetensors I/O assumes little endian");

namespace ldcp::io {
namespace {

// The reference implementation's cap on the JSON header (safetensors' MAX_HEADER_SIZE).
constexpr uint64_t kMaxHeaderSize = 100'000'000;

struct DtypeEntry {
  const char* name;
  at::ScalarType type;
};

// Every safetensors dtype that has an at::ScalarType of the same layout.
constexpr DtypeEntry kDtypes[] = {
    {"F64", at::kDouble},
    {"F32", at::kFloat},
    {"F16", at::kHalf},
    {"BF16", at::kBFloat16},
    {"I64", at::kLong},
    {"I32", at::kInt},
    {"I16", at::kShort},
    {"I8", at::kChar},
    {"U64", at::kUInt64},
    {"U32", at::kUInt32},
    {"U16", at::kUInt16},
    {"U8", at::kByte},
    {"BOOL", at::kBool},
    {"C64", at::kComplexFloat},
    {"F8_E4M3", at::kFloat8_e4m3fn},
    {"F8_E4M3FNUZ", at::kFloat8_e4m3fnuz},
    {"F8_E5M2", at::kFloat8_e5m2},
    {"F8_E5M2FNUZ", at::kFloat8_e5m2fnuz},
    {"F8_E8M0", at::kFloat8_e8m0fnu},
};

std::optional<at::ScalarType> scalar_type_of(const std::string& dtype) {
  for (const auto& entry : kDtypes) {
    if (dtype == entry.name) return entry.type;
  }
  return std::nullopt;
}

std::optional<std::string> dtype_name_of(at::ScalarType type) {
  for (const auto& entry : kDtypes) {
    if (type == entry.type) return std::string(entry.name);
  }
  return std::nullopt;
}

std::string quote_name(const std::string& name) { return "\"" + name + "\""; }

[[noreturn]] void fail(const std::filesystem::path& path, const std::string& what) {
  throw SafetensorsError(path.string() + ": " + what);
}

[[noreturn]] void fail_tensor(const std::filesystem::path& path, const std::string& name,
                              const std::string& what) {
  throw SafetensorsError(path.string() + ": tensor " + quote_name(name) + ": " + what);
}

// Reads one non-negative JSON integer (shape dimension or offset); floats, negatives, strings
// and booleans are rejected, as the reference's usize fields do.
std::optional<uint64_t> as_unsigned(const nlohmann::json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  return value.get<uint64_t>();
}

TensorInfo parse_entry(const std::filesystem::path& path, const std::string& name,
                       const nlohmann::json& entry) {
  if (!entry.is_object()) fail_tensor(path, name, "header entry is not a JSON object");
  TensorInfo info;

  auto dtype = entry.find("dtype");
  if (dtype == entry.end()) fail_tensor(path, name, "no \"dtype\"");
  if (!dtype->is_string()) fail_tensor(path, name, "\"dtype\" is not a string");
  info.dtype = dtype->get<std::string>();
  const auto type = scalar_type_of(info.dtype);
  if (!type) fail_tensor(path, name, "unknown dtype " + quote_name(info.dtype));

  auto shape = entry.find("shape");
  if (shape == entry.end()) fail_tensor(path, name, "no \"shape\"");
  if (!shape->is_array()) fail_tensor(path, name, "\"shape\" is not an array");
  // Element count, checked for overflow: the product must stay representable in bytes.
  const uint64_t element_size = c10::elementSize(*type);
  uint64_t numel = 1;
  bool overflow = false;
  for (const auto& dim : *shape) {
    const auto value = as_unsigned(dim);
    if (!value) fail_tensor(path, name, "shape " + shape->dump() + " is not non-negative integers");
    if (*value > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail_tensor(path, name, "shape " + shape->dump() + " has a dimension too large");
    }
    info.shape.push_back(static_cast<int64_t>(*value));
    if (*value == 0) {
      numel = 0;
      overflow = false;
    } else if (numel != 0 && !overflow) {
      if (numel > std::numeric_limits<uint64_t>::max() / *value) {
        overflow = true;
      } else {
        numel *= *value;
      }
    }
  }
  uint64_t nbytes = 0;
  if (!overflow && numel > std::numeric_limits<uint64_t>::max() / element_size) overflow = true;
  if (!overflow) nbytes = numel * element_size;

  auto offsets = entry.find("data_offsets");
  if (offsets == entry.end()) fail_tensor(path, name, "no \"data_offsets\"");
  if (!offsets->is_array() || offsets->size() != 2) {
    fail_tensor(path, name, "\"data_offsets\" is not an array [begin, end]");
  }
  const auto begin = as_unsigned((*offsets)[0]);
  const auto end = as_unsigned((*offsets)[1]);
  if (!begin || !end) {
    fail_tensor(path, name, "data_offsets " + offsets->dump() + " are not non-negative integers");
  }
  if (*begin > *end) {
    fail_tensor(path, name, "data_offsets " + offsets->dump() + " have begin > end");
  }
  info.begin = *begin;
  info.end = *end;
  if (overflow || nbytes != info.end - info.begin) {
    fail_tensor(path, name,
                "data_offsets " + offsets->dump() + " span " +
                    std::to_string(info.end - info.begin) + " bytes but dtype " + info.dtype +
                    " and shape " + shape->dump() + " need " +
                    (overflow ? std::string("more than 2^64") : std::to_string(nbytes)));
  }
  return info;
}

// Closes the descriptor on every path out of the constructor.
struct FileDescriptor {
  int fd = -1;
  ~FileDescriptor() {
    if (fd >= 0) ::close(fd);
  }
};

std::string errno_text() { return std::strerror(errno); }

// Reads exactly `size` bytes at `offset`; false (errno set, or 0 at end of file) otherwise.
bool read_fully(int fd, void* out, size_t size, uint64_t offset) {
  auto* bytes = static_cast<char*>(out);
  while (size > 0) {
    const ssize_t got = ::pread(fd, bytes, size, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) {
      if (got == 0) errno = 0;
      return false;
    }
    bytes += got;
    size -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return true;
}

}  // namespace

struct SafetensorsFile::State {
  std::filesystem::path path;
  FileDescriptor file;
  uint64_t data_begin = 0;  // file offset of the data area
  uint64_t data_size = 0;
  std::map<std::string, TensorInfo> tensors;
  Metadata metadata;

  void read(const std::string& name, const TensorInfo& entry, void* out) const {
    const uint64_t nbytes = entry.end - entry.begin;
    if (!read_fully(file.fd, out, nbytes, data_begin + entry.begin)) {
      fail_tensor(path, name,
                  std::string("cannot read its data: ") +
                      (errno != 0 ? errno_text() : "the file ended early (changed since opened?)"));
    }
  }
};

SafetensorsFile::SafetensorsFile(const std::filesystem::path& path)
    : state_(std::make_unique<State>()) {
  State& s = *state_;
  s.path = path;

  FileDescriptor& file = s.file;
  file.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (file.fd < 0) fail(path, "cannot open: " + errno_text());
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) fail(path, "cannot stat: " + errno_text());
  if (!S_ISREG(st.st_mode)) fail(path, "not a regular file");
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    fail(path,
         "file is " + std::to_string(file_size) + " bytes, shorter than the 8-byte header length");
  }

  uint64_t header_size = 0;
  if (!read_fully(file.fd, &header_size, 8, 0)) fail(path, "cannot read: " + errno_text());
  // little endian, asserted above
  if (header_size > kMaxHeaderSize) {
    fail(path, "header length " + std::to_string(header_size) + " exceeds the limit of " +
                   std::to_string(kMaxHeaderSize) + " bytes");
  }
  if (header_size > file_size - 8) {
    fail(path, "header length " + std::to_string(header_size) + " is larger than the file (" +
                   std::to_string(file_size) + " bytes)");
  }
  std::string header_text(header_size, '\0');
  if (!read_fully(file.fd, header_text.data(), header_size, 8)) {
    fail(path, "cannot read the header: " + errno_text());
  }
  if (header_size == 0 || header_text[0] != '{') fail(path, "header does not start with '{'");

  const char* header_begin = header_text.data();
  nlohmann::json header;
  // A valid header nests three levels deep; the cap keeps hostile nesting from exhausting
  // memory or stack.
  constexpr int kMaxDepth = 8;
  const nlohmann::json::parser_callback_t limit_depth =
      [&path](int depth, nlohmann::json::parse_event_t, nlohmann::json&) {
        if (depth > kMaxDepth) fail(path, "header JSON nests deeper than expected");
        return true;
      };
  try {
    header = nlohmann::json::parse(header_begin, header_begin + header_size, limit_depth);
  } catch (const nlohmann::json::parse_error& e) {
    fail(path, std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail(path, "header is not a JSON object");

  std::vector<std::pair<std::string, const TensorInfo*>> by_offset;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      if (entry.is_null()) continue;
      if (!entry.is_object()) fail(path, "\"__metadata__\" is not a JSON object");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) {
          fail(path, "\"__metadata__\" value of " + quote_name(key) + " is not a string");
        }
        s.metadata.emplace(key, value.get<std::string>());
      }
      continue;
    }
    s.tensors.emplace(name, parse_entry(path, name, entry));
  }

  // The tensors must tile the data area exactly: sorted by offsets, each begins where the
  // previous one ended, and the last one ends at the end of the file.
  s.data_begin = 8 + header_size;
  s.data_size = file_size - 8 - header_size;
  for (const auto& [name, info] : s.tensors) by_offset.emplace_back(name, &info);
  std::sort(by_offset.begin(), by_offset.end(), [](const auto& a, const auto& b) {
    if (a.second->begin != b.second->begin) return a.second->begin < b.second->begin;
    return a.second->end < b.second->end;
  });
  uint64_t position = 0;
  for (const auto& [name, info] : by_offset) {
    if (info->end > s.data_size) {
      fail_tensor(path, name,
                  "data_offsets [" + std::to_string(info->begin) + ", " +
                      std::to_string(info->end) + "] run past the data area (" +
                      std::to_string(s.data_size) + " bytes)");
    }
    if (info->begin < position) {
      fail_tensor(path, name,
                  "data_offsets [" + std::to_string(info->begin) + ", " +
                      std::to_string(info->end) + "] overlap the previous tensor, which ends at " +
                      std::to_string(position));
    }
    if (info->begin > position) {
      fail_tensor(path, name,
                  "data_offsets [" + std::to_string(info->begin) + ", " +
                      std::to_string(info->end) + "] leave a hole after byte " +
                      std::to_string(position));
    }
    position = info->end;
  }
  if (position != s.data_size) {
    fail(path, "data area has " + std::to_string(s.data_size - position) +
                   " trailing bytes after the last tensor (tensors end at " +
                   std::to_string(position) + " of " + std::to_string(s.data_size) + ")");
  }
}

SafetensorsFile::~SafetensorsFile() = default;
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;
SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&&) noexcept = default;

const std::filesystem::path& SafetensorsFile::path() const { return state_->path; }

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(state_->tensors.size());
  for (const auto& entry : state_->tensors) out.push_back(entry.first);
  return out;
}

bool SafetensorsFile::contains(const std::string& name) const {
  return state_->tensors.count(name) != 0;
}

const TensorInfo& SafetensorsFile::info(const std::string& name) const {
  auto it = state_->tensors.find(name);
  if (it == state_->tensors.end()) fail_tensor(state_->path, name, "no such tensor in the file");
  return it->second;
}

const Metadata& SafetensorsFile::metadata() const { return state_->metadata; }

at::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorInfo& entry = info(name);
  // Validated in the constructor: known dtype, size matches, offsets inside the data area.
  const auto type = *scalar_type_of(entry.dtype);
  at::Tensor out = at::empty(entry.shape, at::TensorOptions().dtype(type).device(at::kCPU));
  state_->read(name, entry, out.data_ptr());
  return out;
}

void SafetensorsFile::read_into(const std::string& name, at::Tensor& target,
                                at::Tensor* staging) const {
  const TensorInfo& entry = info(name);
  if (target.sizes().vec() != entry.shape) {
    fail_tensor(state_->path, name, "cannot be read into a tensor of another shape");
  }
  const auto type = *scalar_type_of(entry.dtype);
  if (target.device().is_cpu() && target.is_contiguous() && target.scalar_type() == type) {
    state_->read(name, entry, target.data_ptr());
    return;
  }
  if (staging == nullptr) {
    target.copy_(tensor(name));
    return;
  }
  const auto nbytes = static_cast<int64_t>(entry.end - entry.begin);
  if (!staging->defined() || staging->numel() < nbytes) {
    *staging = at::empty({nbytes}, at::TensorOptions().dtype(at::kByte).device(at::kCPU));
  }
  state_->read(name, entry, staging->data_ptr());
  target.copy_(staging->narrow(0, 0, nbytes).view(type).view(entry.shape));
}

TensorMap load_safetensors(const std::filesystem::path& path, Metadata* metadata) {
  SafetensorsFile file(path);
  TensorMap out;
  for (const auto& name : file.names()) out.emplace(name, file.tensor(name));
  if (metadata != nullptr) *metadata = file.metadata();
  return out;
}

void save_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                      const Metadata& metadata) {
  struct Item {
    std::string name;
    at::Tensor data;  // CPU, contiguous
    std::string dtype;
  };
  std::vector<Item> items;
  items.reserve(tensors.size());
  for (const auto& [name, tensor] : tensors) {
    if (name == "__metadata__") fail(path, "\"__metadata__\" cannot be a tensor name");
    if (!tensor.defined()) fail_tensor(path, name, "undefined tensor");
    const auto dtype = dtype_name_of(tensor.scalar_type());
    if (!dtype) {
      fail_tensor(path, name,
                  std::string("dtype ") + c10::toString(tensor.scalar_type()) +
                      " has no safetensors equivalent");
    }
    items.push_back({name, tensor.detach().to(at::kCPU).contiguous(), *dtype});
  }
  // Larger elements first (then by name), as the reference writer orders the data, so every
  // tensor is aligned to its element size given the 8-byte aligned header.
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    const auto sa = a.data.element_size(), sb = b.data.element_size();
    if (sa != sb) return sa > sb;
    return a.name < b.name;
  });

  nlohmann::json header = nlohmann::json::object();  // std::map: keys come out sorted
  if (!metadata.empty()) {
    nlohmann::json meta = nlohmann::json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const auto& item : items) {
    const uint64_t nbytes = item.data.nbytes();
    header[item.name] = {{"dtype", item.dtype},
                         {"shape", item.data.sizes().vec()},
                         {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail(path,
         std::string("cannot encode the header (names and metadata must be UTF-8): ") + e.what());
  }
  // Pad with spaces so the data area starts on an 8-byte boundary, as the reference does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_size = header_text.size();

  auto tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  FileDescriptor file;
  file.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (file.fd < 0) fail(path, "cannot create " + tmp.string() + ": " + errno_text());
  auto write_all = [&](const void* data, uint64_t size) {
    const auto* p = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t n = ::write(file.fd, p, std::min<uint64_t>(size, 1u << 30));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const std::string why = errno_text();
        std::error_code ignored;
        std::filesystem::remove(tmp, ignored);
        fail(path, "write failed: " + why);
      }
      p += n;
      size -= static_cast<uint64_t>(n);
    }
  };
  write_all(&header_size, 8);
  write_all(header_text.data(), header_size);
  for (const auto& item : items) write_all(item.data.data_ptr(), item.data.nbytes());
  const bool synced = ::fsync(file.fd) == 0;
  const bool closed = ::close(file.fd) == 0;
  file.fd = -1;
  std::error_code ec;
  if (!synced || !closed) {
    const std::string why = errno_text();
    std::filesystem::remove(tmp, ec);
    fail(path, "write failed: " + why);
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    fail(path, "cannot rename " + tmp.string() + ": " + why);
  }
}

}  // namespace ldcp::io
