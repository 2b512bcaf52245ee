// libFuzzer target: the JPEG decoder (model/pipelines/image_codec.h), run with -rss_limit_mb and
// -malloc_limit_mb so that a header claiming a huge image fails the run if it allocates.

#include "tests/fuzz/fuzz_image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  return ldcp::fuzz::check_decode(data, size, "fuzz.jpg", [](const auto&... args) {
    return ldcp::pipelines::decode_jpeg(args...);
  });
}
