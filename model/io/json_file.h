#pragma once
// Reading the JSON files of a model folder with errors that name the file and the key.

#include <filesystem>
#include <stdexcept>
#include <string>

#include <nlohmann/json.hpp>

namespace ldcp::io {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Parses a JSON file; throws ConfigError naming the file when it is missing or malformed.
nlohmann::json read_json_file(const std::filesystem::path& path);

// Typed lookups for config.json files: `get_or(config, "key", default)` returns the default
// when the key is absent or null; a present value of the wrong type throws ConfigError naming
// the key (callers add the file through ConfigError's message when they catch it).
template <typename T>
T get_or(const nlohmann::json& config, const std::string& key, const T& fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError("config key \"" + key + "\" has the wrong type: " + e.what());
  }
}

template <typename T>
T get_required(const nlohmann::json& config, const std::string& key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null())
    throw ConfigError("config key \"" + key + "\" is missing");
  try {
    return it->get<T>();
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError("config key \"" + key + "\" has the wrong type: " + e.what());
  }
}

}  // namespace ldcp::io
