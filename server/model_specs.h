#pragma once
// Which models ldcp-server serves: its --model and --gates options parsed into one spec per
// model (no libtorch; unit-tested in test_server_policy).
//
//   --model PATH                 one model, named after the folder or file (its last path
//                                component), as before several models were possible
//   --model NAME=PATH (repeat)   several models; requests pick one by NAME, the first is the
//                                default
//   --gates FILE                 the gates of the first model (one model: of that model)
//   --gates NAME=FILE (repeat)   the gates of model NAME
//
// NAME: 1 to 64 of [A-Za-z0-9._-], not starting with "." (a Prometheus label value and a
// request field, so bounded and plain), unique; "none" is reserved (the metrics' label of
// requests rejected before their model was known).

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace ldcp::server {

inline constexpr size_t kMaxModelNameChars = 64;
inline constexpr size_t kMaxModels = 16;
// The `model` label of requests rejected before their model was resolved.
inline constexpr const char* kNoModelLabel = "none";

struct ModelSpec {
  std::string name;
  std::string path;    // a diffusers folder or a single-file checkpoint
  std::string gates;   // empty: no gates file
  bool named = false;  // NAME=PATH (false: the name comes from the path)
};

// Whether `name` may name a model (the rules above, "none" excepted).
bool valid_model_name(std::string_view name);

// The name a bare PATH gets: its last component (a folder's name, a single file's name).
std::string model_name_from_path(const std::string& path);

// Parses the options. Throws std::invalid_argument naming the option and the bad value (quoted
// short) for: no model, a bad or repeated name, NAME=PATH mixed with a bare PATH among several
// models, more than kMaxModels, gates for an unknown model or given twice.
std::vector<ModelSpec> parse_model_specs(const std::vector<std::string>& models,
                                         const std::vector<std::string>& gates);

}  // namespace ldcp::server
