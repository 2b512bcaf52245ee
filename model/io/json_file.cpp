#include "model/io/json_file.h"

#include <cstring>
#include <fstream>
#include <limits>
#include <sstream>
#include <system_error>
#include <vector>

namespace ldcp::io {
namespace {

// Python's json module writes the non-standard tokens NaN, Infinity and -Infinity (diffusers'
// DPMSolverMultistepScheduler saves lambda_min_clipped = -inf), which JSON parsers reject. Outside
// strings they become marker strings before parsing, and doubles again after.
// The marker begins with a NUL, which no config text contains.
const std::string kMarker = std::string(1, '\0') + "ldcp-non-finite:";

struct PreparedText {
  std::string text;
  bool has_markers = false;
};

// Quotes the non-finite tokens and checks the nesting depth, both outside strings, in one pass.
PreparedText prepare_text(const std::string& text, const std::string& source) {
  static const std::pair<const char*, const char*> tokens[] = {
      {"-Infinity", "-inf"}, {"Infinity", "inf"}, {"NaN", "nan"}};
  PreparedText out;
  out.text.reserve(text.size());
  bool in_string = false;
  int depth = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      out.text += c;
      if (c == '\\' && i + 1 < text.size()) {
        out.text += text[++i];
      } else if (c == '"') {
        in_string = false;
      }
      continue;
    }
    if (c == '"') in_string = true;
    if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) {
        throw ConfigError(source + ": JSON nests deeper than " + std::to_string(kMaxJsonDepth) +
                          " levels (at byte " + std::to_string(i) + ")");
      }
    } else if (c == ']' || c == '}') {
      --depth;  // unbalanced text is the parser's to reject
    }
    bool replaced = false;
    for (const auto& [token, name] : tokens) {
      if (text.compare(i, std::strlen(token), token) == 0) {
        out.text += std::string("\"\\u0000") + kMarker.substr(1) + name + "\"";  // JSON-escaped NUL
        i += std::strlen(token) - 1;
        replaced = true;
        out.has_markers = true;
        break;
      }
    }
    if (!replaced) out.text += c;
  }
  return out;
}

// Marker strings back to doubles; iterative (an explicit stack), whatever the nesting.
void restore_non_finite(nlohmann::json& root) {
  std::vector<nlohmann::json*> pending{&root};
  while (!pending.empty()) {
    nlohmann::json& value = *pending.back();
    pending.pop_back();
    if (value.is_string()) {
      const auto& s = value.get_ref<const std::string&>();
      if (s.rfind(kMarker, 0) == 0) {
        const auto name = s.substr(kMarker.size());
        const double inf = std::numeric_limits<double>::infinity();
        value = name == "nan" ? std::numeric_limits<double>::quiet_NaN()
                              : (name == "-inf" ? -inf : inf);
      }
    } else if (value.is_structured()) {
      for (auto& item : value) pending.push_back(&item);
    }
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
  return parse_json_text(text.str(), path.string());
}

nlohmann::json parse_json_text(const std::string& text, const std::string& source) {
  const auto prepared = prepare_text(text, source);
  try {
    auto json = nlohmann::json::parse(prepared.text);
    if (prepared.has_markers) restore_non_finite(json);
    return json;
  } catch (const nlohmann::json::parse_error& e) {
    // e.what() carries the parser's line and column.
    throw ConfigError(source + ": malformed JSON at byte " + std::to_string(e.byte) + ": " +
                      e.what());
  } catch (const nlohmann::json::exception& e) {
    // out_of_range: a number beyond a double ("1E400").
    throw ConfigError(source + ": malformed JSON: " + e.what());
  }
}

}  // namespace ldcp::io
