#include "model/pipelines/generation_parameters.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <utility>

#include <openssl/evp.h>

namespace ldcp::pipelines {
namespace {

// The shortest decimal that reads back as `value` ("0.5", "2", "1e-05").
std::string shortest(double value) {
  std::array<char, 64> buffer{};
  const auto end = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value).ptr;
  return std::string(buffer.data(), end);
}

void append_code_point(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// The code point of the well-formed UTF-8 sequence at text[i] and its length; length 0 for a
// byte that starts no well-formed sequence (overlong forms, surrogates, > U+10FFFF, cut short).
std::pair<uint32_t, size_t> decode_utf8(std::string_view text, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t lead = byte(i);
  if (lead < 0x80) return {lead, 1};
  size_t length = 0;
  uint32_t cp = 0, min = 0;
  if ((lead & 0xE0) == 0xC0) {
    length = 2, cp = lead & 0x1F, min = 0x80;
  } else if ((lead & 0xF0) == 0xE0) {
    length = 3, cp = lead & 0x0F, min = 0x800;
  } else if ((lead & 0xF8) == 0xF0) {
    length = 4, cp = lead & 0x07, min = 0x10000;
  } else {
    return {0, 0};
  }
  if (i + length > text.size()) return {0, 0};
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return {0, 0};
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {0, 0};
  return {cp, length};
}

// One "Key: value" entry; values are quoted as A1111 does.
struct Entries {
  std::string text;
  void add(const std::string& key, const std::string& value) {
    if (!text.empty()) text += ", ";
    text += key + ": " + quote_infotext_value(value);
  }
};

bool any_pruned(const std::vector<double>& levels) {
  return std::any_of(levels.begin(), levels.end(), [](double l) { return l > 0; });
}

// One level when every step ran at it, else the list (the steps that ran, in order).
void add_pruning(const std::vector<double>& levels, Entries& entries) {
  if (!any_pruned(levels)) return;
  const bool constant =
      std::all_of(levels.begin(), levels.end(), [&](double l) { return l == levels.front(); });
  if (constant) {
    entries.add("LDCP pruning", python_float(levels.front()));
  } else {
    std::string list;
    for (double l : levels) list += (list.empty() ? "" : ",") + shortest(l);
    entries.add("LDCP pruning levels", list);
  }
}

std::string strip(const std::string& s) {
  const auto is_space = [](char c) { return c == ' ' || c == '\n' || c == '\t'; };
  size_t begin = 0, end = s.size();
  while (begin < end && is_space(s[begin])) ++begin;
  while (end > begin && is_space(s[end - 1])) --end;
  return s.substr(begin, end - begin);
}

}  // namespace

std::string sanitize_infotext(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    const auto [cp, length] = decode_utf8(text, i);
    if (length == 0) {
      append_code_point(out, 0xFFFD);
      ++i;
      continue;
    }
    if (cp == '\r') {
      out += '\n';
      i += (i + 1 < text.size() && text[i + 1] == '\n') ? 2 : 1;
      continue;
    }
    const bool control = (cp < 0x20 && cp != '\n') || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F);
    if (control) {
      out += ' ';
    } else {
      out.append(text.substr(i, length));
    }
    i += length;
  }
  return out;
}

std::string quote_infotext_value(std::string_view value) {
  if (value.find_first_of(",:\n\"") == std::string_view::npos) return std::string(value);
  // json.dumps(value, ensure_ascii=False): escapes for the quote, the backslash and control
  // characters; everything else (UTF-8 included) as it is.
  std::string out = "\"";
  for (const char c : value) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (static_cast<uint8_t>(c) < 0x20) {
          char escaped[8];
          std::snprintf(escaped, sizeof(escaped), "\\u%04x", static_cast<unsigned>(c));
          out += escaped;
        } else {
          out += c;
        }
    }
  }
  return out + "\"";
}

std::string python_float(double value) {
  if (!std::isfinite(value)) return std::isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf");
  const double magnitude = std::fabs(value);
  if (value != 0 && (magnitude < 1e-4 || magnitude >= 1e16)) {
    std::array<char, 64> buffer{};
    const auto end = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value,
                                   std::chars_format::scientific)
                         .ptr;
    return std::string(buffer.data(), end);
  }
  std::array<char, 64> buffer{};
  const auto end =
      std::to_chars(buffer.data(), buffer.data() + buffer.size(), value, std::chars_format::fixed)
          .ptr;
  std::string text(buffer.data(), end);
  if (text.find('.') == std::string::npos) text += ".0";
  return text;
}

A1111Sampler a1111_sampler(const std::string& sampler) {
  // diffusers' PNDM with skip_prk_steps (SD1.5's scheduler config) is PLMS; the Karras variant
  // is A1111's "DPM++ 2M" with the Karras schedule type (A1111 1.9 and later).
  static const std::map<std::string, A1111Sampler> kNames{
      {"pndm", {"PLMS", ""}},         {"ddim", {"DDIM", ""}},
      {"euler", {"Euler", ""}},       {"euler_a", {"Euler a", ""}},
      {"dpmpp_2m", {"DPM++ 2M", ""}}, {"dpmpp_2m_karras", {"DPM++ 2M", "Karras"}}};
  const auto it = kNames.find(sampler);
  return it == kNames.end() ? A1111Sampler{sampler, ""} : it->second;
}

std::string format_generation_parameters(const GenerationInfo& info) {
  std::string prompt = sanitize_infotext(info.prompt);
  // A1111 keeps a LoRA as a tag in the prompt: the prompt then reads back with it applied.
  for (const auto& lora : info.loras) {
    prompt += " <lora:" + sanitize_infotext(lora.name) + ":" + shortest(lora.weight) + ">";
  }
  Entries e;
  const auto sampler = a1111_sampler(info.sampler);
  e.add("Steps", std::to_string(info.steps));
  e.add("Sampler", sampler.name);
  if (!sampler.schedule_type.empty()) e.add("Schedule type", sampler.schedule_type);
  e.add("CFG scale", python_float(info.guidance_scale));
  e.add("Seed", std::to_string(info.seed));
  e.add("Size", std::to_string(info.width) + "x" + std::to_string(info.height));
  if (!info.model_hash.empty()) e.add("Model hash", sanitize_infotext(info.model_hash));
  if (!info.model_name.empty()) e.add("Model", sanitize_infotext(info.model_name));
  if (info.batch_size > 1) {
    e.add("Batch size", std::to_string(info.batch_size));
    e.add("Batch pos", std::to_string(info.batch_pos));
  }
  if (info.denoising_strength) e.add("Denoising strength", python_float(*info.denoising_strength));
  if (info.clip_skip > 1) e.add("Clip skip", std::to_string(info.clip_skip));
  if (info.sampler == "ddim" && info.eta != 0) e.add("Eta DDIM", python_float(info.eta));
  std::string lora_hashes;
  for (const auto& lora : info.loras) {
    if (lora.hash.empty()) continue;
    lora_hashes += (lora_hashes.empty() ? "" : ", ") + sanitize_infotext(lora.name) + ": " +
                   sanitize_infotext(lora.hash);
  }
  if (!lora_hashes.empty()) e.add("Lora hashes", lora_hashes);
  // What A1111 has no key for, and the exact sampler (A1111's names are the nearest ones).
  e.add("LDCP sampler", sanitize_infotext(info.sampler));
  if (info.inpainting) e.add("LDCP mode", "inpaint");
  if (info.a1111_prompt_syntax) e.add("LDCP prompt syntax", "a1111");
  if (info.guidance_rescale != 0)
    e.add("LDCP guidance rescale", python_float(info.guidance_rescale));
  add_pruning(info.step_levels, e);
  if (any_pruned(info.step_levels) && !info.gate_scores.empty()) {
    e.add("LDCP gate scores", sanitize_infotext(info.gate_scores));
    if (!info.gates_file_hash.empty()) {
      e.add("LDCP gates hash", sanitize_infotext(info.gates_file_hash));
    }
  }
  std::string text = prompt;
  const std::string negative = sanitize_infotext(info.negative_prompt);
  if (!negative.empty()) text += "\nNegative prompt: " + negative;
  // As A1111's create_infotext: the whole text stripped (an empty prompt leaves no blank line).
  return strip(text + "\n" + e.text);
}

std::string sha256_file_hex(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + file.string() + " to hash it");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> context(EVP_MD_CTX_new(),
                                                                  EVP_MD_CTX_free);
  if (!context || EVP_DigestInit_ex(context.get(), EVP_sha256(), nullptr) != 1) {
    throw std::runtime_error("SHA-256 is not available (OpenSSL)");
  }
  std::vector<char> block(1 << 20);
  while (in) {
    in.read(block.data(), static_cast<std::streamsize>(block.size()));
    const auto got = in.gcount();
    if (got > 0 && EVP_DigestUpdate(context.get(), block.data(), static_cast<size_t>(got)) != 1) {
      throw std::runtime_error("hashing " + file.string() + " failed");
    }
  }
  if (!in.eof()) throw std::runtime_error("cannot read " + file.string() + " to hash it");
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(context.get(), digest, &length) != 1) {
    throw std::runtime_error("hashing " + file.string() + " failed");
  }
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) {
    char two[3];
    std::snprintf(two, sizeof(two), "%02x", digest[i]);
    hex += two;
  }
  return hex;
}

std::string short_file_hash(const std::filesystem::path& file) {
  return sha256_file_hex(file).substr(0, 10);
}

}  // namespace ldcp::pipelines
