// Whole pipeline runs against diffusers' StableDiffusionPipeline on the tiny models, every sampler.
#include <gtest/gtest.h>

#include "tests/pipeline/pipeline_parity.h"

TEST(PipelineParity, TinyModelsEverySamplerMatchDiffusers) {
  ldcp::testing::check_pipeline_cases("pipeline");
}
