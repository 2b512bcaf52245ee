"""Writes DIR/models/sd15: the exact Stable Diffusion 1.5 architecture (the configs of the
stable-diffusion-v1-5 repository) with random weights, saved by diffusers' save_pretrained.
About 1.07 B parameters, 4.3 GB in float32.
"""

import hashlib
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from common import CLIP_VOCAB_DIR, models_dir, parse_args
from make_models import SD15_SCHEDULER, clip_tokenizer


def build() -> StableDiffusionPipeline:
    torch.manual_seed(15)
    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                       num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                       hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
                       bos_token_id=0, eos_token_id=2, pad_token_id=1)
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                          "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                        "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        cross_attention_dim=768,
        attention_head_dim=8,
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
    ).eval()
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )


def main() -> None:
    args = parse_args(__doc__)
    out = models_dir(args.parity_dir) / "sd15"
    stamp_value = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    stamp = out / "STAMP"
    if stamp.exists() and stamp.read_text() == stamp_value:
        print(f"{out} is up to date")
        return
    shutil.rmtree(out, ignore_errors=True)
    with torch.no_grad():
        build().save_pretrained(out, safe_serialization=True)
    for vocab_file in ("vocab.json", "merges.txt"):
        shutil.copy(CLIP_VOCAB_DIR / vocab_file, out / "tokenizer" / vocab_file)
    stamp.write_text(stamp_value)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
