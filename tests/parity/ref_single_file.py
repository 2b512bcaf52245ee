"""References for single-file checkpoints in the original CompVis / A1111 layout.

Writes the tiny parity models (DIR/models/tiny-a, tiny-b) as single .safetensors files in the
original layout, with its own writer (diffusers' layout -> the original one; the reverse of
what ldcp reads), into DIR/ref/single_file/:
  tiny-a-full.safetensors      fp32, a "full" file: beside the weights, a model_ema.* copy of the
                               U-Net (perturbed, so that using it would show), the diffusion
                               schedule buffers and the text encoder's position_ids
  tiny-b-fp16.safetensors      fp16, EMA-only (no model_ema.*)
  tiny-a-old-clip.safetensors  fp32, text encoder keys without "text_model." (older files)
Each file except the last is loaded back with diffusers' StableDiffusionPipeline.from_single_file
(offline: local_files_only, config= the model's diffusers folder), which must give the folder's
weights (fp16-rounded for the fp16 file): that checks the writer against diffusers' own reading
of the layout. Then diffusers' images of those pipelines go to images.safetensors and the cases
to cases.json (the ref/pipeline format plus "file", "config" and "reference": the image a case
is compared with; the old-layout file is compared with the full file's image of the same
weights, diffusers' from_single_file only reading the "text_model." layout).

sd15_keys.json: every key (and shape) of a Stable Diffusion 1.5 checkpoint in the original
layout, made from the SD1.5 architecture on the meta device (no weights) with the same writer and
checked against diffusers' converters (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint):
the C++ test maps them onto the built-in SD1.5 modules.
"""

import json

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.loaders import single_file_utils
from safetensors.torch import save_file

from common import mark_done, models_dir, parse_args, ref_dir, save_json, save_tensors

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def unet_to_original(state, config):
    """diffusers UNet2DConditionModel names -> ldm UNetModel names (under model.diffusion_model.)."""
    per_block = config["layers_per_block"] + 1
    attention_up = {i for i, t in enumerate(config["up_block_types"]) if "CrossAttn" in t}
    fixed = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    out = {}
    for name, tensor in state.items():
        parts = name.split(".")
        module, leaf = ".".join(parts[:-1]), parts[-1]
        if module in fixed:
            new = f"{fixed[module]}.{leaf}"
        elif parts[0] in ("down_blocks", "up_blocks"):
            block, kind = int(parts[1]), parts[2]
            if kind in ("downsamplers", "upsamplers"):
                layer = per_block - 1
            else:
                layer = int(parts[3])
            rest = ".".join(parts[4:])
            if parts[0] == "down_blocks":
                index = 1 + block * per_block + layer
                if kind == "downsamplers":
                    new = f"input_blocks.{index}.0.op.{parts[-1]}"
                elif kind == "resnets":
                    new = f"input_blocks.{index}.0.{UNET_RESNET[parts[4]]}.{leaf}"
                else:
                    new = f"input_blocks.{index}.1.{rest}"
            else:
                index = block * per_block + layer
                if kind == "upsamplers":
                    slot = 2 if block in attention_up else 1
                    new = f"output_blocks.{index}.{slot}.conv.{leaf}"
                elif kind == "resnets":
                    new = f"output_blocks.{index}.0.{UNET_RESNET[parts[4]]}.{leaf}"
                else:
                    new = f"output_blocks.{index}.1.{rest}"
        elif parts[0] == "mid_block":
            slot = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[1:3])]
            if parts[1] == "resnets":
                new = f"middle_block.{slot}.{UNET_RESNET[parts[3]]}.{leaf}"
            else:
                new = f"middle_block.{slot}.{'.'.join(parts[3:])}"
        else:
            raise KeyError(f"no original name for the U-Net's {name}")
        out["model.diffusion_model." + new] = tensor
    return out


def vae_to_original(state, config):
    """diffusers AutoencoderKL names -> ldm AutoencoderKL names (under first_stage_model.)."""
    blocks = len(config["block_out_channels"])
    out = {}

    def resnet(name):
        return "nin_shortcut" if name == "conv_shortcut" else name

    for name, tensor in state.items():
        parts = name.split(".")
        leaf = parts[-1]
        if parts[0] in ("quant_conv", "post_quant_conv"):
            new = name
        elif parts[1] in ("conv_in", "conv_out"):
            new = name
        elif parts[1] == "conv_norm_out":
            new = f"{parts[0]}.norm_out.{leaf}"
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                new = f"{parts[0]}.mid.block_{int(parts[3]) + 1}.{resnet(parts[4])}.{leaf}"
            else:
                inner = ".".join(parts[4:-1])
                new = f"{parts[0]}.mid.attn_1.{VAE_ATTENTION[inner]}.{leaf}"
                if inner != "group_norm" and leaf == "weight":
                    tensor = tensor.reshape(*tensor.shape, 1, 1)  # a 1x1 convolution kernel
        elif parts[1] == "down_blocks":
            i = int(parts[2])
            if parts[3] == "downsamplers":
                new = f"encoder.down.{i}.downsample.conv.{leaf}"
            else:
                new = f"encoder.down.{i}.block.{parts[4]}.{resnet(parts[5])}.{leaf}"
        elif parts[1] == "up_blocks":
            i = blocks - 1 - int(parts[2])
            if parts[3] == "upsamplers":
                new = f"decoder.up.{i}.upsample.conv.{leaf}"
            else:
                new = f"decoder.up.{i}.block.{parts[4]}.{resnet(parts[5])}.{leaf}"
        else:
            raise KeyError(f"no original name for the VAE's {name}")
        out["first_stage_model." + new] = tensor
    return out


def text_to_original(state, text_model_level=True):
    """transformers CLIPTextModel names -> cond_stage_model.transformer.[text_model.]*"""
    prefix = "cond_stage_model.transformer." + ("text_model." if text_model_level else "")
    out = {}
    for name, tensor in state.items():
        name = name.removeprefix("text_model.")  # transformers >= 5.6 writes it without
        out[prefix + name] = tensor
    out[prefix + "embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return out


def original_state(pipe, text_model_level=True):
    state = {}
    state.update(unet_to_original(pipe.unet.state_dict(), pipe.unet.config))
    state.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    state.update(text_to_original(pipe.text_encoder.state_dict(), text_model_level))
    return state


def full_file_extras(state, scheduler):
    """What a training checkpoint holds beside the weights: the EMA copy of the U-Net (ldm's
    LitEma names: the key under model. without dots), its counters and the schedule buffers."""
    extras = {}
    generator = torch.Generator().manual_seed(3)
    for key, tensor in state.items():
        if key.startswith("model.diffusion_model."):
            noise = torch.randn(tensor.shape, generator=generator) * 0.5
            extras["model_ema." + key.removeprefix("model.").replace(".", "")] = tensor + noise
    extras["model_ema.decay"] = torch.tensor(0.9999)
    extras["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    alphas_cumprod = scheduler.alphas_cumprod.float()
    extras["betas"] = scheduler.betas.float()
    extras["alphas_cumprod"] = alphas_cumprod
    extras["alphas_cumprod_prev"] = torch.cat([torch.ones(1), alphas_cumprod[:-1]])
    extras["sqrt_alphas_cumprod"] = alphas_cumprod.sqrt()
    extras["sqrt_one_minus_alphas_cumprod"] = (1 - alphas_cumprod).sqrt()
    return extras


def write_file(path, state, dtype):
    tensors = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata={"format": "pt"})


def load_single_file(path, config_dir):
    return StableDiffusionPipeline.from_single_file(
        str(path), config=str(config_dir), local_files_only=True, safety_checker=None,
        requires_safety_checker=False, torch_dtype=torch.float32)


def check_weights(loaded, folder, dtype, what):
    """diffusers' reading of the written file must give the folder's weights."""
    for part in ("unet", "vae", "text_encoder"):
        expected = getattr(folder, part).state_dict()
        actual = getattr(loaded, part).state_dict()
        names = {k for k in expected if not k.endswith("position_ids")}
        missing = sorted(names - set(actual))
        assert not missing, f"{what}: diffusers' from_single_file lacks {part} {missing[:5]}"
        for name in names:
            want = expected[name].to(dtype).float()
            assert torch.equal(actual[name].float(), want), f"{what}: {part} {name} differs"
    print(f"{what}: diffusers' from_single_file gives the folder's weights")


SAMPLERS = {
    "pndm": (PNDMScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {}),
}
PROMPT = "a photo of an astronaut riding a horse on mars"


def case(name, file, config, **overrides):
    params = dict(name=name, file=file, config=config, reference=name, prompt=PROMPT,
                  negative_prompt="", width=64, height=64, steps=5, guidance_scale=7.5,
                  guidance_rescale=0.0, sampler="pndm", eta=0.0, seed=21, num_images=1)
    params.update(overrides)
    return params


CASES = [
    case("full-pndm", "tiny-a-full.safetensors", "tiny-a"),
    case("full-euler_a", "tiny-a-full.safetensors", "tiny-a", sampler="euler_a", seed=22),
    case("fp16-dpmpp_2m", "tiny-b-fp16.safetensors", "tiny-b", sampler="dpmpp_2m", seed=23),
    case("fp16-ddim", "tiny-b-fp16.safetensors", "tiny-b", sampler="ddim", seed=24),
    case("old-clip-pndm", "tiny-a-old-clip.safetensors", "tiny-a", reference="full-pndm"),
]


def run_cases(pipes):
    images = {}
    for c in CASES:
        if c["reference"] != c["name"]:
            continue
        pipe = pipes[c["file"]]
        pipe.set_progress_bar_config(disable=True)
        cls, extra = SAMPLERS[c["sampler"]]
        pipe.scheduler = cls.from_config(pipes[c["file"] + ":scheduler"], **extra)
        kwargs = {"eta": c["eta"]} if c["sampler"] == "ddim" else {}
        result = pipe(prompt=c["prompt"], negative_prompt=c["negative_prompt"] or None,
                      width=c["width"], height=c["height"], num_inference_steps=c["steps"],
                      guidance_scale=c["guidance_scale"], guidance_rescale=c["guidance_rescale"],
                      num_images_per_prompt=c["num_images"],
                      generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="np",
                      **kwargs)
        images[c["name"]] = torch.from_numpy(result.images).float()
        print(f"{c['name']}: {tuple(result.images.shape)}")
    return images


def sd15_keys():
    """Keys and shapes of an SD1.5 checkpoint in the original layout, without weights."""
    from make_sd15_model import build

    with torch.device("meta"):
        pipe = build()
    state = original_state(pipe)
    # diffusers' converters must read the written names back to the modules' names and shapes.
    unet = single_file_utils.convert_ldm_unet_checkpoint(state, dict(pipe.unet.config))
    vae = single_file_utils.convert_ldm_vae_checkpoint(state, dict(pipe.vae.config))
    for part, converted in (("unet", unet), ("vae", vae)):
        expected = getattr(pipe, part).state_dict()
        assert set(converted) == set(expected), f"sd15 {part}: {set(converted) ^ set(expected)}"
        for name, tensor in expected.items():
            assert converted[name].shape == tensor.shape, f"sd15 {part} {name}"
    return {k: list(v.shape) for k, v in state.items()}


def main():
    args = parse_args(__doc__)
    out = ref_dir(args.parity_dir, "single_file")
    models = models_dir(args.parity_dir)
    pipes = {}
    with torch.no_grad():
        for model, file, dtype, level, full in (
                ("tiny-a", "tiny-a-full.safetensors", torch.float32, True, True),
                ("tiny-b", "tiny-b-fp16.safetensors", torch.float16, True, False),
                ("tiny-a", "tiny-a-old-clip.safetensors", torch.float32, False, False)):
            folder = StableDiffusionPipeline.from_pretrained(
                models / model, safety_checker=None, requires_safety_checker=False)
            state = original_state(folder, text_model_level=level)
            if full:
                state.update(full_file_extras(state, folder.scheduler))
            write_file(out / file, state, dtype)
            print(f"wrote {out / file} ({len(state)} tensors)")
            if level:
                pipes[file] = load_single_file(out / file, models / model)
                pipes[file + ":scheduler"] = dict(folder.scheduler.config)
                check_weights(pipes[file], folder, dtype, file)
        images = run_cases(pipes)
        (out / "sd15_keys.json").write_text(json.dumps(sd15_keys()))
    save_tensors(out / "images.safetensors", images)
    save_json(out / "cases.json", CASES)
    mark_done(out)


if __name__ == "__main__":
    main()
