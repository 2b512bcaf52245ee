#pragma once
// Helpers shared by the io tests: raw file writing and byte-exact tensor comparison.

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include <ATen/ATen.h>
#include <gtest/gtest.h>

namespace ldcp::io::testing {

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

inline std::string le64(uint64_t value) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((value >> (8 * i)) & 0xff);
  return out;
}

// A safetensors file from its parts; `length` overrides the header length field.
inline std::string raw_file(const std::string& header, const std::string& data,
                            std::optional<uint64_t> length = std::nullopt) {
  return le64(length.value_or(header.size())) + header + data;
}

// The tensor's bytes (contiguous, CPU): the exact comparison for every dtype.
inline std::string tensor_bytes(const at::Tensor& tensor) {
  auto t = tensor.detach().to(at::kCPU).contiguous();
  std::string out(t.nbytes(), '\0');
  if (t.nbytes() > 0) std::memcpy(out.data(), t.data_ptr(), t.nbytes());
  return out;
}

inline std::string to_hex(const std::string& bytes) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

}  // namespace ldcp::io::testing
