// The CPU linear backends (model/runtime/linear_backend.h): oneDNN's linear equals ATen's, the
// fallbacks (narrowed weights, autograd) take ATen, auto picks by timing, FLOPs are counted on
// either, and the U-Net on oneDNN still matches diffusers.
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/io/json_file.h"
#include "model/io/safetensors.h"
#include "model/models/unets/unet_2d_condition.h"
#include "model/runtime/flop_counter.h"
#include "model/runtime/linear_backend.h"
#include "tests/common/test_util.h"

namespace {

using ldcp::runtime::LinearBackend;
namespace rt = ldcp::runtime;

// Restores ATen for fp32 when a test ends (the choice is process-wide).
class LinearBackendTest : public ::testing::Test {
 protected:
  void TearDown() override { rt::set_linear_backend(torch::kFloat, LinearBackend::kAten); }
};

TEST_F(LinearBackendTest, OneDnnEqualsAtenInFp32) {
  ASSERT_TRUE(rt::onednn_linear_available(torch::kFloat)) << "oneDNN runs fp32 on any x86 CPU";
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  const auto weight = torch::randn({48, 40}), bias = torch::randn({48});
  // 3-D input as the transformer blocks feed it, and a transposed (non-contiguous) one.
  for (const auto& input : {torch::randn({2, 33, 40}), torch::randn({2, 40, 33}).transpose(1, 2)}) {
    const auto expected = torch::nn::functional::linear(input, weight, bias);
    rt::set_linear_backend(torch::kFloat, LinearBackend::kOneDnn);
    const auto got = rt::linear(input, weight, bias);
    const auto got_no_bias = rt::linear(input, weight);
    rt::set_linear_backend(torch::kFloat, LinearBackend::kAten);
    ASSERT_EQ(got.sizes(), expected.sizes());
    EXPECT_ALLCLOSE(got, expected, 1e-5);
    EXPECT_ALLCLOSE(got_no_bias, torch::nn::functional::linear(input, weight), 1e-5);
  }
}

TEST_F(LinearBackendTest, NarrowedWeightsAndAutogradTakeAten) {
  torch::manual_seed(1);
  rt::set_linear_backend(torch::kFloat, LinearBackend::kOneDnn);
  // The pruned feed-forward's output: a column prefix of the full weight (a strided view).
  const auto full = torch::randn({16, 64});
  const auto narrowed = full.narrow(1, 0, 24);
  const auto input = torch::randn({5, 24});
  {
    torch::NoGradGuard no_grad;
    EXPECT_ALLCLOSE(rt::linear(input, narrowed), torch::nn::functional::linear(input, narrowed),
                    1e-6);
  }
  // Gate training records gradients: oneDNN's op has no derivative, ATen's does.
  const auto x = torch::randn({5, 64}, torch::requires_grad());
  auto y = rt::linear(x, full);
  ASSERT_TRUE(y.requires_grad());
  y.sum().backward();
  EXPECT_ALLCLOSE(x.grad(), full.sum(0).expand({5, 64}), 1e-5);
}

TEST_F(LinearBackendTest, AutoTimesBothAndSetsTheFasterOne) {
  const std::vector<rt::LinearShape> shapes = {{256, 64, 64}, {256, 64, 512}, {64, 256, 64}};
  const auto choice = rt::configure_linear_backend("auto", torch::kFloat, shapes);
  EXPECT_GT(choice.aten_seconds, 0);
  EXPECT_GT(choice.onednn_seconds, 0);
  EXPECT_EQ(choice.backend, choice.onednn_seconds < choice.aten_seconds ? LinearBackend::kOneDnn
                                                                        : LinearBackend::kAten);
  EXPECT_EQ(rt::linear_backend(torch::kFloat), choice.backend);
  EXPECT_EQ(choice.reason.rfind("auto: oneDNN took ", 0), 0u) << choice.reason;
  // Named choices are set as asked.
  EXPECT_EQ(rt::configure_linear_backend("onednn", torch::kFloat, shapes).backend,
            LinearBackend::kOneDnn);
  EXPECT_EQ(rt::linear_backend(torch::kFloat), LinearBackend::kOneDnn);
  EXPECT_EQ(rt::configure_linear_backend("aten", torch::kFloat, shapes).reason, "asked for");
  EXPECT_EQ(rt::linear_backend(torch::kFloat), LinearBackend::kAten);
}

TEST_F(LinearBackendTest, Bf16OnDnnOnlyWhereTheCpuRunsIt) {
  const std::vector<rt::LinearShape> shapes = {{64, 32, 32}};
  if (rt::onednn_linear_available(torch::kBFloat16)) {
    EXPECT_NO_THROW(rt::configure_linear_backend("onednn", torch::kBFloat16, shapes));
  } else {
    // e.g. an AVX2-only CPU: forcing it is an error naming the option; auto keeps ATen.
    try {
      rt::configure_linear_backend("onednn", torch::kBFloat16, shapes);
      ADD_FAILURE() << "forcing oneDNN bf16 was accepted";
    } catch (const std::invalid_argument& e) {
      EXPECT_EQ(std::string(e.what()).rfind("--linear-backend onednn", 0), 0u) << e.what();
    }
    const auto choice = rt::configure_linear_backend("auto", torch::kBFloat16, shapes);
    EXPECT_EQ(choice.backend, LinearBackend::kAten);
    EXPECT_NE(choice.reason.find("no bf16 linear"), std::string::npos) << choice.reason;
  }
  // Either way, runtime::linear computes a bf16 product.
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({4, 32}).to(torch::kBFloat16);
  const auto w = torch::randn({8, 32}).to(torch::kBFloat16);
  EXPECT_ALLCLOSE(rt::linear(x, w).to(torch::kFloat),
                  torch::nn::functional::linear(x, w).to(torch::kFloat), 2e-2);
  rt::set_linear_backend(torch::kBFloat16, LinearBackend::kAten);
}

TEST_F(LinearBackendTest, UnknownNamesAreRefusedWithAShortPrefix) {
  const std::string hostile(10000, 'x');
  try {
    rt::configure_linear_backend(hostile, torch::kFloat, {});
    FAIL() << "accepted";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_EQ(what.rfind("--linear-backend must be auto, aten or onednn", 0), 0u) << what;
    EXPECT_LT(what.size(), 120u);
  }
}

TEST_F(LinearBackendTest, FlopsAreCountedOnOneDnn) {
  torch::NoGradGuard no_grad;
  const auto input = torch::randn({2, 10, 24}), weight = torch::randn({12, 24});
  for (auto backend : {LinearBackend::kAten, LinearBackend::kOneDnn}) {
    SCOPED_TRACE(rt::linear_backend_name(backend));
    rt::set_linear_backend(torch::kFloat, backend);
    rt::FlopCounter counter;
    rt::linear(input, weight, torch::randn({12}));
    EXPECT_EQ(counter.macs(), 2 * 10 * 24 * 12);
  }
}

// The whole U-Net on oneDNN's linears against diffusers' outputs (ref_unet.py), at the
// tolerance of unet_test's MatchesDiffusers.
TEST_F(LinearBackendTest, UNetOnOneDnnMatchesDiffusers) {
  const std::string model = "tiny-a";
  torch::NoGradGuard no_grad;
  auto unet = ldcp::models::load_unet(ldcp::testing::parity_model(model) / "unet");
  const auto ref_dir = ldcp::testing::parity_dir() / "ref" / "unet";
  const auto ref = ldcp::io::load_safetensors(ref_dir / (model + ".safetensors"));
  const auto cases = ldcp::io::read_json_file(ref_dir / "cases.json").at(model);
  ASSERT_FALSE(cases.empty());
  rt::set_linear_backend(torch::kFloat, LinearBackend::kOneDnn);
  for (const auto& c : cases) {
    const auto name = c.at("name").get<std::string>();
    SCOPED_TRACE("case " + name);
    auto timestep = ref.at(name + ".timestep");
    if (c.at("timestep_0d").get<bool>()) timestep = timestep.reshape({});
    rt::FlopCounter counter;
    const auto out =
        unet->forward(ref.at(name + ".sample"), timestep, ref.at(name + ".encoder_hidden_states"));
    EXPECT_ALLCLOSE(out, ref.at(name + ".out"));
    EXPECT_GT(counter.macs_by_operator().count("mkldnn::_linear_pointwise"), 0u)
        << "oneDNN never ran";
  }
}

}  // namespace
