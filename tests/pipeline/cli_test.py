"""End-to-end tests of the `ldcp` command-line tool (run by CTest as cli_ldcp).

- `ldcp init-demo-model` writes a folder that diffusers itself loads, and on which `ldcp generate`
  gives diffusers' image;
- `ldcp generate` on a folder written by diffusers' save_pretrained gives the same PNG as
  diffusers' StableDiffusionPipeline for the same seed, sampler, steps, guidance and size;
- `--init-image`, `--strength`, `--mask` give diffusers' Img2Img / Inpaint images
  (ref_img2img.py's cases), and their bad values an error naming the field;
- several images, and bad options or folders: a one-line error and a non-zero exit.
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline
from PIL import Image
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "common"))
from cli_checks import FAILURES, check, passed  # noqa: E402




def ldcp(binary, *args):
    return subprocess.run([binary, *map(str, args)], capture_output=True, text=True, timeout=600)


def diffusers_png(model, prompt, size, steps, guidance, seed, sampler):
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    if sampler == "euler_a":
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    image = pipe(prompt, width=size, height=size, num_inference_steps=steps,
                 guidance_scale=guidance, generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    return np.asarray(image, dtype=np.int16)


def compare_with_diffusers(binary, model, out_dir, tag, sampler="pndm"):
    prompt, size, steps, guidance, seed = "a castle on a hill at sunset", 64, 4, 7.5, 1234
    out = out_dir / f"{tag}.png"
    run = ldcp(binary, "generate", "--model", model, "--prompt", prompt, "--out", out, "--width",
               size, "--height", size, "--steps", steps, "--guidance", guidance, "--seed", seed,
               "--sampler", sampler)
    check(run.returncode == 0, f"{tag}: ldcp generate failed: {run.stderr}")
    if run.returncode != 0:
        return
    # The progress lines count the timesteps that ran (PNDM: one more than asked), ending full.
    progress = [l.split()[1] for l in run.stderr.splitlines() if l.startswith("denoising ")]
    check(bool(progress) and progress[-1].split("/")[0] == progress[-1].split("/")[1]
          and all(p.split("/")[1] == progress[-1].split("/")[1] for p in progress),
          f"{tag}: progress lines {progress}")
    ours = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
    ref = diffusers_png(model, prompt, size, steps, guidance, seed, sampler)
    diff = np.abs(ours - ref)
    print(f"{tag}: max |diff| {diff.max()}/255, mean {diff.mean():.4f}/255")
    check(ours.shape == ref.shape, f"{tag}: shape {ours.shape} != {ref.shape}")
    check(diff.max() <= 2, f"{tag}: max pixel difference {diff.max()} > 2/255")
    check(diff.mean() <= 0.5, f"{tag}: mean pixel difference {diff.mean()} > 0.5/255")


def img2img_against_diffusers(binary, parity_dir, tmp):
    """--init-image, --strength and --mask on cases of ref_img2img.py (diffusers' Img2Img and
    Inpaint pipelines), and their errors."""
    import json

    from safetensors.torch import load_file

    ref = parity_dir / "ref" / "img2img"
    cases = {c["name"]: c for c in json.loads((ref / "cases.json").read_text())}
    images = load_file(str(ref / "images.safetensors"))
    for name in ("img2img-pndm-0.6", "inpaint4-pndm-1.0", "inpaint9-euler-1.0"):
        c = cases[name]
        out = tmp / f"{name}.png"
        args = ["generate", "--model", parity_dir / "models" / c["model"], "--prompt", c["prompt"],
                "--out", out, "--steps", c["steps"], "--guidance", c["guidance_scale"], "--seed",
                c["seed"], "--sampler", c["sampler"], "--init-image", ref / c["init_image"],
                "--strength", c["strength"]]
        if c["mask_image"]:
            args += ["--mask", ref / c["mask_image"]]
        run = ldcp(binary, *args)
        check(run.returncode == 0, f"{name}: ldcp generate failed: {run.stderr}")
        if run.returncode != 0:
            continue
        ours = np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)
        expected = (images[name][0].numpy() * 255).round().astype(np.int16)
        diff = np.abs(ours - expected)
        print(f"{name}: max |diff| {diff.max()}/255, mean {diff.mean():.4f}/255")
        check(ours.shape == expected.shape and diff.max() <= 2 and diff.mean() <= 0.5,
              f"{name}: {ours.shape} vs {expected.shape}, max {diff.max()}, mean {diff.mean()}")
    base = ["generate", "--model", parity_dir / "models" / "tiny-a", "--prompt", "p", "--out",
            tmp / "x.png", "--steps", 4]
    init = ["--init-image", ref / "init.png"]
    expect_error(binary, "strength without init", *base, "--strength", 0.5, mentions="strength")
    expect_error(binary, "mask without init", *base, "--mask", ref / "mask.png",
                 mentions="mask_image")
    expect_error(binary, "strength 0", *base, *init, "--strength", 0, mentions="strength")
    expect_error(binary, "strength too small", *base, *init, "--strength", 0.1,
                 mentions="strength")
    expect_error(binary, "init size", *base, *init, "--width", 128, mentions="init_image")
    (tmp / "not-an-image.png").write_text("hello")
    expect_error(binary, "bad init image", *base, "--init-image", tmp / "not-an-image.png",
                 mentions="neither a PNG nor a JPEG")


def expect_error(binary, tag, *args, mentions=""):
    run = ldcp(binary, *args)
    lines = [line for line in run.stderr.strip().splitlines() if line.strip()]
    check(run.returncode != 0, f"{tag}: expected a non-zero exit, got 0")
    check(len(lines) >= 1, f"{tag}: expected an error message on stderr")
    check("Traceback" not in run.stderr and "terminate called" not in run.stderr,
          f"{tag}: crashed: {run.stderr}")
    if mentions:
        check(mentions in run.stderr, f"{tag}: error does not mention {mentions!r}: {run.stderr}")


def dtype_default(binary, demo, tmp):
    """Without --dtype nor LDCP_DTYPE: auto, resolved as ATen's cpuinfo sees this CPU (bf16 with
    avx512_bf16 or AMX-BF16, else fp32), printed; LDCP_DTYPE forces one."""
    caps = torch._C._cpu._get_cpu_capability()
    expected = "bf16" if caps.get("amx_bf16") or caps.get("avx512_bf16") else "fp32"
    env = {k: v for k, v in os.environ.items() if k != "LDCP_DTYPE"}
    args = [binary, "generate", "--model", demo, "--prompt", "auto", "--out", tmp / "auto.png",
            "--width", 64, "--height", 64, "--steps", 2, "--seed", 5]
    run = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=600, env=env)
    check(run.returncode == 0, f"default dtype: generate failed: {run.stderr}")
    lines = [l for l in run.stderr.splitlines() if l.startswith("dtype: ")]
    check(lines and lines[0].startswith(f"dtype: {expected} (auto: "),
          f"default dtype: expected {expected} from auto, stderr {lines}")
    env["LDCP_DTYPE"] = "fp32"
    run = subprocess.run(list(map(str, args)), capture_output=True, text=True, timeout=600, env=env)
    check(run.returncode == 0 and not any(l.startswith("dtype: ") for l in run.stderr.splitlines()),
          f"LDCP_DTYPE=fp32: {run.returncode} {run.stderr[-300:]}")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ldcp", required=True)
    parser.add_argument("--parity-dir", required=True, type=Path)
    args = parser.parse_args()
    binary = args.ldcp
    with tempfile.TemporaryDirectory(prefix="ldcp-cli-") as tmp:
        tmp = Path(tmp)
        demo = tmp / "demo"
        run = ldcp(binary, "init-demo-model", demo, "--config", "tiny")
        check(run.returncode == 0, f"init-demo-model failed: {run.stderr}")
        compare_with_diffusers(binary, demo, tmp, "demo-model")
        compare_with_diffusers(binary, args.parity_dir / "models" / "tiny-a", tmp, "tiny-a")
        compare_with_diffusers(binary, args.parity_dir / "models" / "tiny-b", tmp, "tiny-b-euler_a",
                               sampler="euler_a")

        run = ldcp(binary, "generate", "--model", demo, "--prompt", "two", "--out", tmp / "many.png",
                   "--width", 64, "--height", 64, "--steps", 2, "--num-images", 2, "--seed", 3)
        check(run.returncode == 0, f"--num-images 2 failed: {run.stderr}")
        for i in range(2):
            check((tmp / f"many-{i}.png").exists(), f"many-{i}.png was not written")
        check(not (tmp / "many.png").exists(), "many.png should not exist with --num-images 2")

        dtype_default(binary, demo, tmp)
        img2img_against_diffusers(binary, args.parity_dir, tmp)

        base = ["generate", "--model", demo, "--out", tmp / "x.png"]
        expect_error(binary, "missing prompt", *base, mentions="--prompt")
        expect_error(binary, "bad width", *base, "--prompt", "p", "--width", 60, mentions="width")
        expect_error(binary, "bad sampler", *base, "--prompt", "p", "--sampler", "heun",
                     mentions="sampler")
        expect_error(binary, "bad dtype", *base, "--prompt", "p", "--dtype", "int8", mentions="dtype")
        expect_error(binary, "missing model", "generate", "--model", tmp / "nope", "--prompt", "p",
                     "--out", tmp / "x.png", mentions="nope")
        (tmp / "empty").mkdir()
        expect_error(binary, "not a model folder", "generate", "--model", tmp / "empty", "--prompt",
                     "p", "--out", tmp / "x.png", mentions="model_index.json")
        expect_error(binary, "unknown demo config", "init-demo-model", tmp / "d2", "--config", "xl")
        expect_error(binary, "no subcommand")
    print(f"{passed()} passed, {len(FAILURES)} failed")
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
