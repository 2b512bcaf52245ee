// libFuzzer target: request validation (server/request_validation.h): bytes -> GenerateRequest
// -> validate_request with the server's default bounds. A request that is accepted must stay
// within every bound, its total work included; a rejected one gets a short message.

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "server/request_validation.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using ldcp::server::RequestLimits;
  static const RequestLimits limits;
  ldcp::v1::GenerateRequest request;
  std::string error;
  if (!ldcp::server::parse_request(std::string_view(reinterpret_cast<const char*>(data), size),
                                   request, error)) {
    if (error.rfind("request is not a valid ldcp.v1.GenerateRequest", 0) != 0) std::abort();
    if (error.size() > 1024) std::abort();
    return 0;
  }
  ldcp::server::asked_shape(request, limits);
  ldcp::server::ValidatedRequest out;
  error = ldcp::server::validate_request(request, limits, /*random_seed=*/1234, out);
  if (!error.empty()) {
    if (error.size() > 1024) std::abort();  // bad values are quoted by a short prefix only
    return 0;
  }
  const bool guided = out.guidance_scale > 1.0;
  if (out.width < limits.min_size || out.width > limits.max_size || out.height < limits.min_size ||
      out.height > limits.max_size || out.steps < 1 || out.steps > limits.max_steps ||
      out.images < 1 || out.images > limits.max_images ||
      !(out.guidance_scale <= limits.max_guidance)) {
    std::abort();
  }
  const int64_t work =
      ldcp::server::request_work(out.width, out.height, out.images, out.steps, guided);
  if (out.work != work || (limits.max_work > 0 && work > limits.max_work)) std::abort();
  if (!(out.level >= 0.0 && out.level < 1.0)) std::abort();
  return 0;
}
