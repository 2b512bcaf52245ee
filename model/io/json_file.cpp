#include "model/io/json_file.h"

#include <fstream>
#include <sstream>
#include <system_error>

namespace ldcp::io {

nlohmann::json read_json_file(const std::filesystem::path& path) {
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) {
    throw ConfigError(path.string() + ": file not found");
  }
  if (!std::filesystem::is_regular_file(status)) {
    throw ConfigError(path.string() + ": not a regular file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(path.string() + ": cannot open the file for reading");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError(path.string() + ": read error");
  try {
    return nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() carries the parser's line and column.
    throw ConfigError(path.string() + ": malformed JSON at byte " + std::to_string(e.byte) + ": " +
                      e.what());
  }
}

}  // namespace ldcp::io
