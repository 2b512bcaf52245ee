"""VAE parity references (diffusers' AutoencoderKL) for the tiny model folders.

For each of DIR/models/tiny-a and tiny-b, DIR/ref/vae/<name>.safetensors holds:
  latents_a [1,4,8,8], decoded_a; latents_b [2,4,9,7] (odd sizes), decoded_b: vae.decode of
    seeded latents (already divided by scaling_factor, as the pipeline passes them);
  image [1,3,64,64] in [-1,1], mean, logvar, std, sample: vae.encode's posterior, and
    posterior.sample(torch.Generator("cpu").manual_seed(sample_seed));
  image_b [2,3,40,56], mean_b, logvar_b: a batch with a non-square size;
  tiled_latents, tiled_decoded, tile_latent_size, tile_overlap: vae.tiled_decode with
    tile_latent_min_size = tile_latent_size, tile_sample_min_size = tile_latent_size * 8,
    tile_overlap_factor = tile_overlap (small tiles, so the latents span several, with partial
    tiles at the right and bottom edges).
DIR/ref/vae/legacy-vae/ is tiny-a's VAE with the legacy attention names (query, key, value,
proj_attn); diffusers loads it (checked here) and it decodes latents_a to tiny-a's decoded_a.
"""

import shutil

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file

from common import TINY_MODELS, mark_done, models_dir, parse_args, ref_dir, save_tensors

SAMPLE_SEED = 31
# (tile_latent_size, overlap, latent shape) per model: tiny-a tiles 4x4 latents with diffusers'
# default overlap; tiny-b a batch with 6x6 tiles overlapping by half. (Both keep diffusers'
# row_limit equal to the tile stride in pixels, so the output has decode's size.)
TILING = {
    "tiny-a": (4, 0.25, (1, 4, 10, 13)),
    "tiny-b": (6, 0.5, (2, 4, 9, 11)),
}
LEGACY_NAMES = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.",
                ".to_out.0.": ".proj_attn."}


def references(vae: AutoencoderKL, name: str) -> dict:
    seed = 2000 if name == "tiny-a" else 3000
    gen = torch.Generator("cpu").manual_seed(seed)
    scaling = vae.config.scaling_factor
    t = {}
    for key, shape in (("a", (1, 4, 8, 8)), ("b", (2, 4, 9, 7))):
        latents = torch.randn(shape, generator=gen) / scaling
        t[f"latents_{key}"] = latents
        t[f"decoded_{key}"] = vae.decode(latents).sample

    image = torch.rand((1, 3, 64, 64), generator=gen) * 2 - 1
    posterior = vae.encode(image).latent_dist
    t.update(image=image, mean=posterior.mean, logvar=posterior.logvar, std=posterior.std)
    t["sample"] = posterior.sample(generator=torch.Generator("cpu").manual_seed(SAMPLE_SEED))
    t["sample_seed"] = torch.tensor(SAMPLE_SEED)

    image_b = torch.rand((2, 3, 40, 56), generator=gen) * 2 - 1
    posterior_b = vae.encode(image_b).latent_dist
    t.update(image_b=image_b, mean_b=posterior_b.mean, logvar_b=posterior_b.logvar)

    tile, overlap, shape = TILING[name]
    latents = torch.randn(shape, generator=gen) / scaling
    vae.tile_latent_min_size = tile
    vae.tile_sample_min_size = tile * 2 ** (len(vae.config.block_out_channels) - 1)
    vae.tile_overlap_factor = overlap
    t["tiled_latents"] = latents
    t["tiled_decoded"] = vae.tiled_decode(latents).sample
    t["tile_latent_size"] = torch.tensor(tile)
    t["tile_overlap"] = torch.tensor(overlap, dtype=torch.float64)
    # The tiles really are blended: the result differs from a plain decode.
    plain = vae.decode(latents).sample
    assert t["tiled_decoded"].shape == plain.shape
    assert not torch.allclose(t["tiled_decoded"], plain, atol=1e-3)
    return t


def write_legacy(src, dst) -> None:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir(parents=True)
    shutil.copy(src / "config.json", dst / "config.json")
    tensors = load_file(str(src / "diffusion_pytorch_model.safetensors"))
    renamed = {}
    for key, value in tensors.items():
        for new, old in LEGACY_NAMES.items():
            key = key.replace(new, old)
        renamed[key] = value
    assert any(".proj_attn." in key for key in renamed)
    save_file(renamed, str(dst / "diffusion_pytorch_model.safetensors"))


def main() -> None:
    args = parse_args(__doc__)
    out = ref_dir(args.parity_dir, "vae")
    refs = {}
    with torch.no_grad():
        for name in TINY_MODELS:
            vae = AutoencoderKL.from_pretrained(models_dir(args.parity_dir) / name / "vae").eval()
            refs[name] = references(vae, name)
            save_tensors(out / f"{name}.safetensors", refs[name])
            print(f"wrote {out / name}.safetensors")

        legacy = out / "legacy-vae"
        write_legacy(models_dir(args.parity_dir) / "tiny-a" / "vae", legacy)
        vae = AutoencoderKL.from_pretrained(legacy).eval()
        decoded = vae.decode(refs["tiny-a"]["latents_a"]).sample
        assert torch.equal(decoded, refs["tiny-a"]["decoded_a"]), "diffusers' legacy load differs"
        print(f"wrote {legacy}")
    mark_done(out)


if __name__ == "__main__":
    main()
