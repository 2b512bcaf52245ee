#include "model/pipelines/image_metrics.h"

#include <cmath>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>

#include <torch/torch.h>

namespace ldcp::pipelines {
namespace {

namespace F = torch::nn::functional;

void check_same_shape(const at::Tensor& a, const at::Tensor& b, const char* what) {
  if (!a.defined() || !b.defined() || a.numel() == 0) {
    throw std::invalid_argument(std::string(what) + ": images must not be empty");
  }
  if (a.sizes() != b.sizes()) {
    std::ostringstream message;
    message << what << ": image shapes differ (" << a.sizes() << " vs " << b.sizes() << ")";
    throw std::invalid_argument(message.str());
  }
}

// The 1-D window, normalised to sum 1: scipy.ndimage's Gaussian kernel (truncate 3.5) or a box.
at::Tensor window_1d(const SsimOptions& options) {
  if (!options.gaussian) {
    return torch::full({options.win_size}, 1.0 / static_cast<double>(options.win_size),
                       torch::kDouble);
  }
  const auto radius = static_cast<int64_t>(3.5 * options.sigma + 0.5);
  auto x = torch::arange(-radius, radius + 1, torch::kDouble);
  auto w = torch::exp(-0.5 * x * x / (options.sigma * options.sigma));
  return w / w.sum();
}

}  // namespace

double psnr(const at::Tensor& image, const at::Tensor& reference, double data_range) {
  check_same_shape(image, reference, "psnr");
  if (!(data_range > 0)) throw std::invalid_argument("psnr: data_range must be positive");
  auto diff = image.to(torch::kCPU, torch::kDouble) - reference.to(torch::kCPU, torch::kDouble);
  const double mse = diff.pow(2).mean().item<double>();
  if (mse == 0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(data_range * data_range / mse);
}

double ssim(const at::Tensor& image, const at::Tensor& reference, double data_range,
            const SsimOptions& options) {
  check_same_shape(image, reference, "ssim");
  if (image.dim() != 2 && image.dim() != 3) {
    throw std::invalid_argument("ssim: images must be [H, W] or [H, W, C]");
  }
  if (!(data_range > 0)) throw std::invalid_argument("ssim: data_range must be positive");
  if (!options.gaussian && (options.win_size < 3 || options.win_size % 2 == 0)) {
    throw std::invalid_argument("ssim: win_size must be odd and at least 3");
  }
  const auto window = window_1d(options);
  const int64_t win = window.size(0);
  if (image.size(0) < win || image.size(1) < win) {
    throw std::invalid_argument("ssim: images of " + std::to_string(image.size(0)) + "x" +
                                std::to_string(image.size(1)) + " are smaller than the " +
                                std::to_string(win) + "-pixel window");
  }
  // [C, 1, H, W] float64; channels are independent images.
  auto as_planes = [](const at::Tensor& t) {
    auto d = t.to(torch::kCPU, torch::kDouble);
    if (d.dim() == 2) d = d.unsqueeze(-1);
    return d.permute({2, 0, 1}).unsqueeze(1).contiguous();
  };
  const auto x = as_planes(image), y = as_planes(reference);
  // Separable filtering without padding: what remains is exactly skimage's cropped interior
  // (the border of radius pixels it leaves out is where its reflect padding would matter).
  const auto kernel_h = window.view({1, 1, win, 1}), kernel_w = window.view({1, 1, 1, win});
  auto filter = [&](const at::Tensor& t) { return F::conv2d(F::conv2d(t, kernel_h), kernel_w); };
  const double np = static_cast<double>(win * win);
  const double cov_norm = options.sample_covariance ? np / (np - 1) : 1.0;
  auto ux = filter(x), uy = filter(y);
  auto vx = cov_norm * (filter(x * x) - ux * ux);
  auto vy = cov_norm * (filter(y * y) - uy * uy);
  auto vxy = cov_norm * (filter(x * y) - ux * uy);
  const double c1 = std::pow(options.k1 * data_range, 2), c2 = std::pow(options.k2 * data_range, 2);
  auto s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
  // Mean per channel, then over channels (skimage's channel_axis handling).
  return s.mean({1, 2, 3}).mean().item<double>();
}

double relative_error(const at::Tensor& actual, const at::Tensor& reference) {
  check_same_shape(actual, reference, "relative_error");
  const auto a = actual.to(torch::kCPU, torch::kDouble);
  const auto r = reference.to(torch::kCPU, torch::kDouble);
  const double num = (a - r).norm().item<double>();
  const double den = r.norm().item<double>();
  if (den == 0) return num == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return num / den;
}

}  // namespace ldcp::pipelines
