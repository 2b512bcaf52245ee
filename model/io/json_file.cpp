#include "model/io/json_file.h"

#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <system_error>

namespace ldcp::io {
namespace {

// Python's json module writes the non-standard tokens NaN, Infinity and -Infinity (diffusers'
// DPMSolverMultistepScheduler saves lambda_min_clipped = -inf), which JSON parsers reject. Outside
// strings they become marker strings before parsing, and doubles again after.
// The marker begins with a NUL, which no config text contains.
const std::string kMarker = std::string(1, '\0') + "ldcp-non-finite:";

std::string quote_non_finite(const std::string& text) {
  static const std::pair<const char*, const char*> tokens[] = {
      {"-Infinity", "-inf"}, {"Infinity", "inf"}, {"NaN", "nan"}};
  std::string out;
  out.reserve(text.size());
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out += c;
      if (c == '\\' && i + 1 < text.size()) {
        out += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') in_string = true;
    bool replaced = false;
    for (const auto& [token, name] : tokens) {
      if (text.compare(i, std::strlen(token), token) == 0) {
        out += std::string("\"\\u0000") + kMarker.substr(1) + name + "\"";  // JSON-escaped NUL
        i += std::strlen(token) - 1;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += c;
  }
  return out;
}

void restore_non_finite(nlohmann::json& value) {
  if (value.is_string()) {
    const auto& s = value.get_ref<const std::string&>();
    if (s.rfind(kMarker, 0) == 0) {
      const auto name = s.substr(kMarker.size());
      const double inf = std::numeric_limits<double>::infinity();
      value =
          name == "nan" ? std::numeric_limits<double>::quiet_NaN() : (name == "-inf" ? -inf : inf);
    }
  } else if (value.is_structured()) {
    for (auto& item : value) restore_non_finite(item);
  }
}

}  // namespace

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
    auto json = nlohmann::json::parse(quote_non_finite(text.str()));
    restore_non_finite(json);
    return json;
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() carries the parser's line and column.
    throw ConfigError(path.string() + ": malformed JSON at byte " + std::to_string(e.byte) + ": " +
                      e.what());
  }
}

}  // namespace ldcp::io
