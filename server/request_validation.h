#pragma once
// Validation of ldcp.v1.GenerateRequest: parsing the bytes, every field's range, the bound on a
// request's total work, and what of a request may be quoted in a reply or a log line. No
// libtorch and no gRPC server code: the service (service.cpp) and the request fuzzer link it
// alone (with ldcp_proto).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "ldcp/v1/ldcp.pb.h"
#include "model/lora/lora_spec.h"
#include "model/pipelines/image_codec.h"

namespace ldcp::server {

struct ServerConfig;

// 512x512 pixels x 1 image x 50 steps x 2 (guided): the work of a default SD1.5 request.
inline constexpr int64_t kDefaultRequestWork = int64_t{512} * 512 * 50 * 2;

struct RequestLimits {
  int64_t min_size = 64, max_size = 1024, default_size = 512;
  int64_t max_steps = 150, default_steps = 30;
  double max_guidance = 50.0;
  int64_t max_images = 4;
  int64_t max_prompt_chars = 2000;
  int64_t text_encoder_layers =
      12;                 // clip_skip: a coarse bound (SD1.5); the engine checks the model's own
  int64_t max_loras = 0;  // a request's LoRAs (0: the server has no --lora-dir)
  std::string default_sampler = "pndm";
  std::vector<std::string> samplers = {"pndm",    "ddim",     "euler",
                                       "euler_a", "dpmpp_2m", "dpmpp_2m_karras"};
  double max_level = 0.7;
  int64_t max_request_id_chars = 128;
  // The models a request may name in `model` (the first: the default, for an empty name), each
  // with the defaults that depend on it; empty: one unnamed model with the fields above (then a
  // non-empty `model` is unknown).
  struct Model {
    std::string name;
    int64_t default_size = 512;
  };
  std::vector<Model> models;
  // width x height x images x steps, x2 when guided (request_work); 0: unbounded.
  int64_t max_work = 4 * kDefaultRequestWork;
  // Enforced by the service, not by validate_request: the serialized request's size, and the
  // deadline of requests without one and cap of longer ones (0: none).
  int64_t max_receive_bytes = 1 << 20;
  double max_deadline_s = 600;

  // The server's bounds (`samplers` stays as above: the service sets the pipeline's names).
  static RequestLimits from(const ServerConfig& config, int64_t native_resolution);
};

// A request whose every field is in range, with the server's defaults filled in.
struct ValidatedRequest {
  std::string prompt, negative_prompt;
  int64_t width = 0, height = 0, steps = 0, images = 1;
  double guidance_scale = 7.5, guidance_rescale = 0.0, eta = 0.0;
  std::string sampler;
  uint64_t seed = 0;
  enum class Pruning { kAuto, kOff, kFixedLevel, kFixedSteps, kFixedBudget };
  Pruning pruning = Pruning::kAuto;
  double level = 0.0;               // kFixedLevel (0: no pruning)
  std::vector<double> step_levels;  // kFixedSteps
  double flops_budget = 0.0;        // kFixedBudget: the engine maps it to step levels
  bool has_max_level = false;       // the request's pruning.max_level
  double max_level = 0.0;           // kAuto: the most pruning accepted (request or server)
  int priority = 0;
  uint32_t preview_every = 0;
  int64_t work = 0;  // request_work of the above
  // img2img and inpainting: the decoded images (no pixels: not given) and the strength. The
  // size is the request's width x height (the init image set them when the request left them
  // 0); the pipeline checks the strength against the steps and the mask against the model.
  pipelines::RgbImage init_image, mask_image;
  std::optional<double> strength;
  bool a1111_syntax = false;  // prompt_syntax A1111 (the pipeline bounds its chunk count)
  int64_t clip_skip = 0;
  std::vector<lora::LoraSpec> loras;  // names checked as file stems; the engine finds the files
  size_t model = 0;                   // index into RequestLimits::models (0: the default)
};

// Checks every field and fills `out`. Returns an empty string when valid, otherwise the message
// for INVALID_ARGUMENT (naming the field, or the server option, and the allowed range; bad
// strings are quoted by quote_prefix only). `random_seed` is used when the request has no seed.
std::string validate_request(const v1::GenerateRequest& request, const RequestLimits& limits,
                             uint64_t random_seed, ValidatedRequest& out);

// The limits init_image and mask_image are decoded within: at most max_size pixels a side,
// max_size^2 in all, max_receive_bytes of file (checked on the header, before any allocation).
pipelines::ImageLimits request_image_limits(const RequestLimits& limits);

// The total work of a request: pixels x images x steps, counted double when guided (guidance
// scale > 1 runs the U-Net on the conditional and the unconditional batch).
int64_t request_work(int64_t width, int64_t height, int64_t images, int64_t steps, bool guided);

// What a request asked for, for its log line even when rejected: its own values, the server's
// defaults where it left a field 0.
struct AskedShape {
  int64_t width = 0, height = 0, steps = 0, images = 0;
};
AskedShape asked_shape(const v1::GenerateRequest& request, const RequestLimits& limits);

// The index in `limits.models` of the request's `model` (empty: 0). Returns an empty string
// when found, otherwise the message for INVALID_ARGUMENT ("model: unknown model ..." with a
// short quote of the name and the server's names).
std::string resolve_model(const v1::GenerateRequest& request, const RequestLimits& limits,
                          size_t& index);

// Parses a serialized GenerateRequest. On failure returns false and sets `error` to
// "request is not a valid ldcp.v1.GenerateRequest: ..." (the wire format, or which string
// field is not UTF-8).
bool parse_request(std::string_view bytes, v1::GenerateRequest& out, std::string& error);

// Whether `s` is well-formed UTF-8 (no overlong forms, surrogates or code points > U+10FFFF).
bool is_valid_utf8(std::string_view s);
// Whether `s` (UTF-8) holds a control character: C0 (U+0000..U+001F), DEL or C1
// (U+0080..U+009F).
bool has_control_chars(std::string_view s);

// `s` as a double-quoted string for a message: at most `max_bytes` of it (cut at a character
// boundary), control characters, quotes, backslashes and invalid bytes escaped (\n, \u0085,
// \xff), and when cut: `..." (N bytes)`.
std::string quote_prefix(std::string_view s, size_t max_bytes = 32);

}  // namespace ldcp::server
