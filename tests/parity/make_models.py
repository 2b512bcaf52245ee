"""Writes the small random-weight model folders the parity tests load, with diffusers'
save_pretrained (safetensors): DIR/models/tiny-a, tiny-b (fp32) and tiny-a-fp16 (tiny-a's
weights as *.fp16.safetensors variant files only). tiny-a's tokenizer folder also has
vocab.json and merges.txt, as SD1.5's has.

The configurations differ in layers per block, block widths, head counts, projection type,
text width and activation, so that config.json really decides the architecture.
"""

import hashlib
import shutil
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from common import CLIP_VOCAB_DIR, models_dir, parse_args

# SD1.5's scheduler_config.json.
SD15_SCHEDULER = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    num_train_timesteps=1000,
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    clip_sample=False,
    trained_betas=None,
)

CONFIGS = {
    "tiny-a": dict(
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, hidden_act="quick_gelu"),
        unet=dict(
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=8,
            norm_num_groups=8,
            use_linear_projection=False,
        ),
        vae=dict(block_out_channels=(32, 32, 64, 64), layers_per_block=1, norm_num_groups=8),
    ),
    "tiny-b": dict(
        text=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                  num_attention_heads=6, hidden_act="gelu"),
        unet=dict(
            block_out_channels=(32, 48, 64),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 3, 4),
            norm_num_groups=16,
            use_linear_projection=True,
        ),
        vae=dict(block_out_channels=(16, 32, 32, 32), layers_per_block=2, norm_num_groups=16),
    ),
}


def clip_tokenizer() -> CLIPTokenizer:
    """CLIP's real vocabulary (transformers 5 takes vocab=/merges= and ignores other names)."""
    tokenizer = CLIPTokenizer(
        vocab=str(CLIP_VOCAB_DIR / "vocab.json"),
        merges=str(CLIP_VOCAB_DIR / "merges.txt"),
        pad_token="<|endoftext|>",
        model_max_length=77,
    )
    assert len(tokenizer) == 49408, f"CLIP vocabulary not loaded ({len(tokenizer)} tokens)"
    return tokenizer


def build_pipeline(name: str) -> StableDiffusionPipeline:
    cfg = CONFIGS[name]
    torch.manual_seed(1234 if name == "tiny-a" else 5678)
    tokenizer = clip_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5,
                       bos_token_id=0, eos_token_id=2, pad_token_id=1, **cfg["text"])
    ).eval()
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=cfg["text"]["hidden_size"],
        norm_eps=1e-5,
        **cfg["unet"],
    ).eval()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        sample_size=64,
        **cfg["vae"],
    ).eval()
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(SD15_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def main() -> None:
    args = parse_args(__doc__)
    out = models_dir(args.parity_dir)
    stamp_value = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    stamp = out / "STAMP-tiny"
    if stamp.exists() and stamp.read_text() == stamp_value:
        print(f"models in {out} are up to date")
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in (*CONFIGS, "tiny-a-fp16"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in CONFIGS:
        pipe = build_pipeline(name)
        pipe.save_pretrained(out / name, safe_serialization=True)
        if name == "tiny-a":
            # The SD1.5 repository's layout: vocab.json and merges.txt beside tokenizer.json
            # (tiny-b keeps only tokenizer.json, as transformers 5 writes it).
            for vocab_file in ("vocab.json", "merges.txt"):
                shutil.copy(CLIP_VOCAB_DIR / vocab_file, out / name / "tokenizer" / vocab_file)
            pipe.to(torch.float16).save_pretrained(out / "tiny-a-fp16", safe_serialization=True,
                                                   variant="fp16")
        print(f"wrote {out / name}")
    stamp.write_text(stamp_value)


if __name__ == "__main__":
    main()
