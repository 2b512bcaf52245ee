"""Trains a small model of the SD1.5 architecture family with the pinned diffusers/transformers
classes and saves it as a diffusers folder that `ldcp` loads as it is.

  .venv/bin/python bench/reference_model/train.py --preset faces --out ~/.cache/ldcp/faces64
  .venv/bin/python bench/reference_model/train.py --preset shapes --out data/demo-model
  ... --quick            a few minutes: the same stages on a few images, for the tests

Stages (each resumable: a checkpoint every --checkpoint-every steps; run the same command again
to continue; --fresh starts over):
  1. AutoencoderKL (3 blocks: 4x downsampling, 4 latent channels) on the training images:
     L1 + L2 reconstruction with SD's tiny KL weight; then the latent scaling factor
     (1 / std of the training latents, as SD's 0.18215 was chosen).
  2. UNet2DConditionModel (CrossAttnDownBlock2D x2 + DownBlock2D, UNetMidBlock2DCrossAttn,
     UpBlock2D + CrossAttnUpBlock2D x2; ResnetBlock2D and GEGLU feed-forwards: every gate type
     SD1.5's U-Net has) on the cached latents: DDPM epsilon objective over SD1.5's noise schedule
     (scaled_linear betas 0.00085-0.012, 1000 steps), so PNDM and the other samplers apply
     unchanged; 10 % caption dropout (the empty prompt) so that classifier-free guidance works;
     an EMA of the weights is what is saved.
The text encoder is a small CLIPTextModel from a seeded random initialisation: frozen there for
the faces (one caption: its output is a fixed function of the tokens), trained with the U-Net for
the shapes (a frozen one mixed up which colour was the shape's and which the background's).

Deterministic for a seed: every step draws its batch and noise from a generator seeded by
(seed, stage, step), so a resumed run equals an uninterrupted one. Writes, under --out:
model_index.json and the component folders, train_log.csv (the loss per step), report.json
(VAE PSNR on the held-out images, the latent scaling factor, timings) and loss.png.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets  # noqa: E402
import vocab  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CLIP_DIR = REPO / "data" / "clip"

SD15_SCHEDULER = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True,
                      steps_offset=1, clip_sample=False, trained_betas=None)

UNET_BLOCKS = dict(down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))

# Sizes chosen for two CPU cores: the faces preset trains in about 90 minutes, the shapes preset
# (the committed demo model, at most 4 MB in fp16) in about 20.
PRESETS = {
    "faces": dict(
        resolution=64,
        cut_vocabulary=False,
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4),
        unet=dict(block_out_channels=(64, 128, 128), layers_per_block=1, attention_head_dim=8,
                  norm_num_groups=32),
        vae=dict(block_out_channels=(32, 64, 64), layers_per_block=1, norm_num_groups=16),
        vae_steps=1000, vae_batch=16, vae_lr=5e-4,
        unet_steps=2000, unet_batch=32, unet_lr=3e-4,
        save_dtype="float32",
    ),
    "shapes": dict(
        resolution=64,
        cut_vocabulary=True,
        train_text_encoder=True,  # a frozen random encoder did not bind colours to shape/background
        train_count=4096, held_out_count=128,
        text=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4),
        unet=dict(block_out_channels=(32, 64, 64), layers_per_block=1, attention_head_dim=8,
                  norm_num_groups=16),
        vae=dict(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=16),
        vae_steps=1200, vae_batch=16, vae_lr=1e-3,
        unet_steps=2500, unet_batch=32, unet_lr=5e-4,
        save_dtype="float16",
    ),
}
QUICK = dict(train_limit=48, held_out_limit=8, vae_steps=12, vae_batch=4, unet_steps=16,
             unet_batch=4, train_count=48, held_out_count=8)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), required=True)
    p.add_argument("--out", type=Path, required=True, help="the diffusers folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few steps on a few images (tests)")
    p.add_argument("--vae-steps", type=int, help="override the preset's VAE steps")
    p.add_argument("--unet-steps", type=int, help="override the preset's U-Net steps")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads (0: torch's default: all cores, or OMP_NUM_THREADS)")
    p.add_argument("--checkpoint-every", type=int, default=200)
    p.add_argument("--work-dir", type=Path,
                   help="checkpoints and caches (default: the cache, by a hash of the settings)")
    p.add_argument("--fresh", action="store_true", help="ignore existing checkpoints")
    return p.parse_args()


def settings_of(args: argparse.Namespace) -> dict:
    s = dict(PRESETS[args.preset])
    if args.quick:
        s.update(QUICK)
    if args.vae_steps is not None:
        s["vae_steps"] = args.vae_steps
    if args.unet_steps is not None:
        s["unet_steps"] = args.unet_steps
    s["preset"], s["seed"], s["quick"] = args.preset, args.seed, args.quick
    return s


def step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 100_003 + step)


def lr_at(step: int, total: int, peak: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def batch_images(data: torch.Tensor, batch: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of indices drawn with replacement and a random horizontal flip of each."""
    idx = torch.randint(0, data.shape[0], (batch,), generator=g)
    flip = torch.rand(batch, generator=g) < 0.5
    x = data[idx]
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x, idx


class LossLog:
    def __init__(self, path: Path, resume: bool):
        self.path = path
        if not resume or not path.exists():
            path.write_text("stage,step,loss,lr,seconds\n")

    def truncate(self, stage: str, step: int) -> None:
        """Drops rows a resumed stage will write again (after its checkpoint)."""
        rows = self.path.read_text().splitlines()
        keep = [rows[0]] + [r for r in rows[1:]
                            if not (r.split(",")[0] == stage and int(r.split(",")[1]) >= step)]
        self.path.write_text("\n".join(keep) + "\n")

    def add(self, stage: str, step: int, loss: float, lr: float, seconds: float) -> None:
        with self.path.open("a") as f:
            f.write(f"{stage},{step},{loss:.6f},{lr:.3e},{seconds:.2f}\n")


def save_checkpoint(path: Path, **state) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_loop(stage: str, stage_id: int, model: torch.nn.Module, total: int, peak_lr: float,
               loss_of, work: Path, log: LossLog, s: dict, checkpoint_every: int,
               fresh: bool, ema: torch.nn.Module | None = None) -> None:
    """Runs `total` AdamW steps of loss_of(generator) with checkpoints; resumes from one."""
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.01)
    ckpt = work / f"checkpoint-{stage}.pt"
    start, elapsed = 0, 0.0
    if ckpt.exists() and not fresh:
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, elapsed = state["step"], state["seconds"]
        log.truncate(stage, start)
        print(f"{stage}: resuming at step {start} of {total}", file=sys.stderr)
    model.train()
    bar = tqdm(total=total, initial=start, desc=stage, unit="step", dynamic_ncols=True,
               file=sys.stderr, disable=None, mininterval=2.0)
    t0 = time.time() - elapsed
    for step in range(start, total):
        lr = lr_at(step, total, peak_lr)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = loss_of(step_generator(s["seed"], stage_id, step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if ema is not None:
            decay = min(0.999, (1 + step) / (10 + step))
            with torch.no_grad():
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - decay)
        log.add(stage, step, loss.item(), lr, time.time() - t0)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % checkpoint_every == 0 or step + 1 == total:
            state = dict(model=model.state_dict(), optimizer=opt.state_dict(), step=step + 1,
                         seconds=time.time() - t0)
            if ema is not None:
                state["ema"] = ema.state_dict()
            save_checkpoint(ckpt, **state)
    bar.close()
    model.eval()


def make_text_encoder(s: dict, tokenizer_dir: Path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if s["cut_vocabulary"]:
        words = datasets.shape_vocabulary()
        vocab.write_cut_vocabulary(words, CLIP_DIR, tokenizer_dir)
    else:
        tokenizer_dir.mkdir(parents=True, exist_ok=True)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(CLIP_DIR / name, tokenizer_dir / name)
    tokenizer = CLIPTokenizer(vocab=str(tokenizer_dir / "vocab.json"),
                              merges=str(tokenizer_dir / "merges.txt"),
                              pad_token=vocab.EOS, model_max_length=77)
    torch.manual_seed(s["seed"] + 17)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=77, layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, hidden_act="quick_gelu", **s["text"])).eval()
    text_encoder.requires_grad_(False)
    return tokenizer, text_encoder


@torch.no_grad()
def encode_texts(tokenizer, text_encoder, texts: list[str]) -> torch.Tensor:
    ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pooled PSNR of images in [-1, 1], as uint8 pixels."""
    qa = ((a.clamp(-1, 1) + 1) * 127.5).round()
    qb = ((b.clamp(-1, 1) + 1) * 127.5).round()
    mse = (qa - qb).pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def plot_losses(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(log_path.open()))
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, stage, title in zip(axes, ("vae", "unet"),
                                ("AutoencoderKL: L1 + L2 + KL", "U-Net: epsilon MSE")):
        steps = np.array([int(r["step"]) for r in rows if r["stage"] == stage])
        loss = np.array([float(r["loss"]) for r in rows if r["stage"] == stage])
        if len(loss) == 0:
            continue
        window = max(1, len(loss) // 50)
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps, loss, alpha=0.25, lw=0.8, label="per step")
        ax.plot(steps[window - 1:], smooth, lw=1.8, label=f"mean of {window}")
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    s = settings_of(args)
    if args.threads:  # else torch's default (all cores, or OMP_NUM_THREADS)
        torch.set_num_threads(args.threads)
    from diffusers import (AutoencoderKL, DDPMScheduler, PNDMScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)

    # Checkpoints are reused only by the same settings and the same trainer code.
    code = b"".join((Path(__file__).parent / f).read_bytes()
                    for f in ("train.py", "datasets.py", "vocab.py"))
    key = hashlib.sha256(json.dumps(s, sort_keys=True, default=str).encode() + code).hexdigest()[:12]
    work = args.work_dir or datasets.cache_dir() / "runs" / f"{args.preset}-{key}"
    work.mkdir(parents=True, exist_ok=True)
    out = args.out
    staging = work / "model"
    log = LossLog(work / "train_log.csv", resume=not args.fresh)
    t_start = time.time()

    res = s["resolution"]
    if args.preset == "faces":
        train, held_out = datasets.load_faces(res, s.get("train_limit"), s.get("held_out_limit"))
    else:
        train, held_out = datasets.load_shapes(res, s["train_count"], s["held_out_count"],
                                               s["seed"])
    print(f"{args.preset}: {len(train.images)} training and {len(held_out.images)} held-out "
          f"images at {res}x{res} (data {datasets.fingerprint(train.images)}); work dir {work}",
          file=sys.stderr)
    x_train = to_tensor(train.images)
    x_held = to_tensor(held_out.images)

    # 1. The autoencoder.
    torch.manual_seed(s["seed"])
    n_blocks = len(s["vae"]["block_out_channels"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, sample_size=res,
                        down_block_types=("DownEncoderBlock2D",) * n_blocks,
                        up_block_types=("UpDecoderBlock2D",) * n_blocks, **s["vae"])

    def vae_loss(g: torch.Generator) -> torch.Tensor:
        x, _ = batch_images(x_train, s["vae_batch"], g)
        posterior = vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = posterior.kl().mean() / x[0].numel()
        return F.l1_loss(rec, x) + F.mse_loss(rec, x) + 1e-6 * kl

    train_loop("vae", 1, vae, s["vae_steps"], s["vae_lr"], vae_loss, work, log, s,
               args.checkpoint_every, args.fresh)
    vae.requires_grad_(False)

    # The latents of every training image and its mirror image: posterior mean and std.
    with torch.no_grad():
        both = torch.cat([x_train, x_train.flip(-1)])
        dists = [vae.encode(both[i:i + 64]).latent_dist for i in range(0, len(both), 64)]
        lat_mean = torch.cat([d.mean for d in dists])
        lat_std = torch.cat([d.std for d in dists])
        # SD's choice: 1 / std of sampled latents (mean and noise together).
        sampled = lat_mean + lat_std * torch.randn(lat_mean.shape, generator=step_generator(
            s["seed"], 3, 0))
        scaling_factor = float(1.0 / sampled.std().item())
        rec = torch.cat([vae.decode(vae.encode(x_held[i:i + 64]).latent_dist.mean).sample
                         for i in range(0, len(x_held), 64)])
        vae_psnr = psnr(rec, x_held)
    vae.register_to_config(scaling_factor=scaling_factor)
    print(f"vae: held-out reconstruction PSNR {vae_psnr:.2f} dB, latent scaling factor "
          f"{scaling_factor:.5f}", file=sys.stderr)

    # 2. The U-Net, on frozen text embeddings, or with the text encoder trained beside it.
    tokenizer, text_encoder = make_text_encoder(s, staging / "tokenizer")
    captions = sorted(set(train.captions))
    caption_index = {c: i for i, c in enumerate(captions)}
    train_text = s.get("train_text_encoder", False)
    caption_ids = tokenizer(captions + [""], padding="max_length", max_length=77,
                            truncation=True, return_tensors="pt").input_ids
    embeddings = None if train_text else encode_texts(tokenizer, text_encoder, captions + [""])
    empty = len(captions)
    train_caption_ids = torch.tensor([caption_index[c] for c in train.captions])
    torch.manual_seed(s["seed"] + 1)
    unet = UNet2DConditionModel(sample_size=res // 2 ** (n_blocks - 1), in_channels=4,
                                out_channels=4, cross_attention_dim=s["text"]["hidden_size"],
                                norm_eps=1e-5, **UNET_BLOCKS, **s["unet"])
    text_encoder.requires_grad_(train_text)
    trained = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder} if train_text
                                  else {"unet": unet})
    ema = copy.deepcopy(trained)
    ema.requires_grad_(False)
    noise_schedule = DDPMScheduler(**{k: v for k, v in SD15_SCHEDULER.items()
                                      if k in ("beta_start", "beta_end", "beta_schedule",
                                               "num_train_timesteps")})
    n_images = x_train.shape[0]

    def unet_loss(g: torch.Generator) -> torch.Tensor:
        b = s["unet_batch"]
        idx = torch.randint(0, 2 * n_images, (b,), generator=g)  # second half: mirror images
        z = (lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=g))
        z = z * scaling_factor
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, 1000, (b,), generator=g)
        cond = train_caption_ids[idx % n_images]
        cond = torch.where(torch.rand(b, generator=g) < 0.1, torch.full_like(cond, empty), cond)
        noisy = noise_schedule.add_noise(z, noise, t)
        context = text_encoder(caption_ids[cond])[0] if train_text else embeddings[cond]
        pred = unet(noisy, t, context).sample
        return F.mse_loss(pred, noise)

    train_loop("unet", 2, trained, s["unet_steps"], s["unet_lr"], unet_loss, work, log, s,
               args.checkpoint_every, args.fresh, ema=ema)

    # 3. The diffusers folder.
    dtype = getattr(torch, s["save_dtype"])
    if train_text:
        text_encoder = ema["text_encoder"]
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=ema["unet"], scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
                                   safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(dtype).save_pretrained(staging, safe_serialization=True)
    report = dict(preset=args.preset, seed=s["seed"], quick=s["quick"], settings=s,
                  train_images=int(n_images), held_out_images=int(x_held.shape[0]),
                  data_fingerprint=datasets.fingerprint(train.images),
                  vae_held_out_psnr_db=vae_psnr, latent_scaling_factor=scaling_factor,
                  parameters={name: sum(p.numel() for p in m.parameters())
                              for name, m in (("unet", ema["unet"]), ("vae", vae),
                                              ("text_encoder", text_encoder))},
                  threads=torch.get_num_threads(), torch=torch.__version__,
                  seconds_this_run=time.time() - t_start,
                  command=" ".join(["bench/reference_model/train.py"] + sys.argv[1:]))
    if args.preset == "shapes":  # what the demo model knows, for scripts/demo.sh to print
        (staging / "colours.txt").write_text("\n".join(datasets.COLOURS) + "\n")
        (staging / "shapes.txt").write_text("\n".join(datasets.SHAPES) + "\n")
        (staging / "prompts.txt").write_text("\n".join(datasets.shape_prompts()) + "\n")
    (staging / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    shutil.copy(work / "train_log.csv", staging / "train_log.csv")
    plot_losses(staging / "train_log.csv", staging / "loss.png")
    if out.resolve() != staging.resolve():
        if out.exists():
            if any(out.iterdir()) and not (out / "model_index.json").exists():
                raise SystemExit(f"--out {out}: exists and is not a model folder; not replacing it")
            shutil.rmtree(out)
        shutil.copytree(staging, out)
    print(f"wrote {out} (U-Net {report['parameters']['unet'] / 1e6:.2f} M parameters, "
          f"VAE held-out PSNR {vae_psnr:.2f} dB)", file=sys.stderr)


if __name__ == "__main__":
    main()
