#pragma once
// Files that a server re-reads while it runs (the metrics endpoint's TLS certificate and key and
// its basic-auth file): compared by content, not by modification time, since a Kubernetes Secret
// volume swaps a symlink to a new folder and cert-manager rewrites files in place. A set of files
// changes together (a certificate and its key): a half-written pair is rejected by the caller and
// tried again once either file changes again.

#include <string>
#include <vector>

namespace ldcp::server {

// The whole file; throws std::runtime_error "OPTION: cannot read PATH" when it cannot be read,
// and naming OPTION and PATH when it exceeds 4 MiB.
std::string read_whole_file(const std::string& option, const std::string& path);

enum class FileChange { kNone, kChanged, kUnreadable };

class WatchedFiles {
 public:
  // `options` name the files in messages (e.g. "--metrics-tls-cert"); `texts` is what was
  // read and accepted at start-up.
  WatchedFiles(std::vector<std::string> options, std::vector<std::string> paths,
               std::vector<std::string> texts);

  // Reads the files again. kChanged: `texts` holds new content, neither the accepted nor the
  // last rejected one; call accept() or reject(). kUnreadable: `error` says which file, once per
  // distinct error (later polls with the same error return kNone). kNone: nothing new.
  FileChange poll(std::vector<std::string>& texts, std::string& error);
  void accept(std::vector<std::string> texts);
  void reject(std::vector<std::string> texts);

  const std::vector<std::string>& paths() const { return paths_; }

 private:
  std::vector<std::string> options_, paths_;
  std::vector<std::string> accepted_, rejected_;
  std::string last_error_;
};

}  // namespace ldcp::server
