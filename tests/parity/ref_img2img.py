"""Reference images of img2img and inpainting: diffusers' StableDiffusionImg2ImgPipeline and
StableDiffusionInpaintPipeline on the tiny models, at several strengths and samplers.

Writes DIR/models/tiny-inpaint: tiny-a with a 9-channel U-Net (latents, latent mask, masked-image
latents; random weights), as SD1.5-inpainting is SD1.5 with one. Writes DIR/ref/img2img/:
init.png and mask.png (the inputs, 8-bit RGB PNGs read back with PIL as a user's files are),
cases.json (the pipeline_parity.h case format plus init_image, mask_image, strength),
images.safetensors (case name -> float32 [n, H, W, 3] in [0, 1]), and mask.safetensors
("mask": the mask processor's binarised [1, 1, H, W] mask of mask.png).

Inpainting runs with a 9-channel U-Net (tiny-inpaint) and with a 4-channel one (tiny-a, tiny-b:
the pipeline's latent blending of init_latents_proper outside the mask after each step).
"""

import shutil

import numpy as np
import torch
from diffusers import (
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    UNet2DConditionModel,
)
from PIL import Image

from common import mark_done, models_dir, parse_args, ref_dir, save_json, save_tensors
from ref_pipeline import PROMPT, SAMPLERS

SIZE = 64


def make_inpaint_model(parity_dir):
    """tiny-a's components with a 9-channel U-Net of tiny-a's architecture."""
    out = models_dir(parity_dir) / "tiny-inpaint"
    shutil.rmtree(out, ignore_errors=True)
    base = StableDiffusionInpaintPipeline.from_pretrained(
        models_dir(parity_dir) / "tiny-a", safety_checker=None, requires_safety_checker=False)
    config = dict(base.unet.config)
    config["in_channels"] = 9
    torch.manual_seed(4321)
    unet = UNet2DConditionModel.from_config(config).eval()
    pipe = StableDiffusionInpaintPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=unet,
        scheduler=base.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)


def make_inputs(out):
    """A smooth picture with texture, and a mask: a white rectangle, grey levels either side of
    the binarisation threshold (127, 128 after PIL's luma) and coloured pixels whose luma is near
    it, so that the grayscale conversion and threshold are both checked."""
    rng = np.random.default_rng(3)
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    picture = np.stack([np.sin(6 * x) * 0.5 + 0.5, y, 0.5 + 0.5 * np.cos(9 * x * y)], axis=-1)
    picture = np.clip(picture * 220 + rng.normal(0, 12, picture.shape), 0, 255).astype(np.uint8)
    Image.fromarray(picture, "RGB").save(out / "init.png")
    mask = np.zeros((SIZE, SIZE, 3), np.uint8)
    mask[16:48, 20:52] = 255
    mask[0:8, :] = 127
    mask[8:16, :] = 128
    mask[48:56, :] = rng.integers(100, 156, (8, SIZE, 3))
    Image.fromarray(mask, "RGB").save(out / "mask.png")


def case(name, model, strength, mask=True, **overrides):
    params = dict(name=name, model=model, prompt=PROMPT, negative_prompt="", width=SIZE,
                  height=SIZE, steps=6, guidance_scale=7.5, guidance_rescale=0.0,
                  sampler="pndm", eta=0.0, seed=42, num_images=1, init_image="init.png",
                  mask_image="mask.png" if mask else "", strength=strength)
    params.update(overrides)
    return params


CASES = [
    # img2img at two strengths and several samplers (stochastic ones check the draw order).
    case("img2img-pndm-0.6", "tiny-a", 0.6, mask=False),
    case("img2img-euler_a-0.35-two", "tiny-a", 0.35, mask=False, sampler="euler_a", steps=8,
         num_images=2, seed=5),
    case("img2img-dpmpp_2m-0.8", "tiny-b", 0.8, mask=False, sampler="dpmpp_2m", steps=5),
    case("img2img-ddim-eta-1.0", "tiny-b", 1.0, mask=False, sampler="ddim", eta=0.5, steps=4),
    case("img2img-euler-unguided", "tiny-a", 0.5, mask=False, sampler="euler",
         guidance_scale=1.0),
    # Inpainting with a 9-channel U-Net, pure noise (strength 1) and part way.
    case("inpaint9-euler-1.0", "tiny-inpaint", 1.0, sampler="euler", seed=7),
    case("inpaint9-dpmpp_2m-0.7-two", "tiny-inpaint", 0.7, sampler="dpmpp_2m", num_images=2),
    case("inpaint9-pndm-unguided", "tiny-inpaint", 1.0, guidance_scale=1.0),
    # Inpainting with 4-channel U-Nets: latent blending.
    case("inpaint4-pndm-1.0", "tiny-a", 1.0),
    case("inpaint4-euler_a-0.6-two", "tiny-a", 0.6, sampler="euler_a", num_images=2, seed=9),
    case("inpaint4-ddim-0.5", "tiny-b", 0.5, sampler="ddim", steps=6),
]


def main():
    args = parse_args(__doc__)
    out = ref_dir(args.parity_dir, "img2img")
    make_inpaint_model(args.parity_dir)
    make_inputs(out)
    init = Image.open(out / "init.png").convert("RGB")
    mask = Image.open(out / "mask.png").convert("RGB")
    images, pipes = {}, {}
    for c in CASES:
        kind = "inpaint" if c["mask_image"] else "img2img"
        key = (kind, c["model"])
        if key not in pipes:
            cls = StableDiffusionInpaintPipeline if c["mask_image"] else StableDiffusionImg2ImgPipeline
            pipe = cls.from_pretrained(models_dir(args.parity_dir) / c["model"],
                                       safety_checker=None, requires_safety_checker=False)
            pipe.set_progress_bar_config(disable=True)
            pipes[key] = (pipe, dict(pipe.scheduler.config))
        pipe, scheduler_config = pipes[key]
        sampler_cls, extra = SAMPLERS[c["sampler"]]
        pipe.scheduler = sampler_cls.from_config(scheduler_config, **extra)
        kwargs = {"eta": c["eta"]} if c["sampler"] == "ddim" else {}
        if c["mask_image"]:
            kwargs.update(mask_image=mask, width=c["width"], height=c["height"])
        result = pipe(
            prompt=c["prompt"],
            image=init,
            strength=c["strength"],
            num_inference_steps=c["steps"],
            guidance_scale=c["guidance_scale"],
            num_images_per_prompt=c["num_images"],
            generator=torch.Generator("cpu").manual_seed(c["seed"]),
            output_type="np",
            **kwargs,
        )
        images[c["name"]] = torch.from_numpy(result.images).float()
        print(f"{c['name']}: {tuple(result.images.shape)}")
    inpaint = pipes[("inpaint", "tiny-a")][0]
    binarised = inpaint.mask_processor.preprocess(mask, height=SIZE, width=SIZE)
    save_tensors(out / "mask.safetensors", {"mask": binarised})
    save_tensors(out / "images.safetensors", images)
    save_json(out / "cases.json", CASES)
    mark_done(out)


if __name__ == "__main__":
    with torch.no_grad():
        main()
