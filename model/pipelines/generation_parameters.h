#pragma once
// The "parameters" text of a generated PNG, in AUTOMATIC1111's infotext format (what its PNG
// Info tab, ComfyUI, civitai and most SD tools read):
//
//   <prompt>
//   Negative prompt: <negative prompt>            (only when there is one)
//   Steps: 20, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 512x512, Model hash: ..., ...
//
// A1111's keys where A1111 has the setting, "LDCP ..." keys for what it lacks (the pruning levels,
// the gate scores, the exact sampler name). Values holding a comma, colon, newline or quote are
// written as JSON strings, as A1111's quote(). Pure C++ (no libtorch): a struct in, a string out.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace ldcp::pipelines {

// A LoRA applied to a generation: written as A1111 does, a "<lora:name:weight>" tag after the
// prompt and a "Lora hashes" entry (name: first 10 hex digits of the file's SHA-256).
struct LoraUse {
  std::string name;
  double weight = 1.0;
  std::string hash;  // empty: left out of "Lora hashes"
};

struct GenerationInfo {
  std::string prompt, negative_prompt;
  int64_t steps = 0;
  std::string sampler;  // this project's name (schedulers::sampler_names())
  double guidance_scale = 7.5;
  double guidance_rescale = 0.0;
  double eta = 0.0;
  uint64_t seed = 0;
  int64_t width = 0, height = 0;
  // The request's images share one seed (one generator draws all their latents, as
  // diffusers): image `batch_pos` of `batch_size`.
  int64_t batch_size = 1, batch_pos = 0;
  std::string model_name;
  std::string model_hash;  // A1111's short hash: 10 hex digits (empty: left out)
  // img2img / inpainting: the strength the run used (unset: text-to-image).
  std::optional<double> denoising_strength;
  bool inpainting = false;
  bool a1111_prompt_syntax = false;
  int64_t clip_skip = 0;
  // The pruning level of each U-Net step that ran, and where the gate scores came from.
  std::vector<double> step_levels;
  std::string gate_scores;      // "magnitude", "learned", "random"
  std::string gates_file_hash;  // short hash of the gates file, when one was loaded
  // Filled by the LoRA support (the request's `loras` / `ldcp generate --lora`).
  std::vector<LoraUse> loras;
};

// The infotext of `info`. Every part is valid UTF-8 without control characters other than the
// line breaks between the parts (the prompts' own line breaks are kept, A1111 keeps them too).
std::string format_generation_parameters(const GenerationInfo& info);

// A1111's name of one of this project's samplers ("euler_a" -> "Euler a", "dpmpp_2m_karras" ->
// "DPM++ 2M" with schedule type "Karras"); unknown names are returned as they are.
struct A1111Sampler {
  std::string name;
  std::string schedule_type;  // empty: the sampler's own schedule (A1111 writes nothing)
};
A1111Sampler a1111_sampler(const std::string& sampler);

// A value as A1111's quote() writes it: unchanged unless it holds ',', ':', '\n' or '"', else
// as a JSON string (backslash escapes; non-ASCII kept as UTF-8).
std::string quote_infotext_value(std::string_view value);

// `text` made safe for the infotext: invalid UTF-8 bytes become U+FFFD, "\r\n" and lone '\r'
// become '\n', other control characters (C0 but '\n', DEL, C1) become spaces.
std::string sanitize_infotext(std::string_view text);

// A number as Python's repr() writes a float (7.5, 7.0, 0.35): A1111 writes its floats so.
std::string python_float(double value);

// A1111's short hash of a file: the first 10 hex digits of its SHA-256, read in blocks (a
// multi-GB checkpoint is never held in memory). Throws std::runtime_error naming the file.
std::string short_file_hash(const std::filesystem::path& file);
std::string sha256_file_hex(const std::filesystem::path& file);

}  // namespace ldcp::pipelines
