// libFuzzer target: the key-name mapping of original-layout single-file checkpoints
// (model/io/original_checkpoint.h) on untrusted names. The input's first two bytes choose the
// layout (U-Net layers per block, VAE blocks); the rest is keys, one a line. The mapping must
// never crash, must give each target once (or throw OriginalCheckpointError naming the file),
// must produce plain dotted names, and the error text helpers must stay short and printable.
// The whole input also goes through the pickle refusal as a file's first bytes.

#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <vector>

#include "model/io/original_checkpoint.h"

namespace {

bool plain_name(const std::string& name) {
  if (name.empty() || name.front() == '.' || name.back() == '.') return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool word =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!word && c != '.') return false;
    if (c == '.' && name[i - 1] == '.') return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ldcp::io;
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  OriginalLayout layout;
  if (size >= 2) layout = {1 + data[0] % 4, 1 + data[1] % 6};
  std::vector<std::string> keys;
  size_t start = size >= 2 ? 2 : size;
  while (start <= bytes.size()) {
    const auto end = bytes.find('\n', start);
    keys.push_back(bytes.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  try {
    const auto map = map_original_keys(keys, layout, "fuzz.safetensors");
    std::set<std::pair<OriginalPart, std::string>> targets;
    for (const auto& [key, target] : map.tensors) {
      if (!plain_name(target.name)) std::abort();
      if (!targets.emplace(target.part, target.name).second) std::abort();
    }
    if (map.tensors.size() + map.ignored.size() + map.unknown.size() > keys.size()) std::abort();
  } catch (const OriginalCheckpointError& e) {
    if (std::string(e.what()).rfind("fuzz.safetensors: ", 0) != 0) std::abort();
  }
  const auto shown = short_key(bytes);
  if (shown.size() > 96 + 3) std::abort();
  for (const char c : shown) {
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f) std::abort();
  }
  const auto refusal = pickle_refusal("fuzz.safetensors", bytes.substr(0, 16));
  if (refusal && refusal->rfind("fuzz.safetensors: ", 0) != 0) std::abort();
  return 0;
}
