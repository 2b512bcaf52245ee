// libFuzzer target: the safetensors header reader (model/io/safetensors_header.h) on whole
// files. Anything accepted must describe tensors that tile the data area, with sizes that match
// their dtype and shape; anything else must be a SafetensorsError naming the file.

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <string>

#include "model/io/safetensors_header.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  ldcp::io::SafetensorsHeader header;
  try {
    header = ldcp::io::parse_safetensors_bytes("fuzz.safetensors", bytes);
  } catch (const ldcp::io::SafetensorsError& e) {
    if (std::string(e.what()).rfind("fuzz.safetensors: ", 0) != 0) std::abort();
    return 0;
  }
  uint64_t total = 0;
  for (const auto& [name, info] : header.tensors) {
    uint64_t numel = 1;
    for (int64_t dim : info.shape) {
      if (dim < 0) std::abort();
      if (dim != 0 && numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / dim) {
        std::abort();  // accepted a shape libtorch would refuse
      }
      numel *= static_cast<uint64_t>(dim);
    }
    if (numel * ldcp::io::safetensors_dtype_size(info.dtype) != info.end - info.begin) std::abort();
    total += info.end - info.begin;
  }
  if (total != header.data_size || header.data_begin + header.data_size != size) std::abort();
  return 0;
}
