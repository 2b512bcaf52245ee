#!/usr/bin/env python3
"""Maximum resident memory of `ldcp generate` per run dtype and weight-file dtype, beside the
tensor peak ldcp tracks itself.

Each variant is its own child process, measured by os.wait4 (ru_maxrss: the most memory the
process ever had resident, weights and activations together: what a Kubernetes memory limit
must allow). The variants run alternately for --runs rounds and the medians are printed:

- fp32 weights file, --dtype fp32
- fp32 weights file, --dtype bf16 (converted while reading)
- fp32 weights file, --dtype fp16
- fp16 weights file (diffusers' *.fp16.safetensors variant, written once next to the model's
  own files in a copy of the folder: --fp16-weights), --dtype bf16 and --dtype fp32

    .venv/bin/python bench/load_memory.py --model ~/.cache/ldcp/sd15-demo \\
        --ldcp build/tools/ldcp --width 256 --height 256 --steps 4 --runs 2

fp16 on a CPU is emulated (slow); its row shows memory, not speed.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from compare_diffusers import measure  # noqa: E402  (wall, max RSS, exit code, output, CPU)
COMPONENTS = ("unet", "vae", "text_encoder")


def fp16_variant(model: Path, work: Path) -> Path:
    """A copy of the model folder whose components also have an .fp16.safetensors variant
    (the fp32 files are linked, not copied)."""
    import torch
    from safetensors.torch import load_file, save_file

    out = work / "fp16-variant"
    if (out / "model_index.json").is_file():
        return out
    for item in model.iterdir():
        target = out / item.name
        if item.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            for f in item.iterdir():
                (target / f.name).symlink_to(f.resolve())
        else:
            out.mkdir(parents=True, exist_ok=True)
            target.symlink_to(item.resolve())
    for component in COMPONENTS:
        for name in ("diffusion_pytorch_model", "model"):
            src = model / component / f"{name}.safetensors"
            if src.is_file():
                tensors = {k: (v.half() if v.is_floating_point() else v)
                           for k, v in load_file(src).items()}
                save_file(tensors, out / component / f"{name}.fp16.safetensors")
                del tensors
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, help="diffusers folder, fp32 weights")
    p.add_argument("--ldcp", default=str(REPO / "build" / "tools" / "ldcp"))
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--variants", default="fp32/fp32,fp32/bf16,fp32/fp16,fp16/bf16,fp16/fp32",
                   help="weights/run dtype pairs")
    p.add_argument("--work", type=Path, help="folder for the fp16 variant, images and logs")
    p.add_argument("--json", type=Path)
    p.add_argument("--make-fp16-variant", nargs=2, type=Path, metavar=("MODEL", "WORK"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.make_fp16_variant:
        fp16_variant(*args.make_fp16_variant)
        return 0
    if not (args.model / "model_index.json").is_file():
        p.error(f"--model {args.model}: no model_index.json there")
    work = args.work or Path(tempfile.mkdtemp(prefix="ldcp-load-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    variants = [tuple(v.split("/")) for v in args.variants.split(",")]
    if any(w not in ("fp32", "fp16") or r not in ("fp32", "fp16", "bf16") for w, r in variants):
        p.error(f"--variants {args.variants!r}: pairs of weights (fp32|fp16) / run dtype")
    fp16_model = None
    if any(w == "fp16" for w, _ in variants):
        # In a child: a child's ru_maxrss starts from its parent's resident size when it is
        # spawned, so a parent that held the weights (5.4 GB here) would be every row's figure.
        fp16_model = work / "fp16-variant"
        subprocess.run([sys.executable, __file__, "--model", str(args.model),
                        "--make-fp16-variant", str(args.model), str(work)], check=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    env.pop("LDCP_DTYPE", None)

    figures = {v: {"max_rss": [], "tracked_peak": [], "wall": []} for v in variants}
    for round_index in range(args.runs):
        k = round_index % len(variants)
        for weights, dtype in variants[k:] + variants[:k]:
            model = fp16_model if weights == "fp16" else args.model
            tag = f"{weights}-{dtype}"
            argv = [args.ldcp, "generate", "--model", str(model), "--prompt", "a photo of a cat",
                    "--width", str(args.width), "--height", str(args.height), "--steps",
                    str(args.steps), "--sampler", args.sampler, "--seed", "0", "--dtype", dtype,
                    "--out", str(work / f"{tag}.png")]
            if weights == "fp16":
                argv.append("--fp16-weights")
            wall, rss, code, output, _ = measure(argv, env, work / f"{tag}-{round_index}.log")
            if code != 0:
                print(f"{tag} failed (exit {code}):\n{output[-3000:]}", file=sys.stderr)
                return 1
            peak = re.search(r"peak memory ([0-9.]+) MiB", output)
            f = figures[(weights, dtype)]
            f["max_rss"].append(rss)
            f["wall"].append(wall)
            if peak:
                f["tracked_peak"].append(float(peak.group(1)) * 2 ** 20)
            print(f"round {round_index + 1}: weights {weights}, --dtype {dtype}: max RSS "
                  f"{rss / 2 ** 20:.0f} MiB, wall {wall:.1f} s", file=sys.stderr, flush=True)

    med = {v: {k: (statistics.median(x) if x else None) for k, x in f.items()}
           for v, f in figures.items()}
    base = med.get(("fp32", "fp32"), {}).get("max_rss")
    print(f"\nldcp generate {args.model}: {args.width}x{args.height}, {args.steps} {args.sampler} "
          f"steps, {args.threads} threads; medians of {args.runs} alternating runs\n")
    print("| weights file | --dtype | max RSS MiB | x fp32/fp32 | tracked tensor peak MiB | "
          "process wall s |")
    print("|---|---|---|---|---|---|")
    for (weights, dtype), m in med.items():
        ratio = f"{m['max_rss'] / base:.2f}x" if base else "-"
        tracked = f"{m['tracked_peak'] / 2 ** 20:.0f}" if m["tracked_peak"] else "-"
        print(f"| {weights} | {dtype} | {m['max_rss'] / 2 ** 20:.0f} | {ratio} | {tracked} | "
              f"{m['wall']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(
            {"settings": {k: str(v) for k, v in vars(args).items()},
             "medians": {f"{w}/{d}": m for (w, d), m in med.items()}}, indent=1) + "\n")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
