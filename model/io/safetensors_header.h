#pragma once
// The safetensors header (https://github.com/huggingface/safetensors): 8-byte little-endian
// header length, a JSON header, then the tensor data area. Reading and validating it needs no
// libtorch: safetensors.cpp makes tensors from what this checks, and the fuzz build
// (tests/fuzz) links this part alone.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace ldcp::io {

class SafetensorsError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

using Metadata = std::map<std::string, std::string>;

struct TensorInfo {
  std::string dtype;  // as written in the header: "F32", "F16", "BF16", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // byte offsets into the data area
  uint64_t end = 0;
};

// Throw SafetensorsError "PATH: WHAT" and "PATH: tensor "NAME": WHAT" (reader and writer).
[[noreturn]] void safetensors_fail(const std::filesystem::path& path, const std::string& what);
[[noreturn]] void safetensors_fail_tensor(const std::filesystem::path& path,
                                          const std::string& name, const std::string& what);

// The reference implementation's cap on the JSON header (safetensors' MAX_HEADER_SIZE).
inline constexpr uint64_t kMaxSafetensorsHeaderSize = 100'000'000;

// The dtypes the reader knows (those with an at::ScalarType of the same layout) and their
// element sizes in bytes; 0 for any other name.
size_t safetensors_dtype_size(const std::string& dtype);
const std::vector<std::string>& safetensors_dtypes();

struct SafetensorsHeader {
  uint64_t data_begin = 0;  // file offset of the data area
  uint64_t data_size = 0;
  std::map<std::string, TensorInfo> tensors;
  Metadata metadata;
};

// Reads `size` bytes at `offset` of the file into `out`; false on failure (errno set, or 0 when
// the file ended early).
using ReadAt = std::function<bool(void* out, size_t size, uint64_t offset)>;

// Reads and validates a header: every field the format specifies, known dtypes, shapes whose
// element count (zero dimensions included) stays below 2^63 and whose bytes match the offsets,
// and tensors tiling the data area exactly. Throws SafetensorsError naming `path` (and the
// tensor) for any violation.
SafetensorsHeader read_safetensors_header(const std::filesystem::path& path, uint64_t file_size,
                                          const ReadAt& read_at);

// The same for a whole file already in memory.
SafetensorsHeader parse_safetensors_bytes(const std::filesystem::path& path,
                                          const std::string& bytes);

}  // namespace ldcp::io
