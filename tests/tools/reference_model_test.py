"""The trained reference model's flow end to end, in its --quick form: bench/reference_model/
train.py on a few CelebA photos (faces) and on drawn shapes (the demo model's recipe), then
bench/reference_model/flow.py: ldcp generate, train-gates, eval-pruning, the Fréchet distance,
tune-schedule. Asserts the artifacts, that the saved folders load in diffusers and in ldcp, that
every figure is finite and in range, and that training is deterministic for a seed.

  reference_model_test.py --ldcp build/tools/ldcp [--work DIR]
  reference_model_test.py --ldcp build/tools/ldcp --reproduce-demo   (long: the full demo model)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[2]
TRAIN = REPO / "bench" / "reference_model" / "train.py"
FLOW = REPO / "bench" / "reference_model" / "flow.py"
DEMO = REPO / "data" / "demo-model"
WEIGHT_FILES = ("unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors")

failures: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("ok   " if cond else "FAIL ") + what)
    if not cond:
        failures.append(what)


# One intra-op thread in every process: CTest runs two tests at once on two cores, and libtorch's
# OpenMP threads spin-wait at each barrier when oversubscribed (an 8x slowdown measured here).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(cmd: list) -> subprocess.CompletedProcess:
    print("+ " + " ".join(map(str, cmd)), flush=True)
    t0 = time.time()
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=ENV)
    print(f"  ({time.time() - t0:.0f} s)", flush=True)
    if result.returncode != 0:
        print(result.stdout[-4000:], result.stderr[-4000:], sep="\n")
        raise SystemExit(f"command failed with {result.returncode}: {cmd[:3]}")
    return result


def tensors(folder: Path) -> dict[str, np.ndarray]:
    out = {}
    for rel in WEIGHT_FILES:
        with safe_open(str(folder / rel), framework="np") as f:
            for key in f.keys():
                out[f"{rel}:{key}"] = f.get_tensor(key)
    return out


def check_diffusers_loads(folder: Path, prompt: str) -> None:
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)  # as ENV's processes

    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32,
                                                   safety_checker=None)
    image = pipe(prompt, num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    check(image.shape == (64, 64, 3) and np.isfinite(image).all(),
          f"diffusers loads {folder.name} and generates a finite 64x64 image")


def check_ldcp_generates(ldcp: Path, folder: Path, prompt: str, out: Path) -> np.ndarray:
    run([ldcp, "generate", "--model", folder, "--prompt", prompt, "--steps", 3, "--seed", 1,
         "--out", out])
    image = np.asarray(Image.open(out).convert("RGB"))
    check(image.shape == (64, 64, 3), f"ldcp generates a 64x64 PNG from {folder.name}")
    return image


def finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def test_shapes(ldcp: Path, work: Path) -> None:
    a, b = work / "shapes-a", work / "shapes-b"
    for folder, run_dir in ((a, work / "run-a"), (b, work / "run-b")):
        run([sys.executable, TRAIN, "--preset", "shapes", "--quick", "--out", folder,
             "--work-dir", run_dir, "--fresh"])
    ta, tb = tensors(a), tensors(b)
    same = ta.keys() == tb.keys() and all(np.array_equal(ta[k], tb[k]) for k in ta)
    check(same, "two runs of the same seed write bit-identical weights")
    check(all(t.dtype == np.float16 for t in ta.values()), "the shapes preset saves fp16")
    vocab = json.loads((a / "tokenizer" / "vocab.json").read_text())
    check(len(vocab) < 1000 and "circle</w>" in vocab, f"cut vocabulary ({len(vocab)} tokens)")
    prompt = "a red circle on a blue background"
    check_diffusers_loads(a, prompt)
    check_ldcp_generates(ldcp, a, prompt, work / "shapes.png")


def test_flow(ldcp: Path, work: Path) -> None:
    out = work / "flow"
    run([sys.executable, FLOW, "--ldcp", ldcp, "--quick", "--out", out])
    model = out / "model"
    report = json.loads((model / "report.json").read_text())
    check(finite(report["vae_held_out_psnr_db"]) and report["vae_held_out_psnr_db"] > 0,
          f"VAE held-out PSNR finite ({report['vae_held_out_psnr_db']:.2f} dB)")
    check(report["train_images"] > 0 and report["held_out_images"] > 0, "train/held-out split")
    log = (model / "train_log.csv").read_text().splitlines()
    stages = {row.split(",")[0] for row in log[1:]}
    check(stages == {"vae", "unet"}, "the loss log has both stages")
    check(all(math.isfinite(float(r.split(",")[2])) for r in log[1:]), "every logged loss finite")
    check((model / "loss.png").is_file(), "train wrote loss.png")
    for name in ("samples.png", "report.md", "summary.json", "gates.safetensors",
                 "gates-scheduled.safetensors", "eval/results.json", "eval/grid-learned.png"):
        check((out / name).is_file(), f"flow wrote {name}")
    check_diffusers_loads(model, "a photograph of a person's face")
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["eval_rows"]
    check({r["source"] for r in rows} == {"learned", "magnitude", "random"}, "three score sources")
    for r in rows:
        tag = f"{r['source']}@{r['level']:.2f}"
        check(finite(r["noise_relative_error_mean"]) and r["noise_relative_error_mean"] >= 0,
              f"{tag}: noise error finite")
        check(r["psnr_db"] is None or (finite(r["psnr_db"]) and r["psnr_db"] > 0),
              f"{tag}: PSNR in range")
        check(finite(r["ssim_mean"]) and -1 <= r["ssim_mean"] <= 1, f"{tag}: SSIM in [-1, 1]")
        if r["level"] == 0:
            check(r["noise_relative_error_mean"] == 0 and r["psnr_db"] is None,
                  f"{tag}: level 0 is its own reference")
    fd = summary["frechet_distance"]
    check(all(finite(v) and v >= -1e-9 for v in fd.values()),
          f"Fréchet distances finite and >= 0 ({len(fd)})")
    with safe_open(str(out / "gates-scheduled.safetensors"), framework="np") as f:
        meta = f.metadata() or {}
    schedules = json.loads(meta.get("step_schedules", "[]"))
    check(len(schedules) >= 1, "tune-schedule stored a schedule in the gates file")
    for sched in schedules:
        check(all(sched["floor"] - 1e-9 <= lv < 1 for lv in sched["levels"]),
              f"schedule {sched['budget']}: every level within [floor, 1)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ldcp", type=Path, required=True)
    p.add_argument("--work", type=Path)
    p.add_argument("--reproduce-demo", action="store_true")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if args.reproduce_demo:
            # The command that made it, writing elsewhere.
            command = json.loads((DEMO / "report.json").read_text())["command"].split()
            out = work / "demo-model"
            command[command.index("--out") + 1] = str(out)
            run([sys.executable, REPO / command[0], *command[1:], "--work-dir", work / "run",
                 "--fresh"])
            ta, tb = tensors(DEMO), tensors(out)
            worst = max(float(np.abs(ta[k].astype(np.float64) - tb[k].astype(np.float64)).max())
                        for k in ta)
            check(ta.keys() == tb.keys(), "same tensors as the committed demo model")
            check(worst == 0.0, f"committed demo model reproduced bit for bit (max |diff| {worst})")
        else:
            test_shapes(args.ldcp, work)
            test_flow(args.ldcp, work)
    print(f"{len(failures)} failed" if failures else "all checks passed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
