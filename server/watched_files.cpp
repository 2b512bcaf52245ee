#include "server/watched_files.h"

#include <fstream>
#include <stdexcept>
#include <utility>

namespace ldcp::server {

std::string read_whole_file(const std::string& option, const std::string& path) {
  // Bounded: a path naming a device or a wrong, huge file must not take the server's memory.
  constexpr size_t kMaxBytes = 4 << 20;
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(option + ": cannot read " + path);
  std::string text;
  char chunk[16384];
  while (in.read(chunk, sizeof chunk) || in.gcount() > 0) {
    text.append(chunk, static_cast<size_t>(in.gcount()));
    if (text.size() > kMaxBytes) throw std::runtime_error(option + ": " + path + " exceeds 4 MiB");
  }
  if (in.bad()) throw std::runtime_error(option + ": cannot read " + path);
  return text;
}

WatchedFiles::WatchedFiles(std::vector<std::string> options, std::vector<std::string> paths,
                           std::vector<std::string> texts)
    : options_(std::move(options)), paths_(std::move(paths)), accepted_(std::move(texts)) {}

FileChange WatchedFiles::poll(std::vector<std::string>& texts, std::string& error) {
  texts.clear();
  try {
    for (size_t i = 0; i < paths_.size(); ++i) {
      texts.push_back(read_whole_file(options_.at(i), paths_[i]));
    }
  } catch (const std::exception& e) {
    if (e.what() == last_error_) return FileChange::kNone;
    last_error_ = error = e.what();
    return FileChange::kUnreadable;
  }
  last_error_.clear();
  if (texts == accepted_ || texts == rejected_) return FileChange::kNone;
  return FileChange::kChanged;
}

void WatchedFiles::accept(std::vector<std::string> texts) {
  accepted_ = std::move(texts);
  rejected_.clear();
}

void WatchedFiles::reject(std::vector<std::string> texts) { rejected_ = std::move(texts); }

}  // namespace ldcp::server
