"""LoRA: the side branch against merging, on the demo model (README "LoRA").

Writes a random kohya LoRA (rank 8, every Linear and Conv2d of the U-Net and the text encoder:
the heaviest case, LoCon on every convolution) for the model, then measures
  - ldcp generate: the denoising time without a LoRA and with it (ldcp's side branch), the
    median of --runs runs each (the "denoise" figure ldcp prints);
  - diffusers on the same model and file, the two ways it can apply a LoRA: PEFT's side branch
    (load_lora_weights + set_adapters) and merging into the weights (fuse_lora before the run,
    unfuse_lora after: what a per-batch merge and unmerge costs), and no LoRA.
Prints one table. Usage:
  .venv/bin/python bench/lora_bench.py --model data/demo-model --ldcp build/tools/ldcp
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers.integrations.peft as transformers_peft
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "parity"))
from ref_lora import kohya_factors  # noqa: E402  (one copy of the kohya writer)

# As in tests/parity/ref_lora.py: transformers 5.24 asks for peft >= 0.22 (not on PyPI).
transformers_peft.check_peft_version = lambda min_version: None

PROMPT = "a red circle on a blue background"


def ldcp_denoise(ldcp, model, out, steps, extra):
    r = subprocess.run([ldcp, "generate", "--model", model, "--prompt", PROMPT, "--steps",
                        str(steps), "--sampler", "euler", "--seed", "1", "--dtype", "fp32",
                        "--linear-backend", "aten", "--out", out, *extra],
                       capture_output=True, text=True, check=True)
    return float(re.search(r"denoise ([0-9.]+)s", r.stdout + r.stderr).group(1))


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/demo-model")
    parser.add_argument("--ldcp", default="build/tools/ldcp")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="ldcp-lora-bench-"))
    pipe = StableDiffusionPipeline.from_pretrained(args.model, torch_dtype=torch.float32,
                                                   safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    lora = work / "bench.safetensors"
    generator = torch.Generator().manual_seed(0)
    state = {}
    kohya_factors("lora_unet_", pipe.unet, generator, state)
    kohya_factors("lora_te_text_model_", pipe.text_encoder, generator, state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(lora))

    rows = []
    for name, extra in (("no LoRA", []), ("side branch", ["--lora", f"{lora}:1.0"])):
        times = [ldcp_denoise(args.ldcp, args.model, str(work / "x.png"), args.steps, extra)
                 for _ in range(args.runs)]
        rows.append((f"ldcp generate, {name}", statistics.median(times)))

    def run():
        return pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5,
                    generator=torch.Generator().manual_seed(1), output_type="np")

    def timed(before=None, after=None):
        times = []
        for _ in range(args.runs):
            start = time.perf_counter()
            if before:
                before()
            run()
            if after:
                after()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    rows.append(("diffusers, no LoRA (whole run)", timed()))
    pipe.load_lora_weights(str(work), weight_name=lora.name, adapter_name="bench")
    pipe.set_adapters(["bench"], adapter_weights=[1.0])
    rows.append(("diffusers, PEFT side branch (whole run)", timed()))
    rows.append(("diffusers, fuse_lora + run + unfuse_lora", timed(
        lambda: pipe.fuse_lora(adapter_names=["bench"]), lambda: pipe.unfuse_lora())))
    start = time.perf_counter()
    for _ in range(args.runs):
        pipe.fuse_lora(adapter_names=["bench"])
        pipe.unfuse_lora()
    rows.append(("diffusers, fuse_lora + unfuse_lora alone", (time.perf_counter() - start) / args.runs))
    print(f"{args.steps} euler steps, 64x64, fp32, one thread; median of {args.runs} runs")
    for name, seconds in rows:
        print(f"  {name:45s} {seconds:8.3f} s")


if __name__ == "__main__":
    with torch.no_grad():
        main()
