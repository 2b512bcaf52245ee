"""References for the U-Net (tests/unet): diffusers' UNet2DConditionModel on the tiny model
folders of make_models.py.

For each model M in TINY_MODELS, DIR/ref/unet/M.safetensors holds per case K:
  K.sample, K.timestep ([1] or [B]; see cases.json for whether the C++ test passes it 0-d),
  K.encoder_hidden_states, K.out (the noise prediction), K.t_emb (the sinusoidal projection,
  get_time_embed) and K.emb (time_embedding's output); for case "b2_t999" also the outputs of
  down_blocks.0 and mid_block, to localise a mismatch; and "block.*" / "transformer.*", the
  parts of down_blocks.0.attentions.0 on their own (see component_refs).
DIR/ref/unet/cases.json lists the cases per model; DIR/ref/unet/timestep_embedding.safetensors
holds get_timestep_embedding for non-SD settings (odd width, no flip, shift 1).

Two more U-Nets exercise the config options the SD-like tiny models leave at their defaults
(per-block lists, only_cross_attention, no mid block, kernel sizes, ...): they are written with
save_pretrained to DIR/ref/unet/models/V/unet, with references in DIR/ref/unet/V.safetensors.
DIR/ref/unet/sd15-architecture/ holds the SD1.5 U-Net's config.json and its state_dict's
shapes (shapes.json), without weights.
"""

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.embeddings import get_timestep_embedding

from common import TINY_MODELS, mark_done, models_dir, parse_args, ref_dir, save_json, save_tensors

# (name, latent (batch, height, width), timestep values, timestep dtype, 0-d timestep)
# 9x7 and 12x10 are not multiples of the overall upsampling factor (2 for tiny-a, 4 for
# tiny-b), so the U-Net forwards explicit upsample sizes.
CASES = [
    ("b2_t999", (2, 8, 8), [999], torch.int64, True),
    ("b2_t500", (2, 8, 8), [500], torch.int64, True),
    ("b2_t1", (2, 8, 8), [1], torch.int64, True),
    ("b2_t754.5", (2, 8, 8), [754.5], torch.float32, True),   # Euler passes float timesteps
    ("b2_tbatch", (2, 8, 8), [10, 900], torch.int64, False),  # one timestep per sample
    ("b2_tone", (2, 8, 8), [321], torch.int64, False),        # [1] broadcast to the batch
    ("b1_9x7", (1, 9, 7), [981], torch.int64, True),
    ("b1_12x10", (1, 12, 10), [261.25], torch.float32, True),
]

VARIANT_CASES = [CASES[0], CASES[3], CASES[6]]

# U-Nets with the options SD1.5 leaves at their defaults (all supported by the C++ side).
VARIANTS = {
    "variant-c": dict(
        block_out_channels=(16, 32), layers_per_block=(1, 2),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4),
        norm_num_groups=8, cross_attention_dim=(24, 24), only_cross_attention=(True, False),
        upcast_attention=True, center_input_sample=True, flip_sin_to_cos=False, freq_shift=1,
        transformer_layers_per_block=(2, 1), time_embedding_dim=48, conv_in_kernel=1,
        conv_out_kernel=5, downsample_padding=0, mid_block_scale_factor=1.5, norm_eps=1e-6,
        out_channels=3),
    "variant-d": dict(
        block_out_channels=(16, 16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"), attention_head_dim=4,
        norm_num_groups=4, cross_attention_dim=24, mid_block_type=None, only_cross_attention=True,
        use_linear_projection=True),
}

# The stable-diffusion-v1-5 U-Net config (as make_sd15_model.py builds it): only its parameter
# names and shapes are recorded (built on the meta device, no weights), for the C++ module tree.
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                      "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, downsample_padding=1,
    mid_block_scale_factor=1, act_fn="silu", norm_num_groups=32, norm_eps=1e-5,
    cross_attention_dim=768, attention_head_dim=8,
)


def write_sd15_architecture(out_dir) -> None:
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET)
    unet.save_config(out_dir / "sd15-architecture")
    shapes = {name: list(p.shape) for name, p in unet.state_dict().items()}
    save_json(out_dir / "sd15-architecture" / "shapes.json", shapes)


def make_variant(name: str, out_dir) -> None:
    torch.manual_seed(4321 if name == "variant-c" else 8765)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, **VARIANTS[name]).eval()
    unet.save_pretrained(out_dir / "models" / name / "unet", safe_serialization=True)


def component_refs(unet, cross_dim: int, generator) -> dict:
    """The first transformer of down_blocks.0 and its first BasicTransformerBlock's parts, on
    inputs scaled x3 so that the GEGLU's exact GELU matters at the tests' tighter tolerance."""
    transformer = unet.down_blocks[0].attentions[0]
    block = transformer.transformer_blocks[0]
    x = 3 * torch.randn(2, 64, block.dim, generator=generator)
    context = torch.randn(2, 77, cross_dim, generator=generator)
    image = 3 * torch.randn(2, transformer.in_channels, 8, 8, generator=generator)
    with torch.no_grad():
        return {
            "block.x": x,
            "block.context": context,
            "block.attn1": block.attn1(x),
            "block.attn2": block.attn2(x, encoder_hidden_states=context),
            "block.ff": block.ff(x),
            "block.out": block(x, encoder_hidden_states=context),
            "transformer.x": image,
            "transformer.out": transformer(image, encoder_hidden_states=context).sample,
        }


def run_model(name: str, unet_dir, out_dir, case_list, seed: int) -> list:
    unet = UNet2DConditionModel.from_pretrained(unet_dir).eval()
    cross_dim = unet.config.cross_attention_dim
    if not isinstance(cross_dim, int):
        cross_dim = cross_dim[0]
    context_len = 77 if name in TINY_MODELS else 7
    generator = torch.Generator().manual_seed(seed)
    captured = {}
    hooks = [unet.down_blocks[0].register_forward_hook(
        lambda m, i, o: captured.__setitem__("down_blocks.0", o[0]))]
    if unet.mid_block is not None:
        hooks.append(unet.mid_block.register_forward_hook(
            lambda m, i, o: captured.__setitem__("mid_block", o)))
    tensors, cases = {}, []
    for case, (batch, height, width), values, dtype, zero_dim in case_list:
        sample = torch.randn(batch, unet.config.in_channels, height, width, generator=generator)
        context = torch.randn(batch, context_len, cross_dim, generator=generator)
        timestep = torch.tensor(values, dtype=dtype)
        call_timestep = timestep[0] if zero_dim else timestep
        with torch.no_grad():
            out = unet(sample, call_timestep, context).sample
            t_emb = unet.get_time_embed(sample=sample, timestep=call_timestep)
            emb = unet.time_embedding(t_emb)
        tensors.update({
            f"{case}.sample": sample,
            f"{case}.timestep": timestep,
            f"{case}.encoder_hidden_states": context,
            f"{case}.out": out,
            f"{case}.t_emb": t_emb,
            f"{case}.emb": emb,
        })
        if case == "b2_t999":
            for key, value in captured.items():
                tensors[f"{case}.{key}"] = value
        # save_tensors writes timesteps as int64 or float32; record which, and the form.
        cases.append({"name": case, "timestep_0d": zero_dim, "timestep_float": dtype.is_floating_point})
    for hook in hooks:
        hook.remove()
    if name in TINY_MODELS:
        tensors.update(component_refs(unet, cross_dim, generator))
    save_tensors(out_dir / f"{name}.safetensors", tensors)
    return cases


def main() -> None:
    args = parse_args(__doc__)
    out_dir = ref_dir(args.parity_dir, "unet")
    cases = {}
    for i, name in enumerate(TINY_MODELS):
        cases[name] = run_model(name, models_dir(args.parity_dir) / name / "unet", out_dir, CASES,
                                seed=20240601 + i)
    for i, name in enumerate(VARIANTS):
        make_variant(name, out_dir)
        cases[name] = run_model(name, out_dir / "models" / name / "unet", out_dir, VARIANT_CASES,
                                seed=20240701 + i)
    save_json(out_dir / "cases.json", cases)
    write_sd15_architecture(out_dir)

    timesteps = torch.tensor([0.0, 1.0, 17.5, 999.0])
    save_tensors(out_dir / "timestep_embedding.safetensors", {
        "timesteps": timesteps,
        "dim7_noflip_shift1": get_timestep_embedding(timesteps, 7, flip_sin_to_cos=False,
                                                     downscale_freq_shift=1),
        "dim32_flip_shift0": get_timestep_embedding(timesteps, 32, flip_sin_to_cos=True,
                                                    downscale_freq_shift=0),
        "dim10_flip_shift1_scale2": get_timestep_embedding(timesteps, 10, flip_sin_to_cos=True,
                                                           downscale_freq_shift=1, scale=2,
                                                           max_period=100),
    })
    mark_done(out_dir)
    print(f"wrote {out_dir}")

if __name__ == "__main__":
    main()
