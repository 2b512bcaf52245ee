"""Reference images of whole pipeline runs: diffusers' StableDiffusionPipeline on the tiny
model folders, for every sampler, plus runs that exercise the negative prompt, guidance rescale,
several images, DDIM eta, a size whose latent is not a power of two, and guidance off.

Writes DIR/ref/pipeline/cases.json (the parameters of each case) and images.safetensors
(case name -> float32 [num_images, H, W, 3] in [0, 1], diffusers' output_type="np").
With --sd15, runs the full SD1.5 architecture (DIR/models/sd15) at 64x64 for 2 steps instead,
into DIR/ref/pipeline-sd15.

With --dtype bf16, diffusers runs in bfloat16 (from_pretrained(dtype=torch.bfloat16), on
the CPU) into DIR/ref/pipeline-bf16 (or pipeline-sd15-bf16): a subset of the cases (every sampler
on one model, the negative prompt with guidance rescale, several images at an odd size, guidance
off), the references of the C++ pipeline loaded with PipelineOptions.dtype = kBFloat16. The
images are stored as float32 (diffusers' output_type="np" casts them).
"""

import argparse
import os

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
)

from common import mark_done, models_dir, ref_dir, save_json, save_tensors

SAMPLERS = {
    "pndm": (PNDMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
    "dpmpp_2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}),
}

PROMPT = "a photo of an astronaut riding a horse on mars"


def case(name, model, **overrides):
    params = dict(name=name, model=model, prompt=PROMPT, negative_prompt="", width=64, height=64,
                  steps=6, guidance_scale=7.5, guidance_rescale=0.0, sampler="pndm", eta=0.0,
                  seed=42, num_images=1)
    params.update(overrides)
    return params


def tiny_cases():
    cases = []
    for model, steps in (("tiny-a", 6), ("tiny-b", 4)):
        for i, sampler in enumerate(SAMPLERS):
            cases.append(case(f"{model}-{sampler}", model, sampler=sampler, steps=steps, seed=100 + i))
    cases += [
        case("negative-rescale", "tiny-a", negative_prompt="blurry, low quality",
             guidance_rescale=0.7, sampler="euler", steps=5),
        case("two-images-odd-size", "tiny-a", width=72, height=56, num_images=2,
             sampler="dpmpp_2m", steps=5, seed=7),
        case("ddim-eta", "tiny-b", sampler="ddim", eta=0.5, steps=5, seed=9),
        case("no-guidance", "tiny-b", guidance_scale=1.0, sampler="euler_a", steps=5, seed=11),
        case("long-prompt", "tiny-a", prompt=" ".join(["a very long prompt"] * 40), steps=4),
    ]
    return cases


def sd15_cases():
    return [
        case("sd15-pndm", "sd15", steps=2, seed=1),
        case("sd15-euler_a", "sd15", sampler="euler_a", steps=2, seed=2),
    ]


# The bf16 subset of tiny_cases(): every sampler on tiny-a, and the cases that take other paths.
BF16_TINY_CASES = {f"tiny-a-{sampler}" for sampler in SAMPLERS} | {
    "negative-rescale", "two-images-odd-size", "no-guidance"}

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def run(parity_dir, cases, part, dtype=torch.float32):
    out = ref_dir(parity_dir, part)
    images = {}
    pipes = {}
    for c in cases:
        if c["model"] not in pipes:
            pipe = StableDiffusionPipeline.from_pretrained(
                models_dir(parity_dir) / c["model"], safety_checker=None,
                requires_safety_checker=False, dtype=dtype)
            # The model's own scheduler config: a sampler built from another sampler's config
            # would inherit its options (e.g. use_karras_sigmas).
            pipes[c["model"]] = (pipe, dict(pipe.scheduler.config))
        pipe, scheduler_config = pipes[c["model"]]
        pipe.set_progress_bar_config(disable=True)
        cls, extra = SAMPLERS[c["sampler"]]
        pipe.scheduler = cls.from_config(scheduler_config, **extra)
        kwargs = {"eta": c["eta"]} if c["sampler"] == "ddim" else {}
        result = pipe(
            prompt=c["prompt"],
            negative_prompt=c["negative_prompt"] or None,
            width=c["width"],
            height=c["height"],
            num_inference_steps=c["steps"],
            guidance_scale=c["guidance_scale"],
            guidance_rescale=c["guidance_rescale"],
            num_images_per_prompt=c["num_images"],
            generator=torch.Generator("cpu").manual_seed(c["seed"]),
            output_type="np",
            **kwargs,
        )
        images[c["name"]] = torch.from_numpy(result.images).float()
        print(f"{c['name']}: {tuple(result.images.shape)}")
    save_tensors(out / "images.safetensors", images)
    save_json(out / "cases.json", cases)
    mark_done(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parity-dir", required=True)
    parser.add_argument("--sd15", action="store_true")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32",
                        help="diffusers' torch_dtype (default fp32); bf16 writes <part>-bf16")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    from pathlib import Path

    parity_dir = Path(args.parity_dir)
    dtype = DTYPES[args.dtype]
    suffix = "" if args.dtype == "fp32" else f"-{args.dtype}"
    with torch.no_grad():
        if args.sd15:
            run(parity_dir, sd15_cases(), "pipeline-sd15" + suffix, dtype)
        else:
            cases = tiny_cases()
            if args.dtype != "fp32":
                cases = [c for c in cases if c["name"] in BF16_TINY_CASES]
            run(parity_dir, cases, "pipeline" + suffix, dtype)


if __name__ == "__main__":
    main()
