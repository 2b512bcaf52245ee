#!/usr/bin/env python3
"""ldcp generate side by side with diffusers' StableDiffusionPipeline on the same model folder.

Runs diffusers (from this repository's .venv) and `ldcp generate` at each --levels pruning level
with the same prompt, size, steps, guidance, sampler (the folder's PNDM) and seed, alternately
(D, L0, L0.5, then L0, L0.5, D, ...) for --runs rounds after one untimed warm-up round, each
run as its own child process measured the same way:

- wall time of the whole process (load + generate + save), from the parent;
- generation time (text encoding, denoising, decoding: the library call), as the child
  reports it (diffusers: timed around pipe(...); ldcp: the "total" it prints);
- peak memory: the child's maximum resident set size (os.wait4's ru_maxrss);
- CPU time of the whole process (user + system, all threads; os.wait4's rusage): on a machine
  shared with other work the wall time grows with their load, the CPU time much less;
- on CUDA, the GPU's peak: diffusers' torch.cuda.max_memory_allocated() after the generation,
  ldcp's "peak memory" line (its MemoryMeter: the caching allocator's peak allocated bytes).

--dtype fp32|bf16|fp16 (default fp32) runs both in that dtype: diffusers loads with
from_pretrained(dtype=...) (torch_dtype in older diffusers), ldcp gets --dtype. --device
cpu|cuda (default cpu): diffusers' pipeline .to("cuda") (its default attention processor,
AttnProcessor2_0: torch's scaled_dot_product_attention), ldcp gets --device. The initial noise
comes from a CPU generator on every device, torch.Generator("cpu").manual_seed(seed) (diffusers'
randn_tensor draws on the CPU and moves the latents to the device), which is what ldcp's --seed
reproduces on every device: the images stay comparable, and the PSNR line means the same on
CUDA as on the CPU.

Prints the medians and each one's ratio to diffusers, the agreement of the level-0 image with
diffusers' (PSNR), and with --json writes every figure.

    .venv/bin/python bench/compare_diffusers.py --model /tmp/sd15 --ldcp build/tools/ldcp \\
        --width 512 --height 512 --steps 20 --runs 3
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DTYPES = ("fp32", "bf16", "fp16")


def torch_dtypes():
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run_diffusers_child(args):
    """In the child: one diffusers generation; prints a JSON line with its timings."""
    start = time.perf_counter()
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    TORCH_DTYPES = torch_dtypes()

    torch.set_num_threads(args.threads)
    pipe = StableDiffusionPipeline.from_pretrained(args.model, safety_checker=None,
                                                   requires_safety_checker=False,
                                                   dtype=TORCH_DTYPES[args.dtype])
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    cuda = args.device.startswith("cuda")
    if cuda:
        pipe = pipe.to(args.device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    loaded = time.perf_counter()
    with torch.inference_mode():
        image = pipe(args.prompt, width=args.width, height=args.height,
                     num_inference_steps=args.steps, guidance_scale=args.guidance,
                     generator=torch.Generator("cpu").manual_seed(args.seed)).images[0]
    if cuda:
        torch.cuda.synchronize()
    generated = time.perf_counter()
    image.save(args.child_out)
    processors = sorted({type(p).__name__ for p in pipe.unet.attn_processors.values()})
    print(json.dumps({"load_s": loaded - start, "generate_s": generated - loaded,
                      "threads": torch.get_num_threads(), "attention": processors,
                      "cuda_peak_bytes": torch.cuda.max_memory_allocated() if cuda else None}))


def measure(argv, env, log_path):
    """Runs argv as a child; returns (wall s, max RSS bytes, exit code, output, CPU s)."""
    with open(log_path, "w") as log:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
        child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    output = Path(log_path).read_text(errors="replace")
    return wall, usage.ru_maxrss * 1024, child.returncode, output, usage.ru_utime + usage.ru_stime


def psnr(a_path, b_path):
    import numpy as np
    from PIL import Image

    a = np.asarray(Image.open(a_path).convert("RGB"), dtype=np.float64)
    b = np.asarray(Image.open(b_path).convert("RGB"), dtype=np.float64)
    if a.shape != b.shape:
        return float("nan")
    mse = ((a - b) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def markdown_table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] +
                     [line(r) for r in rows])


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder in diffusers format")
    parser.add_argument("--ldcp", default=str(REPO / "build" / "tools" / "ldcp"),
                        help="the ldcp binary")
    parser.add_argument("--python", default=sys.executable,
                        help="Python with torch and diffusers (default: this one)")
    parser.add_argument("--prompt", default="a photograph of an astronaut riding a horse")
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="dtype of both: diffusers' from_pretrained dtype, ldcp's --dtype")
    parser.add_argument("--device", default="cpu",
                        help="cpu, cuda or cuda:N: diffusers' .to(device), ldcp's --device")
    parser.add_argument("--levels", default="0,0.5", help="ldcp pruning levels to run")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="intra-op threads of both (OMP_NUM_THREADS)")
    parser.add_argument("--out", help="folder for images and logs (default: a temporary one)")
    parser.add_argument("--json", help="write every figure to this file")
    parser.add_argument("--child-diffusers", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_diffusers:
        run_diffusers_child(args)
        return 0

    if not (Path(args.model) / "model_index.json").is_file():
        parser.error(f"--model {args.model}: no model_index.json there")
    if not os.access(args.ldcp, os.X_OK):
        parser.error(f"--ldcp {args.ldcp}: not an executable (build the ldcp target)")
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", args.device):
        parser.error(f"--device {args.device}: expected cpu, cuda or cuda:N")
    if args.runs < 1 or args.warmup < 0:
        parser.error("--runs must be >= 1 and --warmup >= 0")
    try:
        levels = [float(x) for x in args.levels.split(",")]
    except ValueError:
        parser.error(f"--levels {args.levels!r}: not comma-separated numbers")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="ldcp-vs-diffusers-"))
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONDONTWRITEBYTECODE="1")

    common = dict(prompt=args.prompt, width=args.width, height=args.height, steps=args.steps,
                  guidance=args.guidance, seed=args.seed, dtype=args.dtype, device=args.device)
    cuda = args.device.startswith("cuda")

    def diffusers_argv(image):
        argv = [args.python, str(Path(__file__).resolve()), "--child-diffusers", "--model",
                args.model, "--child-out", str(image), "--threads", str(args.threads)]
        for key, value in common.items():
            argv += [f"--{key}", str(value)]
        return argv

    def ldcp_argv(image, level):
        argv = [args.ldcp, "generate", "--model", args.model, "--out", str(image)]
        for key, value in common.items():
            argv += [f"--{key}", str(value)]
        if level > 0:
            argv += ["--pruning-level", str(level)]
        return argv

    variants = [("diffusers", None)] + [(f"ldcp L{level:g}", level) for level in levels]
    figures = {name: {"wall_s": [], "cpu_s": [], "generate_s": [], "max_rss_bytes": [],
                      "ldcp_tensor_peak_bytes": [], "cuda_peak_bytes": []}
               for name, _ in variants}
    images = {}
    total_rounds = args.warmup + args.runs
    attention = []  # diffusers' attention processors, as its child reports them
    for round_index in range(total_rounds):
        timed = round_index >= args.warmup
        k = round_index % len(variants)
        for name, level in variants[k:] + variants[:k]:
            tag = re.sub(r"[^A-Za-z0-9.]+", "_", name)
            image = out / f"{tag}.png"
            argv = diffusers_argv(image) if level is None else ldcp_argv(image, level)
            wall, rss, code, output, cpu = measure(argv, env, out / f"{tag}-{round_index}.log")
            if code != 0:
                print(f"{name} failed (exit {code}):\n{output}", file=sys.stderr)
                return 1
            if level is None:
                line = [l for l in output.splitlines() if l.startswith("{")][-1]
                child = json.loads(line)
                generate_s = child["generate_s"]
                tensor_peak = None
                cuda_peak = child["cuda_peak_bytes"]
                attention = child["attention"]
            else:
                generate_s = float(re.search(r"total ([0-9.]+)s", output).group(1))
                tensor_peak = int(float(re.search(r"peak memory ([0-9.]+) MiB", output)
                                        .group(1)) * 2 ** 20)
                # On CUDA ldcp's measured peak is the caching allocator's (MemoryMeter).
                cuda_peak = tensor_peak if cuda else None
            images[name] = image
            print(f"{'run' if timed else 'warm-up'} {round_index + 1 - args.warmup if timed else round_index + 1}: "
                  f"{name}: wall {wall:.2f}s, CPU {cpu:.1f}s, generate {generate_s:.2f}s, "
                  f"max RSS {rss / 2 ** 20:.0f} MiB", file=sys.stderr, flush=True)
            if timed:
                f = figures[name]
                f["wall_s"].append(wall)
                f["cpu_s"].append(cpu)
                f["generate_s"].append(generate_s)
                f["max_rss_bytes"].append(rss)
                if tensor_peak is not None:
                    f["ldcp_tensor_peak_bytes"].append(tensor_peak)
                if cuda_peak is not None:
                    f["cuda_peak_bytes"].append(cuda_peak)

    med = {name: {key: (statistics.median(values) if values else None)
                  for key, values in f.items()} for name, f in figures.items()}
    ref = med["diffusers"]
    ratio = lambda a, b: f"{a / b:.2f}x" if a and b else "-"
    rows = []
    for name, _ in variants:
        m = med[name]
        rows.append([name, f"{m['wall_s']:.2f}", ratio(m["wall_s"], ref["wall_s"]),
                     f"{m['cpu_s']:.1f}", ratio(m["cpu_s"], ref["cpu_s"]),
                     f"{m['generate_s']:.2f}", ratio(m["generate_s"], ref["generate_s"]),
                     f"{m['max_rss_bytes'] / 2 ** 20:.0f}",
                     ratio(m["max_rss_bytes"], ref["max_rss_bytes"])])
        if cuda:
            rows[-1] += [f"{m['cuda_peak_bytes'] / 2 ** 20:.0f}",
                         ratio(m["cuda_peak_bytes"], ref["cuda_peak_bytes"])]
    where = f"{args.device} (diffusers' attention: {', '.join(attention)})" if cuda else "CPU"
    print(f"ldcp generate vs diffusers {args.model}: {args.width}x{args.height}, {args.steps} PNDM "
          f"steps, guidance {args.guidance}, {args.dtype} {where}, {args.threads} threads, CPU "
          f"generator; medians of {args.runs} alternating runs (after {args.warmup} warm-up)\n")
    header = ["", "process wall s", "x diffusers", "process CPU s", "x diffusers",
              "generation s", "x diffusers", "max RSS MiB", "x diffusers"]
    if cuda:
        header += ["CUDA peak MiB", "x diffusers"]
    print(markdown_table(header, rows))
    agreement = {}
    for name, level in variants[1:]:
        agreement[name] = psnr(images[name], images["diffusers"])
    print("\nimage PSNR against diffusers' image: " +
          ", ".join(f"{name} {value:.1f} dB" for name, value in agreement.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"settings": {**common, "model": args.model, "threads": args.threads,
                          "runs": args.runs, "warmup": args.warmup, "levels": levels,
                          "generator": "cpu", "diffusers_attention": attention},
             "runs": figures, "medians": med,
             "psnr_vs_diffusers_db": {k: (v if v != float("inf") else None)
                                     for k, v in agreement.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
