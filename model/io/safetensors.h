#pragma once
// Reader and writer for the safetensors format (https://github.com/huggingface/safetensors):
// 8-byte little-endian header length, a JSON header, then the tensor data area.
// The reader validates everything the format specifies (safetensors_header.h) before any tensor
// is touched; every violation throws SafetensorsError naming the file (and tensor). Tensor data is
// read with pread, not through a mapping: a mapping's touched pages stay in the process's resident
// set until it is unmapped, which would count a whole checkpoint twice while it is being loaded.
// dtypes: F64 F32 F16 BF16 I64 I32 I16 I8 U64 U32 U16 U8 BOOL C64 F8_E4M3 F8_E4M3FNUZ F8_E5M2
// F8_E5M2FNUZ F8_E8M0 (those with an at::ScalarType); data is little endian, as the host.

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "model/io/safetensors_header.h"

namespace ldcp::io {

using TensorMap = std::map<std::string, at::Tensor>;

// A validated safetensors file, held open for reading.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&&) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&&) noexcept;

  const std::filesystem::path& path() const;
  std::vector<std::string> names() const;  // sorted
  bool contains(const std::string& name) const;
  const TensorInfo& info(const std::string& name) const;  // throws naming file and tensor
  const Metadata& metadata() const;                       // the "__metadata__" entry
  // A new CPU tensor with the stored bytes.
  at::Tensor tensor(const std::string& name) const;
  // Copies the stored tensor into `target` (same shape; any dtype, device and strides:
  // converted as copy_ does). A contiguous CPU target of the stored dtype is read into
  // directly; others through `staging` when given (a CPU byte tensor, grown as needed, that a
  // caller reading many tensors reuses: no fresh memory per tensor), else a new tensor.
  // Throws naming file and tensor on a shape mismatch or a read error.
  void read_into(const std::string& name, at::Tensor& target, at::Tensor* staging = nullptr) const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// Loads every tensor of a file into CPU memory.
TensorMap load_safetensors(const std::filesystem::path& path, Metadata* metadata = nullptr);

// Writes tensors (any device; stored contiguous, in their dtype) and optional metadata.
// Writes to a temporary file and renames it, so a crash never leaves a truncated file.
void save_safetensors(const std::filesystem::path& path, const TensorMap& tensors,
                      const Metadata& metadata = {});

}  // namespace ldcp::io
