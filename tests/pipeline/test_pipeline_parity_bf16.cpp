// Whole pipeline runs in bf16 (PipelineOptions.dtype = kBFloat16) against diffusers'
// StableDiffusionPipeline in bf16 (from_pretrained(dtype=torch.bfloat16)) on the tiny models:
// every sampler on tiny-a, negative prompt with guidance rescale, two images at an odd size,
// guidance off. The tolerance and what it was measured at: pipeline_tolerance.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "tests/pipeline/pipeline_parity.h"

TEST(PipelineParityBf16, TinyModelsMatchDiffusersInBf16) {
  ldcp::testing::check_pipeline_cases("pipeline-bf16",
                                      ldcp::testing::pipeline_run_from_env(torch::kBFloat16));
}
