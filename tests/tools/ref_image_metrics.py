"""Reference values for ldcp's PSNR and SSIM (model/pipelines/image_metrics.h): image pairs as
PNG files and scikit-image's metrics of each pair, written to PARITY_DIR/ref/image_metrics/.

Pairs: a random image and a noisy copy, a smooth image and a blurred, shifted copy, a
non-square one, and a gray one (the C++ test reads its first channel as a 2-D image).
"""

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def pairs(rng):
    noise = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    noisy = np.clip(noise.astype(np.int16) + rng.integers(-20, 21, size=noise.shape), 0, 255)
    yield "noise", noise, noisy.astype(np.uint8)

    y, x = np.mgrid[0:64, 0:64]
    smooth = np.stack([128 + 100 * np.sin(x / 7.0), 128 + 100 * np.cos(y / 5.0),
                       (x + y) * 2.0], axis=-1).clip(0, 255).astype(np.uint8)
    shifted = np.roll(smooth, 2, axis=1).astype(np.int16) + 10
    yield "smooth", smooth, shifted.clip(0, 255).astype(np.uint8)

    wide = rng.integers(0, 256, size=(17, 90, 3), dtype=np.uint8)
    dark = (wide // 2).astype(np.uint8)
    yield "wide", wide, dark

    gray = rng.integers(0, 256, size=(40, 40), dtype=np.uint8)
    gray_b = np.clip(gray.astype(np.int16) + rng.integers(-60, 61, size=gray.shape), 0, 255)
    yield "gray", np.repeat(gray[..., None], 3, -1), np.repeat(gray_b.astype(np.uint8)[..., None], 3, -1)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parity-dir", required=True, type=Path)
    args = parser.parse_args()
    out = args.parity_dir / "ref" / "image_metrics"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20240601)
    values = {}
    for name, a, b in pairs(rng):
        Image.fromarray(a).save(out / f"{name}-a.png")
        Image.fromarray(b).save(out / f"{name}-b.png")
        if name == "gray":  # 2-D images: no channel axis
            a, b = a[..., 0], b[..., 0]
            channel_axis = None
        else:
            channel_axis = -1
        values[name] = {
            "psnr": float(peak_signal_noise_ratio(a, b, data_range=255)),
            # Wang et al. 2004: what ldcp's ssim() computes by default.
            "ssim_gaussian": float(structural_similarity(
                a, b, data_range=255, channel_axis=channel_axis, gaussian_weights=True,
                sigma=1.5, use_sample_covariance=False)),
            # skimage's own default: 7x7 uniform window, sample covariance.
            "ssim_uniform": float(structural_similarity(a, b, data_range=255,
                                                        channel_axis=channel_axis)),
            # Float images in [0, 1] with data_range 1.
            "ssim_gaussian_float": float(structural_similarity(
                a / 255.0, b / 255.0, data_range=1.0, channel_axis=channel_axis,
                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)),
            "two_d": channel_axis is None,
        }
    (out / "values.json").write_text(json.dumps(values, indent=1))
    print(f"wrote {len(values)} image pairs and their skimage metrics to {out}")


if __name__ == "__main__":
    main()
