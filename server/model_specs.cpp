#include "server/model_specs.h"

#include <filesystem>
#include <stdexcept>

namespace ldcp::server {
namespace {

// `s` quoted for a start-up error, at most 80 characters.
std::string quote80(std::string_view s) {
  std::string out = "'" + std::string(s.substr(0, 80)) + "'";
  if (s.size() > 80) out += "...";
  return out;
}

// "NAME=VALUE" -> (NAME, VALUE) when the text before the first "=" is no path (holds no "/");
// otherwise ("", text): a bare path, which may itself hold a "=".
std::pair<std::string, std::string> split_named(const std::string& text) {
  const auto eq = text.find('=');
  if (eq == std::string::npos || text.substr(0, eq).find('/') != std::string::npos) {
    return {"", text};
  }
  return {text.substr(0, eq), text.substr(eq + 1)};
}

}  // namespace

bool valid_model_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxModelNameChars || name.front() == '.') return false;
  if (name == kNoModelLabel) return false;
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string model_name_from_path(const std::string& path) {
  auto p = std::filesystem::absolute(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  return p.filename().string();
}

std::vector<ModelSpec> parse_model_specs(const std::vector<std::string>& models,
                                         const std::vector<std::string>& gates) {
  if (models.empty()) throw std::invalid_argument("--model: at least one model is required");
  if (models.size() > kMaxModels) {
    throw std::invalid_argument("--model: at most " + std::to_string(kMaxModels) + " models, got " +
                                std::to_string(models.size()));
  }
  const std::string rules = " (1-" + std::to_string(kMaxModelNameChars) +
                            " letters, digits, '.', '_', '-'; no leading '.'; not 'none')";
  std::vector<ModelSpec> out;
  for (const auto& text : models) {
    auto [name, path] = split_named(text);
    ModelSpec spec;
    spec.named = !name.empty() || text.find('=') == 0;
    if (spec.named && !valid_model_name(name)) {
      throw std::invalid_argument("--model NAME=PATH: bad model name " + quote80(name) + rules);
    }
    if (path.empty()) throw std::invalid_argument("--model " + quote80(text) + ": no path");
    spec.path = path;
    spec.name = spec.named ? name : model_name_from_path(path);
    if (models.size() > 1 && !spec.named) {
      throw std::invalid_argument("--model " + quote80(text) +
                                  ": with several models each is NAME=PATH");
    }
    for (const auto& other : out) {
      if (other.name == spec.name) {
        throw std::invalid_argument("--model: the name " + quote80(spec.name) + " appears twice");
      }
    }
    out.push_back(std::move(spec));
  }
  for (const auto& text : gates) {
    auto [name, file] = split_named(text);
    ModelSpec* target = nullptr;
    if (name.empty() && text.find('=') != 0) {
      if (gates.size() > 1) {
        throw std::invalid_argument("--gates " + quote80(text) +
                                    ": with several gates files each is NAME=FILE");
      }
      target = &out.front();
    } else {
      for (auto& spec : out) {
        if (spec.name == name) target = &spec;
      }
      if (!target) {
        throw std::invalid_argument("--gates NAME=FILE: no model named " + quote80(name) +
                                    " (--model NAME=PATH)");
      }
    }
    if (file.empty()) throw std::invalid_argument("--gates " + quote80(text) + ": no file");
    if (!target->gates.empty()) {
      throw std::invalid_argument("--gates: two gates files for the model " +
                                  quote80(target->name));
    }
    target->gates = file;
  }
  return out;
}

}  // namespace ldcp::server
