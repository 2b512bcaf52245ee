// PSNR, SSIM and relative error (model/pipelines/image_metrics.h): analytic cases, and
// scikit-image's values on image pairs that ref_image_metrics.py writes.
#include <cmath>
#include <limits>

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "model/io/json_file.h"
#include "model/pipelines/image_io.h"
#include "model/pipelines/image_metrics.h"
#include "tests/common/test_util.h"

namespace ldcp::pipelines {
namespace {

at::Tensor random_image(int64_t h, int64_t w, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(0, 256, {h, w, 3}, gen, torch::kUInt8);
}

TEST(ImageMetrics, PsnrOfAConstantDifference) {
  auto a = torch::full({16, 16, 3}, 100, torch::kUInt8);
  auto b = torch::full({16, 16, 3}, 110, torch::kUInt8);
  // MSE 100: 10 log10(255^2 / 100).
  EXPECT_NEAR(psnr(a, b, 255.0), 10.0 * std::log10(255.0 * 255.0 / 100.0), 1e-12);
  EXPECT_NEAR(psnr(b, a, 255.0), psnr(a, b, 255.0), 1e-12);
  // Same images: infinite.
  EXPECT_TRUE(std::isinf(psnr(a, a, 255.0)));
  // Floats in [0, 1] with data range 1 give the same figure.
  EXPECT_NEAR(psnr(a.to(torch::kFloat) / 255, b.to(torch::kFloat) / 255, 1.0), psnr(a, b, 255.0),
              1e-5);
}

TEST(ImageMetrics, SsimIsOneForEqualImagesAndBelowOtherwise) {
  auto a = random_image(32, 40, 1);
  EXPECT_DOUBLE_EQ(ssim(a, a, 255.0), 1.0);
  auto b = (a.to(torch::kInt16) + 30).clamp(0, 255).to(torch::kUInt8);
  const double s = ssim(a, b, 255.0);
  EXPECT_LT(s, 1.0);
  EXPECT_GT(s, 0.0);
  EXPECT_NEAR(ssim(b, a, 255.0), s, 1e-12);  // symmetric
  // More damage, lower similarity.
  auto c = random_image(32, 40, 2);
  EXPECT_LT(ssim(a, c, 255.0), s);
}

TEST(ImageMetrics, SsimOfConstantImagesIsTheLuminanceTerm) {
  // No variance: S = (2 a b + C1) / (a^2 + b^2 + C1) everywhere, C1 = (0.01 * 255)^2.
  const double x = 100, y = 140, c1 = std::pow(0.01 * 255, 2);
  auto a = torch::full({20, 20, 3}, x, torch::kUInt8);
  auto b = torch::full({20, 20, 3}, y, torch::kUInt8);
  const double expected = (2 * x * y + c1) / (x * x + y * y + c1);
  EXPECT_NEAR(ssim(a, b, 255.0), expected, 1e-12);
  SsimOptions uniform;
  uniform.gaussian = false;
  uniform.sample_covariance = true;
  EXPECT_NEAR(ssim(a, b, 255.0, uniform), expected, 1e-12);
}

TEST(ImageMetrics, RelativeError) {
  auto r = torch::tensor({3.0, 4.0});
  EXPECT_DOUBLE_EQ(relative_error(r, r), 0.0);
  EXPECT_NEAR(relative_error(torch::tensor({3.0, 5.0}), r), 1.0 / 5.0, 1e-12);
  EXPECT_NEAR(relative_error(torch::zeros({2}), r), 1.0, 1e-12);
  EXPECT_DOUBLE_EQ(relative_error(torch::zeros({2}), torch::zeros({2})), 0.0);
  EXPECT_TRUE(std::isinf(relative_error(r, torch::zeros({2}))));
}

TEST(ImageMetrics, ErrorsNameTheProblem) {
  auto a = random_image(16, 16, 3);
  auto expect_message = [](auto&& call, const std::string& part) {
    try {
      call();
      ADD_FAILURE() << "no exception; expected one mentioning " << part;
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
    }
  };
  expect_message([&] { psnr(a, random_image(16, 17, 3), 255.0); }, "shapes differ");
  expect_message([&] { ssim(a, random_image(17, 16, 3), 255.0); }, "shapes differ");
  expect_message([&] { ssim(random_image(8, 30, 1), random_image(8, 30, 2), 255.0); },
                 "smaller than the 11-pixel window");
  expect_message([&] { psnr(a, a, 0.0); }, "data_range");
  expect_message([&] { psnr(torch::empty({0}), torch::empty({0}), 1.0); }, "empty");
}

TEST(ImageMetrics, MatchesScikitImage) {
  const auto dir = testing::parity_dir() / "ref" / "image_metrics";
  const auto values = io::read_json_file(dir / "values.json");
  ASSERT_GE(values.size(), 4u);
  for (const auto& [name, v] : values.items()) {
    SCOPED_TRACE(name);
    auto a = read_png(dir / (name + "-a.png"));
    auto b = read_png(dir / (name + "-b.png"));
    if (v.at("two_d").get<bool>()) {
      a = a.select(2, 0);
      b = b.select(2, 0);
    }
    EXPECT_NEAR(psnr(a, b, 255.0), v.at("psnr").get<double>(), 1e-9);
    EXPECT_NEAR(ssim(a, b, 255.0), v.at("ssim_gaussian").get<double>(), 1e-9);
    SsimOptions uniform;
    uniform.gaussian = false;
    uniform.sample_covariance = true;
    EXPECT_NEAR(ssim(a, b, 255.0, uniform), v.at("ssim_uniform").get<double>(), 1e-9);
    EXPECT_NEAR(ssim(a.to(torch::kDouble) / 255, b.to(torch::kDouble) / 255, 1.0),
                v.at("ssim_gaussian_float").get<double>(), 1e-9);
  }
}

}  // namespace
}  // namespace ldcp::pipelines
