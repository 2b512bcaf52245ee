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
      safetensors_fail_tensor(
          path, name,
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
  if (file.fd < 0) safetensors_fail(path, "cannot open: " + errno_text());
  struct stat st {};
  if (::fstat(file.fd, &st) != 0) safetensors_fail(path, "cannot stat: " + errno_text());
  if (!S_ISREG(st.st_mode)) safetensors_fail(path, "not a regular file");
  auto header = read_safetensors_header(path, static_cast<uint64_t>(st.st_size),
                                        [fd = file.fd](void* out, size_t size, uint64_t at) {
                                          return read_fully(fd, out, size, at);
                                        });
  s.data_begin = header.data_begin;
  s.data_size = header.data_size;
  s.tensors = std::move(header.tensors);
  s.metadata = std::move(header.metadata);
  // Every dtype the header reader accepts has a scalar type of the same element size.
  for (const auto& [name, info] : s.tensors) {
    const auto type = scalar_type_of(info.dtype);
    if (!type || c10::elementSize(*type) != safetensors_dtype_size(info.dtype)) {
      safetensors_fail_tensor(path, name,
                              "dtype \"" + info.dtype + "\" has no libtorch equivalent");
    }
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
  if (it == state_->tensors.end())
    safetensors_fail_tensor(state_->path, name, "no such tensor in the file");
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
    safetensors_fail_tensor(state_->path, name, "cannot be read into a tensor of another shape");
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
    *staging = at::Tensor();  // freed first: the old and the new buffer never coexist
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
    if (name == "__metadata__") safetensors_fail(path, "\"__metadata__\" cannot be a tensor name");
    if (!tensor.defined()) safetensors_fail_tensor(path, name, "undefined tensor");
    const auto dtype = dtype_name_of(tensor.scalar_type());
    if (!dtype) {
      safetensors_fail_tensor(path, name,
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
    safetensors_fail(
        path,
        std::string("cannot encode the header (names and metadata must be UTF-8): ") + e.what());
  }
  // Pad with spaces so the data area starts on an 8-byte boundary, as the reference does.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t header_size = header_text.size();

  auto tmp = path;
  tmp += ".tmp." + std::to_string(::getpid());
  FileDescriptor file;
  file.fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (file.fd < 0) safetensors_fail(path, "cannot create " + tmp.string() + ": " + errno_text());
  auto write_all = [&](const void* data, uint64_t size) {
    const auto* p = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t n = ::write(file.fd, p, std::min<uint64_t>(size, 1u << 30));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const std::string why = errno_text();
        std::error_code ignored;
        std::filesystem::remove(tmp, ignored);
        safetensors_fail(path, "write failed: " + why);
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
    safetensors_fail(path, "write failed: " + why);
  }
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    const std::string why = ec.message();
    std::filesystem::remove(tmp, ec);
    safetensors_fail(path, "cannot rename " + tmp.string() + ": " + why);
  }
}

}  // namespace ldcp::io
