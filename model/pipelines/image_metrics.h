#pragma once
// Image quality against a reference: PSNR and SSIM as scikit-image computes them
// (skimage.metrics.peak_signal_noise_ratio and structural_similarity), and the relative error
// of two tensors. Used to compare a pruned model's images and predictions with the unpruned ones.

#include <cstdint>

#include <ATen/core/Tensor.h>

namespace ldcp::pipelines {

// 10 log10(data_range^2 / MSE) in dB over all elements, in float64; +infinity when the images
// are equal. Images: same shape, any dtype (e.g. uint8 [H, W, 3] with data_range 255, or float
// in [0, 1] with data_range 1). Throws std::invalid_argument for different shapes or empty
// images.
double psnr(const at::Tensor& image, const at::Tensor& reference, double data_range);

struct SsimOptions {
  // Defaults: Wang et al. 2004 (an 11-tap Gaussian window, sigma 1.5, population covariance),
  // i.e. skimage's structural_similarity(gaussian_weights=True, sigma=1.5,
  // use_sample_covariance=False). gaussian = false gives skimage's default uniform window of
  // win_size (7) with sample covariance.
  bool gaussian = true;
  double sigma = 1.5;    // Gaussian window: radius int(3.5 sigma + 0.5)
  int64_t win_size = 7;  // uniform window only; odd
  bool sample_covariance = false;
  double k1 = 0.01, k2 = 0.03;
};

// Mean structural similarity, averaged over channels: images [H, W] or [H, W, C] (channels
// last), same shape; the border of half a window is left out as skimage does. 1 for equal
// images. Throws std::invalid_argument for different shapes or images smaller than the window.
double ssim(const at::Tensor& image, const at::Tensor& reference, double data_range,
            const SsimOptions& options = {});

// ||actual - reference|| / ||reference|| (Frobenius norms, float64); 0 when both are zero and
// +infinity when only the reference is.
double relative_error(const at::Tensor& actual, const at::Tensor& reference);

}  // namespace ldcp::pipelines
