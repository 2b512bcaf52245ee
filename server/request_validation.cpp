#include "server/request_validation.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

#include <google/protobuf/descriptor.h>
#include <google/protobuf/stubs/logging.h>
#include <google/protobuf/unknown_field_set.h>

#include "server/config.h"

namespace ldcp::server {

RequestLimits RequestLimits::from(const ServerConfig& c, int64_t native_resolution) {
  RequestLimits l;
  l.min_size = c.min_size;
  l.max_size = c.max_size;
  l.default_size = c.default_size > 0 ? c.default_size : native_resolution;
  l.max_steps = c.max_steps;
  l.default_steps = c.default_steps;
  l.max_guidance = c.max_guidance;
  l.max_images = c.max_images;
  l.max_prompt_chars = c.max_prompt_chars;
  l.default_sampler = c.default_sampler;
  l.max_level = c.max_level;
  l.max_request_id_chars = c.max_request_id_bytes;
  l.max_work = c.max_request_work;
  l.max_receive_bytes = c.max_receive_bytes;
  l.max_deadline_s = c.max_deadline_s;
  l.max_loras = c.lora_dir.empty() ? 0 : c.max_loras;
  return l;
}

namespace {

std::string fmt_num(double v) {
  std::ostringstream s;
  s << v;
  return s.str();
}

// A LoRA name is a file stem in --lora-dir: letters, digits, ".", "_", "-"; no leading "." and
// no "..", so that it never leaves the directory (no separators) nor names a hidden file.
bool plain_file_stem(const std::string& name) {
  if (name.empty() || name.size() > 128 || name.front() == '.') return false;
  if (name.find("..") != std::string::npos) return false;
  for (const char c : name) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string validate_loras(const v1::GenerateRequest& r, const RequestLimits& lim,
                           std::vector<lora::LoraSpec>& out) {
  if (r.loras_size() > 0 && lim.max_loras == 0) {
    return "loras: this server has no LoRAs (it was started without --lora-dir)";
  }
  if (r.loras_size() > lim.max_loras) {
    return "loras: at most " + std::to_string(lim.max_loras) + " per request (--max-loras), got " +
           std::to_string(r.loras_size());
  }
  for (int i = 0; i < r.loras_size(); ++i) {
    const auto& l = r.loras(i);
    const std::string field = "loras[" + std::to_string(i) + "].";
    if (!plain_file_stem(l.name())) {
      return field + "name: must be a file stem in the server's LoRA directory (1-128 letters, " +
             "digits, '.', '_', '-'; no leading '.', no '..'), got " + quote_prefix(l.name());
    }
    const double w = l.has_weight() ? l.weight() : 1.0;
    if (!std::isfinite(w) || std::abs(w) > lora::kMaxLoraWeight) {
      return field + "weight: must be a finite number in [-" + fmt_num(lora::kMaxLoraWeight) +
             ", " + fmt_num(lora::kMaxLoraWeight) + "], got " + fmt_num(w);
    }
    out.push_back({l.name(), w});
  }
  return {};
}

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : ", ") + i;
  return out;
}

bool is_level(double l) { return std::isfinite(l) && l >= 0.0 && l < 1.0; }

// The length of the well-formed UTF-8 sequence at s[i], or 0 when it is not one; `cp` gets the
// code point.
size_t utf8_char(std::string_view s, size_t i, uint32_t& cp) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  if (c < 0x80) {
    cp = c;
    return 1;
  }
  size_t n = 0;
  uint32_t min = 0;
  if ((c & 0xE0) == 0xC0) {
    n = 2, cp = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3, cp = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4, cp = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

bool is_control(uint32_t cp) { return cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F); }

}  // namespace

bool is_valid_utf8(std::string_view s) {
  uint32_t cp = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_char(s, i, cp);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

bool has_control_chars(std::string_view s) {
  uint32_t cp = 0;
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_char(s, i, cp);
    if (n == 0) {
      ++i;  // an invalid byte is not a character; is_valid_utf8 reports it
      continue;
    }
    if (is_control(cp)) return true;
    i += n;
  }
  return false;
}

std::string quote_prefix(std::string_view s, size_t max_bytes) {
  std::string out = "\"";
  uint32_t cp = 0;
  size_t i = 0;
  char esc[16];
  while (i < s.size()) {
    size_t n = utf8_char(s, i, cp);
    if (i + std::max<size_t>(n, 1) > max_bytes) break;
    if (n == 0) {
      std::snprintf(esc, sizeof esc, "\\x%02x", static_cast<unsigned char>(s[i]));
      out += esc;
      n = 1;
    } else if (cp == '"' || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else if (cp == '\n') {
      out += "\\n";
    } else if (cp == '\t') {
      out += "\\t";
    } else if (cp == '\r') {
      out += "\\r";
    } else if (is_control(cp)) {
      std::snprintf(esc, sizeof esc, "\\u%04x", static_cast<unsigned>(cp));
      out += esc;
    } else {
      out.append(s.substr(i, n));
    }
    i += n;
  }
  if (i < s.size()) return out + "...\" (" + std::to_string(s.size()) + " bytes)";
  return out + "\"";
}

pipelines::ImageLimits request_image_limits(const RequestLimits& lim) {
  pipelines::ImageLimits l;
  l.max_width = l.max_height = static_cast<uint32_t>(std::max<int64_t>(lim.max_size, 1));
  l.max_pixels = static_cast<uint64_t>(lim.max_size) * static_cast<uint64_t>(lim.max_size);
  l.max_file_bytes = static_cast<uint64_t>(std::max<int64_t>(lim.max_receive_bytes, 0));
  return l;
}

namespace {

// init_image and mask_image: decoded (bounded) into `out`, then held to the request's size
// rules. Errors start with the field's name; image bytes are never quoted.
std::string decode_request_image(const std::string& bytes, const char* field,
                                 const RequestLimits& lim, pipelines::RgbImage& out) {
  if (!pipelines::is_png(bytes) && !pipelines::is_jpeg(bytes)) {
    return std::string(field) + ": must be a PNG or JPEG file's bytes (" +
           std::to_string(bytes.size()) + " bytes that are neither)";
  }
  try {
    out = pipelines::decode_image(bytes, field, request_image_limits(lim));
  } catch (const pipelines::ImageError& e) {
    return std::string(e.what()) + " (must be a whole PNG or JPEG file of at most " +
           std::to_string(lim.max_size) + "x" + std::to_string(lim.max_size) + " pixels)";
  }
  if (out.width % 8 != 0 || out.height % 8 != 0 || out.width < lim.min_size ||
      out.height < lim.min_size) {
    return std::string(field) + ": the image is " + std::to_string(out.width) + "x" +
           std::to_string(out.height) + "; each side must be a multiple of 8 in [" +
           std::to_string(lim.min_size) + ", " + std::to_string(lim.max_size) +
           "] (images are not resized)";
  }
  return {};
}

// The image fields, before width and height: a request with an init image and width or height
// 0 takes the image's size.
std::string validate_images(const v1::GenerateRequest& r, const RequestLimits& lim,
                            ValidatedRequest& p) {
  if (r.has_strength() && r.init_image().empty()) return "strength: only allowed with init_image";
  if (!r.mask_image().empty() && r.init_image().empty()) {
    return "mask_image: only allowed with init_image (inpainting repaints an init image)";
  }
  if (r.init_image().empty()) return {};
  if (r.has_strength()) {
    const double s = r.strength();
    if (!(std::isfinite(s) && s > 0.0 && s <= 1.0)) {
      return "strength: must be in (0, 1], got " + fmt_num(s);
    }
    p.strength = s;
  }
  if (auto e = decode_request_image(r.init_image(), "init_image", lim, p.init_image); !e.empty()) {
    return e;
  }
  if (!r.mask_image().empty()) {
    if (auto e = decode_request_image(r.mask_image(), "mask_image", lim, p.mask_image);
        !e.empty()) {
      return e;
    }
    if (p.mask_image.width != p.init_image.width || p.mask_image.height != p.init_image.height) {
      return "mask_image: the mask is " + std::to_string(p.mask_image.width) + "x" +
             std::to_string(p.mask_image.height) + ", init_image " +
             std::to_string(p.init_image.width) + "x" + std::to_string(p.init_image.height) +
             " (must be the same size)";
    }
  }
  const uint32_t sizes[2] = {p.init_image.width, p.init_image.height};
  const uint32_t asked[2] = {r.width(), r.height()};
  const char* names[2] = {"width", "height"};
  for (int i = 0; i < 2; ++i) {
    if (asked[i] != 0 && asked[i] != sizes[i]) {
      return "init_image: the image is " + std::to_string(sizes[0]) + "x" +
             std::to_string(sizes[1]) + " but " + names[i] + " is " + std::to_string(asked[i]) +
             " (must be 0 or the image's; images are not resized)";
    }
  }
  return {};
}

}  // namespace

int64_t request_work(int64_t width, int64_t height, int64_t images, int64_t steps, bool guided) {
  // Every factor is bounded by its own option (sizes <= 16384, images <= 64, steps <= 1000), so
  // the product stays far below 2^63.
  return width * height * images * steps * (guided ? 2 : 1);
}

AskedShape asked_shape(const v1::GenerateRequest& r, const RequestLimits& lim) {
  AskedShape a;
  // The default size of the model it named (the first model's for an unknown one).
  int64_t size = lim.default_size;
  size_t model = 0;
  if (!lim.models.empty() && resolve_model(r, lim, model).empty()) {
    size = lim.models[model].default_size;
  }
  a.width = r.width() == 0 ? size : static_cast<int64_t>(r.width());
  a.height = r.height() == 0 ? size : static_cast<int64_t>(r.height());
  a.steps = r.steps() == 0 ? lim.default_steps : static_cast<int64_t>(r.steps());
  a.images = r.num_images() == 0 ? 1 : static_cast<int64_t>(r.num_images());
  return a;
}

bool parse_request(std::string_view bytes, v1::GenerateRequest& out, std::string& error) {
  static constexpr const char* kPrefix = "request is not a valid ldcp.v1.GenerateRequest: ";
  {
    // protobuf logs an ERROR line of its own for a string that is not UTF-8; this reply and the
    // request's log line say it instead.
    google::protobuf::LogSilencer quiet;
    if (out.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return true;
  }
  google::protobuf::UnknownFieldSet fields;
  if (!fields.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    error = std::string(kPrefix) + "malformed protobuf wire format (" +
            std::to_string(bytes.size()) + " bytes)";
    return false;
  }
  const auto* descriptor = v1::GenerateRequest::descriptor();
  for (int i = 0; i < fields.field_count(); ++i) {
    const auto& f = fields.field(i);
    const auto* field = descriptor->FindFieldByNumber(f.number());
    if (!field || f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    if (field->type() == google::protobuf::FieldDescriptor::TYPE_STRING &&
        !is_valid_utf8(f.length_delimited())) {
      error = std::string(kPrefix) + "field " + field->name() + " is not valid UTF-8";
      return false;
    }
    if (field->type() == google::protobuf::FieldDescriptor::TYPE_MESSAGE) {
      error = std::string(kPrefix) + "field " + field->name() + " is not a valid " +
              field->message_type()->full_name();
      return false;
    }
  }
  error = std::string(kPrefix) + "the message does not parse";
  return false;
}

std::string resolve_model(const v1::GenerateRequest& r, const RequestLimits& lim, size_t& index) {
  index = 0;
  if (r.model().empty()) return {};
  for (size_t i = 0; i < lim.models.size(); ++i) {
    if (lim.models[i].name == r.model()) {
      index = i;
      return {};
    }
  }
  std::vector<std::string> names;
  for (const auto& m : lim.models) names.push_back(m.name);
  return "model: unknown model " + quote_prefix(r.model()) +
         (names.empty() ? std::string(" (this server has one unnamed model: leave model empty)")
                        : " (this server has: " + join(names) + "; empty: " + names.front() + ")");
}

std::string validate_request(const v1::GenerateRequest& r, const RequestLimits& server_limits,
                             uint64_t random_seed, ValidatedRequest& p) {
  if (std::string error = resolve_model(r, server_limits, p.model); !error.empty()) return error;
  // The defaults of the model asked for.
  RequestLimits model_limits;
  const bool per_model = !server_limits.models.empty();
  if (per_model) {
    model_limits = server_limits;
    model_limits.default_size = server_limits.models[p.model].default_size;
  }
  const RequestLimits& lim = per_model ? model_limits : server_limits;
  if (static_cast<int64_t>(r.request_id().size()) > lim.max_request_id_chars) {
    return "request_id: at most " + std::to_string(lim.max_request_id_chars) +
           " bytes (--max-request-id-bytes), got " + std::to_string(r.request_id().size());
  }
  if (!is_valid_utf8(r.request_id()) || has_control_chars(r.request_id())) {
    return "request_id: control characters (U+0000..U+001F, U+007F..U+009F) and invalid UTF-8 "
           "are not allowed";
  }
  if (static_cast<int64_t>(r.prompt().size()) > lim.max_prompt_chars) {
    return "prompt: at most " + std::to_string(lim.max_prompt_chars) + " bytes, got " +
           std::to_string(r.prompt().size());
  }
  if (static_cast<int64_t>(r.negative_prompt().size()) > lim.max_prompt_chars) {
    return "negative_prompt: at most " + std::to_string(lim.max_prompt_chars) + " bytes, got " +
           std::to_string(r.negative_prompt().size());
  }
  for (auto [name, text] :
       {std::pair{"prompt", &r.prompt()}, std::pair{"negative_prompt", &r.negative_prompt()},
        std::pair{"sampler", &r.sampler()}}) {
    if (!is_valid_utf8(*text)) return std::string(name) + ": must be valid UTF-8";
  }
  p.prompt = r.prompt();
  p.negative_prompt = r.negative_prompt();
  if (auto error = validate_images(r, lim, p); !error.empty()) return error;
  const bool has_image = !p.init_image.pixels.empty();
  for (auto [name, value, out, image_size] :
       {std::tuple{"width", r.width(), &p.width, p.init_image.width},
        std::tuple{"height", r.height(), &p.height, p.init_image.height}}) {
    const int64_t v = has_image    ? static_cast<int64_t>(image_size)
                      : value == 0 ? lim.default_size
                                   : static_cast<int64_t>(value);
    if (v % 8 != 0 || v < lim.min_size || v > lim.max_size) {
      return std::string(name) + ": must be a multiple of 8 in [" + std::to_string(lim.min_size) +
             ", " + std::to_string(lim.max_size) + "] (0: default " +
             std::to_string(lim.default_size) + "), got " + std::to_string(value);
    }
    *out = v;
  }
  const int64_t steps = r.steps() == 0 ? lim.default_steps : static_cast<int64_t>(r.steps());
  if (steps < 1 || steps > lim.max_steps) {
    return "steps: must be in [1, " + std::to_string(lim.max_steps) + "] (0: default " +
           std::to_string(lim.default_steps) + "), got " + std::to_string(r.steps());
  }
  p.steps = steps;
  if (r.has_guidance_scale()) {
    const double g = r.guidance_scale();
    if (!std::isfinite(g) || g < 0.0 || g > lim.max_guidance) {
      return "guidance_scale: must be a finite number in [0, " + fmt_num(lim.max_guidance) +
             "], got " + fmt_num(g);
    }
    p.guidance_scale = g;
  } else {
    p.guidance_scale = 7.5;
  }
  if (!std::isfinite(r.guidance_rescale()) || r.guidance_rescale() < 0.0 ||
      r.guidance_rescale() > 1.0) {
    return "guidance_rescale: must be in [0, 1], got " + fmt_num(r.guidance_rescale());
  }
  p.guidance_rescale = r.guidance_rescale();
  switch (r.prompt_syntax()) {
    case v1::PROMPT_SYNTAX_UNSPECIFIED:
    case v1::PROMPT_SYNTAX_PLAIN:
      p.a1111_syntax = false;
      break;
    case v1::PROMPT_SYNTAX_A1111:
      p.a1111_syntax = true;
      break;
    default:
      return "prompt_syntax: must be PLAIN or A1111, got " +
             std::to_string(static_cast<int>(r.prompt_syntax()));
  }
  if (static_cast<int64_t>(r.clip_skip()) > lim.text_encoder_layers) {
    return "clip_skip: must be in [0, " + std::to_string(lim.text_encoder_layers) +
           "] (the text encoder's layers), got " + std::to_string(r.clip_skip());
  }
  p.clip_skip = static_cast<int64_t>(r.clip_skip());
  if (std::string error = validate_loras(r, lim, p.loras); !error.empty()) return error;
  p.sampler = r.sampler().empty() ? lim.default_sampler : r.sampler();
  if (std::find(lim.samplers.begin(), lim.samplers.end(), p.sampler) == lim.samplers.end()) {
    return "sampler: must be one of " + join(lim.samplers) + ", got " + quote_prefix(p.sampler);
  }
  if (!std::isfinite(r.eta()) || r.eta() < 0.0 || r.eta() > 1.0) {
    return "eta: must be in [0, 1], got " + fmt_num(r.eta());
  }
  if (r.eta() != 0.0 && p.sampler != "ddim") {
    return "eta: only the ddim sampler takes eta (must be 0 for " + p.sampler + ")";
  }
  p.eta = r.eta();
  p.seed = r.has_seed() ? r.seed() : random_seed;
  const int64_t images = r.num_images() == 0 ? 1 : static_cast<int64_t>(r.num_images());
  if (images < 1 || images > lim.max_images) {
    return "num_images: must be in [1, " + std::to_string(lim.max_images) + "], got " +
           std::to_string(r.num_images());
  }
  p.images = images;
  p.work = request_work(p.width, p.height, images, steps, p.guidance_scale > 1.0);
  if (lim.max_work > 0 && p.work > lim.max_work) {
    return "work: " + std::to_string(p.width) + "x" + std::to_string(p.height) + " x " +
           std::to_string(images) + " image(s) x " + std::to_string(steps) + " steps" +
           (p.guidance_scale > 1.0 ? " x 2 (guided)" : "") + " = " + std::to_string(p.work) +
           " pixel-steps, at most " + std::to_string(lim.max_work) +
           " allowed (--max-request-work)";
  }

  const auto& pr = r.pruning();
  if (pr.has_max_level() && !is_level(pr.max_level())) {
    return "pruning.max_level: must be in [0, 1), got " + fmt_num(pr.max_level());
  }
  p.has_max_level = pr.has_max_level();
  p.max_level = pr.has_max_level() ? pr.max_level() : lim.max_level;
  if (pr.has_flops_budget() && pr.mode() != v1::PRUNING_MODE_FIXED) {
    return "pruning.flops_budget: only allowed with mode FIXED";
  }
  switch (pr.mode()) {
    case v1::PRUNING_MODE_UNSPECIFIED:
    case v1::PRUNING_MODE_AUTO:
      if (pr.level() != 0.0 || pr.per_step_levels_size() > 0) {
        return "pruning.level / pruning.per_step_levels: only allowed with mode FIXED (AUTO "
               "takes max_level)";
      }
      p.pruning = ValidatedRequest::Pruning::kAuto;
      break;
    case v1::PRUNING_MODE_OFF:
      if (pr.level() != 0.0 || pr.per_step_levels_size() > 0) {
        return "pruning.level / pruning.per_step_levels: not allowed with mode OFF";
      }
      p.pruning = ValidatedRequest::Pruning::kOff;
      break;
    case v1::PRUNING_MODE_FIXED: {
      double highest = 0.0;
      if (pr.has_flops_budget()) {
        const double budget = pr.flops_budget();
        if (pr.level() != 0.0 || pr.per_step_levels_size() > 0) {
          return "pruning.flops_budget: not allowed with pruning.level or pruning.per_step_levels";
        }
        if (!(std::isfinite(budget) && budget > 0.0 && budget <= 1.0)) {
          return "pruning.flops_budget: must be a FLOPs fraction in (0, 1], got " + fmt_num(budget);
        }
        p.pruning = ValidatedRequest::Pruning::kFixedBudget;
        p.flops_budget = budget;
      } else if (pr.per_step_levels_size() > 0) {
        if (pr.per_step_levels_size() > steps) {
          return "pruning.per_step_levels: at most one level per step (" + std::to_string(steps) +
                 "), got " + std::to_string(pr.per_step_levels_size());
        }
        for (int i = 0; i < pr.per_step_levels_size(); ++i) {
          if (!is_level(pr.per_step_levels(i))) {
            return "pruning.per_step_levels[" + std::to_string(i) + "]: must be in [0, 1), got " +
                   fmt_num(pr.per_step_levels(i));
          }
          p.step_levels.push_back(pr.per_step_levels(i));
          highest = std::max(highest, pr.per_step_levels(i));
        }
        p.pruning = ValidatedRequest::Pruning::kFixedSteps;
      } else {
        if (!is_level(pr.level())) {
          return "pruning.level: must be in [0, 1), got " + fmt_num(pr.level());
        }
        p.pruning = ValidatedRequest::Pruning::kFixedLevel;
        p.level = pr.level();
        highest = pr.level();
      }
      if (pr.has_max_level() && highest > pr.max_level()) {
        return "pruning.max_level: the FIXED schedule's highest level " + fmt_num(highest) +
               " exceeds max_level " + fmt_num(pr.max_level());
      }
      break;
    }
    default:
      return "pruning.mode: must be AUTO, OFF or FIXED, got " + std::to_string(pr.mode());
  }
  if (r.output_format() != v1::OUTPUT_FORMAT_UNSPECIFIED &&
      r.output_format() != v1::OUTPUT_FORMAT_PNG) {
    return "output_format: must be PNG, got " + std::to_string(r.output_format());
  }
  if (r.priority() < -1000 || r.priority() > 1000) {
    return "priority: must be in [-1000, 1000], got " + std::to_string(r.priority());
  }
  if (r.preview_every() > static_cast<uint32_t>(steps)) {
    return "preview_every: must be in [0, steps=" + std::to_string(steps) + "], got " +
           std::to_string(r.preview_every());
  }
  p.priority = r.priority();
  p.preview_every = r.preview_every();
  return {};
}

}  // namespace ldcp::server
