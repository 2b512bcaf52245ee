// libFuzzer target: a tokenizer folder's own files (ClipTokenizer::from_folder). The input is
// tokenizer_config.json, special_tokens_map.json and tokenizer.json, separated by NUL bytes
// (an empty part: that file is absent); vocab.json and merges.txt are the demo model's.
// Malformed folders may only throw TokenizerError or ConfigError naming the file; a tokenizer
// that loads must encode to model_max_length ids from its vocabulary.

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include "model/clip/tokenization_clip.h"
#include "model/io/json_file.h"

namespace {

namespace fs = std::filesystem;
fs::path folder;

void write_or_remove(const fs::path& path, std::string_view text) {
  if (text.empty()) {
    fs::remove(path);
    return;
  }
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(text.data(), static_cast<std::streamsize>(text.size()));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  folder = fs::temp_directory_path() / ("ldcp-fuzz-tokenizer-" + std::to_string(::getpid()));
  fs::create_directories(folder);
  for (const char* name : {"vocab.json", "merges.txt"}) {
    fs::copy_file(fs::path(LDCP_SOURCE_DIR) / "data/demo-model/tokenizer" / name, folder / name,
                  fs::copy_options::overwrite_existing);
  }
  std::atexit([] { fs::remove_all(folder); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  std::string_view parts[3];
  for (auto& part : parts) {
    const size_t end = std::min(input.find('\0'), input.size());
    part = input.substr(0, end);
    input.remove_prefix(std::min(end + 1, input.size()));
  }
  write_or_remove(folder / "tokenizer_config.json", parts[0]);
  write_or_remove(folder / "special_tokens_map.json", parts[1]);
  write_or_remove(folder / "tokenizer.json", parts[2]);
  try {
    const auto tokenizer = ldcp::clip::ClipTokenizer::from_folder(folder);
    const auto ids = tokenizer.encode("a photo of a red circle <|endoftext|>");
    if (static_cast<int64_t>(ids.size()) != tokenizer.max_length()) std::abort();
    for (int64_t id : ids) {
      if (id < 0 || id >= tokenizer.vocab_size()) std::abort();
    }
  } catch (const ldcp::clip::TokenizerError& e) {
    if (std::string(e.what()).find(folder.string()) == std::string::npos) std::abort();
  } catch (const ldcp::io::ConfigError& e) {
    if (std::string(e.what()).find(folder.string()) == std::string::npos) std::abort();
  }
  return 0;
}
