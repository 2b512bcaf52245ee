#pragma once
// Reading the JSON files of a model folder with errors that name the file and the key.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

namespace ldcp::io {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The deepest nesting of arrays and objects a JSON file may have (model configs nest 3 levels,
// tokenizer.json 4); deeper input is rejected before it is parsed, so that hostile nesting
// exhausts neither the stack nor memory.
inline constexpr int kMaxJsonDepth = 128;

// Parses a JSON file; throws ConfigError naming the file when it is missing or malformed (also
// when it nests deeper than kMaxJsonDepth). Python's NaN, Infinity and -Infinity are read.
nlohmann::json read_json_file(const std::filesystem::path& path);

// The same for text already in memory; `source` names it in the errors.
nlohmann::json parse_json_text(const std::string& text, const std::string& source);

// A JSON value as T, for config keys; throws ConfigError naming `key` for the wrong type.
// Integers must be JSON integers in T's range, or floats with an integral value in it (nlohmann
// alone casts 3.5 to 3 and NaN or 1e300 to whatever the cast gives: undefined behaviour); vectors
// are converted element by element.
template <typename T>
T json_to(const nlohmann::json& value, const std::string& key);

namespace detail {

template <typename T>
struct is_vector : std::false_type {};
template <typename E, typename A>
struct is_vector<std::vector<E, A>> : std::true_type {};

[[noreturn]] inline void wrong_type(const std::string& key, const std::string& why) {
  throw ConfigError("config key \"" + key + "\" has the wrong type: " + why);
}

template <typename T>
T json_to_integer(const nlohmann::json& value, const std::string& key) {
  constexpr double kLow = static_cast<double>(std::numeric_limits<T>::min());
  constexpr double kHigh = static_cast<double>(std::numeric_limits<T>::max()) + 1.0;  // 2^bits
  if (value.is_number_float()) {
    const double d = value.get<double>();
    if (!(d >= kLow && d < kHigh && d == std::trunc(d))) {
      wrong_type(key, value.dump() + " is not an integer in range");
    }
    return static_cast<T>(d);
  }
  if (value.is_number_unsigned()) {
    if (value.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<T>::max())) {
      wrong_type(key, value.dump() + " is out of range");
    }
    return static_cast<T>(value.get<uint64_t>());
  }
  if (value.is_number_integer()) {
    const int64_t v = value.get<int64_t>();
    if (std::is_unsigned_v<T> ? v < 0 : v < static_cast<int64_t>(std::numeric_limits<T>::min())) {
      wrong_type(key, value.dump() + " is out of range");
    }
    if (!std::is_unsigned_v<T> && v > static_cast<int64_t>(std::numeric_limits<T>::max())) {
      wrong_type(key, value.dump() + " is out of range");
    }
    return static_cast<T>(v);
  }
  wrong_type(key, "expected an integer, got " + std::string(value.type_name()));
}

}  // namespace detail

template <typename T>
T json_to(const nlohmann::json& value, const std::string& key) {
  if constexpr (detail::is_vector<T>::value) {
    if (!value.is_array()) {
      detail::wrong_type(key, "expected a list, got " + std::string(value.type_name()));
    }
    T out;
    for (const auto& item : value) out.push_back(json_to<typename T::value_type>(item, key));
    return out;
  } else if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    return detail::json_to_integer<T>(value, key);
  } else {
    try {
      return value.get<T>();
    } catch (const nlohmann::json::exception& e) {
      detail::wrong_type(key, e.what());
    }
  }
}

// Typed lookups for config.json files: `get_or(config, "key", default)` returns the default
// when the key is absent or null; a present value of the wrong type throws ConfigError naming
// the key (callers add the file through ConfigError's message when they catch it).
template <typename T>
T get_or(const nlohmann::json& config, const std::string& key, const T& fallback) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null()) return fallback;
  return json_to<T>(*it, key);
}

template <typename T>
T get_required(const nlohmann::json& config, const std::string& key) {
  auto it = config.find(key);
  if (it == config.end() || it->is_null())
    throw ConfigError("config key \"" + key + "\" is missing");
  return json_to<T>(*it, key);
}

}  // namespace ldcp::io
