#pragma once
// Runs the C++ pipeline on the cases a reference script recorded and compares the images with
// the pipeline tolerance: max per-pixel difference <= 2/255, mean <= 0.5/255.

#include <string>

namespace ldcp::testing {

// Runs every case in ${LDCP_PARITY_DIR}/ref/<part>/cases.json.
void check_pipeline_cases(const std::string& part);

}  // namespace ldcp::testing
