#pragma once
// Runs the C++ pipeline on the cases a reference script recorded and compares the images with a
// tolerance chosen by the run's dtype and the reference's dtype (pipeline_tolerance).
//
// The device and dtype of a run come from the environment, so that a GPU machine runs the same
// suites on CUDA (scripts/gpu_check.sh):
//   LDCP_TEST_DEVICE  cpu (default), cuda, cuda:N
//   LDCP_TEST_DTYPE   fp32 (default) or fp16: the dtype of the suites against fp32 references
//                     (the bf16 suites always run bf16, on LDCP_TEST_DEVICE)

#include <optional>
#include <string>

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

namespace ldcp::testing {

// Image tolerance: max per-pixel |diff| and mean |diff|, in [0, 1] units.
struct PipelineTolerance {
  double max_diff = 0;
  double mean_diff = 0;
  std::string basis;  // where the figures come from (measured where, or unmeasured)
};

// The tolerance of a run in `dtype` on `device` against references made by diffusers in
// `reference_dtype` on the CPU. Throws std::invalid_argument for a combination without one.
PipelineTolerance pipeline_tolerance(c10::ScalarType dtype, c10::ScalarType reference_dtype,
                                     const c10::Device& device);

struct PipelineRun {
  c10::Device device = c10::kCPU;
  c10::ScalarType dtype = c10::kFloat;
  c10::ScalarType reference_dtype = c10::kFloat;
};

// LDCP_TEST_DEVICE and LDCP_TEST_DTYPE (above). `forced_dtype` (the bf16 suites) replaces
// LDCP_TEST_DTYPE; the reference dtype is the run's for bf16, else fp32.
PipelineRun pipeline_run_from_env(std::optional<c10::ScalarType> forced_dtype = std::nullopt);

// Runs every case in ${LDCP_PARITY_DIR}/ref/<part>/cases.json on `run`'s device and dtype
// (cases with init_image / mask_image / strength run img2img or inpainting on those PNGs).
void check_pipeline_cases(const std::string& part, const PipelineRun& run);
inline void check_pipeline_cases(const std::string& part) {
  check_pipeline_cases(part, pipeline_run_from_env());
}

}  // namespace ldcp::testing
