// The full SD1.5 architecture (random weights) at 64x64 for 2 steps against diffusers.
#include <gtest/gtest.h>

#include "tests/pipeline/pipeline_parity.h"

TEST(PipelineParitySd15, FullArchitectureMatchesDiffusers) {
  ldcp::testing::check_pipeline_cases("pipeline-sd15");
}
