// The full SD1.5 architecture (random weights) at 64x64 for 2 steps in bf16 against diffusers in
// bf16. The tolerance and what it was measured at: pipeline_tolerance.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/pipeline/pipeline_parity.h"

TEST(PipelineParitySd15Bf16, FullArchitectureMatchesDiffusersInBf16) {
  ldcp::testing::check_pipeline_cases("pipeline-sd15-bf16",
                                      ldcp::testing::pipeline_run_from_env(torch::kBFloat16));
}
