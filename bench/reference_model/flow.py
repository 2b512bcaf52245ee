"""The mission's flow on a trained face model: train it (train.py --preset faces), draw samples
with `ldcp generate`, learn gate scores with `ldcp train-gates` on the 899 training photos,
compare learned / magnitude / random scores with `ldcp eval-pruning` on held-out seeds, measure
a Fréchet distance to the 100 held-out real faces, and learn step-aware schedules with
`ldcp tune-schedule`. Everything lands in --out (in the cache by default: it is derived from
CelebA photos and must not be committed); report.md there has the tables.

  .venv/bin/python bench/reference_model/flow.py --ldcp build/tools/ldcp           # full run
  .venv/bin/python bench/reference_model/flow.py --ldcp build/tools/ldcp --quick   # minutes

The distribution measure is a Fréchet distance on features of the trained model's own VAE
encoder (posterior means, average-pooled to 4x4: 64 numbers per image), between the generated
faces and the held-out real ones. It needs no download (Inception weights for FID cannot be
fetched here) and it measures what the model itself represents; it is not comparable with FID
figures from elsewhere, and with tens of samples it is biased upwards: compare rows of one run
only.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
LEVELS = (0.25, 0.5, 0.75)
SOURCES = ("learned", "magnitude", "random")

FULL = dict(gate_images=None, sample_seeds=16, sample_steps=30, gate_steps=300, gate_batch=8,
            eval_seeds=64, eval_steps=20, tune_seeds=4, tune_eval_seeds=8,
            budgets="0.6,0.7,0.8", floor=0.25)
QUICK = dict(gate_images=48, sample_seeds=2, sample_steps=3, gate_steps=4, gate_batch=2,
             eval_seeds=2, eval_steps=3, tune_seeds=1, tune_eval_seeds=1, budgets="0.7",
             floor=0.25)


def run(cmd: list[str], log: Path) -> None:
    print("+ " + " ".join(str(c) for c in cmd), file=sys.stderr)
    t0 = time.time()
    with log.open("a") as f:
        f.write("+ " + " ".join(str(c) for c in cmd) + "\n")
        f.flush()
        result = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT)
    if result.returncode != 0:
        tail = log.read_text().splitlines()[-25:]
        raise SystemExit(f"failed ({result.returncode}) after {time.time() - t0:.0f} s: "
                         f"{cmd[0]} {cmd[1] if len(cmd) > 1 else ''}\n" + "\n".join(tail))


def grid(paths: list[list[Path]], out: Path, gap: int = 4) -> None:
    """Images in rows x columns, white gaps."""
    first = Image.open(paths[0][0])
    w, h = first.size
    rows, cols = len(paths), max(len(r) for r in paths)
    canvas = Image.new("RGB", (cols * w + (cols + 1) * gap, rows * h + (rows + 1) * gap), "white")
    for r, row in enumerate(paths):
        for c, p in enumerate(row):
            canvas.paste(Image.open(p).convert("RGB"), (gap + c * (w + gap), gap + r * (h + gap)))
    canvas.save(out)


@torch.no_grad()
def vae_features(vae, images: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    feats = []
    for i in range(0, len(x), 32):
        mean = vae.encode(x[i:i + 32]).latent_dist.mean
        feats.append(torch.nn.functional.adaptive_avg_pool2d(mean, 4).flatten(1))
    return torch.cat(feats).double().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), the square root through the
    symmetric form S_a^(1/2) S_b S_a^(1/2) (eigendecompositions: no complex parts)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)

    def sqrt_psd(m: np.ndarray) -> np.ndarray:
        w, v = np.linalg.eigh((m + m.T) / 2)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    root_a = sqrt_psd(s_a)
    cross = sqrt_psd(root_a @ s_b @ root_a)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.trace(cross))


def read_pngs(paths: list[Path]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p).convert("RGB"), dtype=np.uint8) for p in paths])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--ldcp", type=Path, default=REPO / "build" / "tools" / "ldcp")
    p.add_argument("--out", type=Path, default=datasets.cache_dir() / "flow")
    p.add_argument("--model", type=Path, help="an already trained folder (skips training)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--skip", default="", help="comma-separated stages to skip: "
                   "samples,gates,eval,fd,tune")
    p.add_argument("--gate-steps", type=int, help="ldcp train-gates --steps (default: the "
                   f"preset's, {FULL['gate_steps']})")
    args = p.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    if args.gate_steps:
        cfg["gate_steps"] = args.gate_steps
    skip = set(filter(None, args.skip.split(",")))
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    log = out / "flow.log"
    threads = ["--threads", str(args.threads)] if args.threads else []
    py = sys.executable
    summary: dict = {"quick": args.quick, "settings": cfg}
    timings: dict = {}

    t0 = time.time()
    model = args.model or out / "model"
    if not args.model:
        run([py, REPO / "bench/reference_model/train.py", "--preset", "faces", "--out", model,
             *(["--quick"] if args.quick else []), *threads], log)
    timings["train"] = time.time() - t0
    summary["train_report"] = json.loads((model / "report.json").read_text())
    prompt = datasets.FACE_CAPTION
    prompts = out / "prompts.txt"
    prompts.write_text(prompt + "\n")

    if "samples" not in skip:
        t0 = time.time()
        (out / "samples").mkdir(exist_ok=True)
        paths = []
        for seed in range(cfg["sample_seeds"]):
            path = out / "samples" / f"seed{seed}.png"
            run([args.ldcp, "generate", "--model", model, "--prompt", prompt, "--seed", seed,
                 "--steps", cfg["sample_steps"], "--sampler", "dpmpp_2m", "--out", path], log)
            paths.append(path)
        per_row = 8
        grid([paths[i:i + per_row] for i in range(0, len(paths), per_row)], out / "samples.png")
        timings["samples"] = time.time() - t0

    gates = out / "gates.safetensors"
    if "gates" not in skip:
        t0 = time.time()
        limit = cfg["gate_images"]
        data = datasets.face_files_for_gates(
            datasets.cache_dir() / f"faces-train-png{'-' + str(limit) if limit else ''}", limit)
        run([args.ldcp, "train-gates", "--model", model, "--data", data, "--resolution", 64,
             "--prompt", prompt, "--steps", cfg["gate_steps"], "--batch", cfg["gate_batch"],
             "--levels", ",".join(map(str, LEVELS)), "--out", gates,
             "--cache-dir", datasets.cache_dir() / "gates-cache"], log)
        timings["train_gates"] = time.time() - t0

    eval_dir = out / "eval"
    if "eval" not in skip:
        t0 = time.time()
        run([args.ldcp, "eval-pruning", "--model", model, "--gates", gates, "--prompts", prompts,
             "--seeds", cfg["eval_seeds"], "--steps", cfg["eval_steps"],
             "--levels", "0," + ",".join(map(str, LEVELS)), "--out", eval_dir, *threads], log)
        timings["eval_pruning"] = time.time() - t0
    # --skip eval with no earlier evaluation in --out: the report has no table.
    results_file = eval_dir / "results.json"
    summary["eval_rows"] = (json.loads(results_file.read_text())["rows"]
                            if results_file.exists() else [])

    if "fd" not in skip:
        t0 = time.time()
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(model / "vae").float().eval()
        _, held_out = datasets.load_faces(64, None, 16 if args.quick else None)
        real = vae_features(vae, held_out.images)
        fd = {}
        for source in SOURCES:
            for level in (0.0, *LEVELS):
                tag = f"{level:.2f}"
                files = sorted((eval_dir / "images" / source).glob(f"p*-s*-L{tag}.png"))
                fd[f"{source}@{tag}"] = frechet_distance(vae_features(vae, read_pngs(files)), real)
        # The floor of the measure at this sample count: held-out real faces against each other.
        half = len(real) // 2
        fd["real-vs-real"] = frechet_distance(real[:half], real[half:])
        summary["frechet_distance"] = fd
        timings["frechet"] = time.time() - t0

    if "tune" not in skip:
        t0 = time.time()
        run([args.ldcp, "tune-schedule", "--model", model, "--gates", gates, "--prompts", prompts,
             "--seeds", cfg["tune_seeds"], "--eval-seeds", cfg["tune_eval_seeds"],
             "--steps", cfg["eval_steps"], "--levels", ",".join(map(str, LEVELS)),
             "--budgets", cfg["budgets"], "--floor", cfg["floor"],
             "--out", out / "gates-scheduled.safetensors", "--report", out / "schedules",
             *threads], log)
        timings["tune_schedule"] = time.time() - t0
    summary["timings_s"] = timings
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    write_report(out, summary)
    print(f"wrote {out}/report.md and summary.json", file=sys.stderr)


def write_report(out: Path, summary: dict) -> None:
    tr = summary["train_report"]
    lines = [f"# Pruning on a trained face model ({'quick' if summary['quick'] else 'full'} run)",
             "",
             f"Model: {tr['parameters']['unet'] / 1e6:.2f} M U-Net parameters, trained on "
             f"{tr['train_images']} photos at 64x64; VAE held-out reconstruction PSNR "
             f"{tr['vae_held_out_psnr_db']:.2f} dB over {tr['held_out_images']} held-out photos.",
             ""]
    rows = {(r["source"], round(r["level"], 4)): r for r in summary["eval_rows"]}
    fd = summary.get("frechet_distance", {})
    lines += ["| scores | level | U-Net FLOPs x L0 | noise rel. error | PSNR vs L0 dB | SSIM | "
              "Fréchet (VAE features) |", "|---|---|---|---|---|---|---|"]
    for source in SOURCES:
        for level in (0.0, *LEVELS):
            r = rows.get((source, level))
            if r is None:
                continue
            psnr = r["psnr_db"]
            lines.append(
                f"| {source} | {level:.2f} | {r['flops_ratio'] or 1:.3f} | "
                f"{r['noise_relative_error_mean']:.4f} | "
                f"{'inf' if psnr is None else f'{psnr:.2f}'} | {r['ssim_mean']:.4f} | "
                f"{fd.get(f'{source}@{level:.2f}', float('nan')):.3f} |")
    if "real-vs-real" in fd:
        lines += ["", f"Fréchet distance of the held-out real faces, one half against the other: "
                      f"{fd['real-vs-real']:.3f} (the measure's floor at this sample count)."]
    learned, magnitude, rand = (rows.get((s, 0.5)) for s in SOURCES)
    if learned and magnitude and rand:
        ln, mn, rn = (r["noise_relative_error_mean"] for r in (learned, magnitude, rand))
        lp, mp = learned["psnr_db"] or math.inf, magnitude["psnr_db"] or math.inf
        lines += ["", "Targets at level 0.5:", "",
                  f"- learned noise error / magnitude's: {ln / mn:.3f}x (target <= 0.8x)",
                  f"- learned noise error / random's: {ln / rn:.3f}x (target <= 0.5x)",
                  f"- learned PSNR - magnitude's: {lp - mp:+.2f} dB (target >= +2 dB)"]
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in
                                               summary["timings_s"].items())]
    (out / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
