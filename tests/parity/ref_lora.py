"""Reference images of LoRA: diffusers' load_lora_weights + set_adapters (through PEFT) on the
tiny models, with random LoRAs in both layouts ldcp reads.

Writes DIR/ref/lora/: kohya-a.safetensors and kohya-b.safetensors (the kohya / A1111 layout:
lora_unet_* and lora_te_* with .lora_down.weight, .lora_up.weight and .alpha, on every Linear and
Conv2d of tiny-a's / tiny-b's U-Net and text encoder: linear LoRAs, 3x3 and 1x1 convolution
LoRAs as LoCon; some layers without .alpha, some of another rank), kohya-ldm-b.safetensors
(kohya on tiny-b, the U-Net's keys named after the original LDM / SGM module tree, as ComfyUI
and LyCORIS save them: lora_unet_input_blocks_4_1_proj_in, ..._output_blocks_3_0_in_layers_2),
peft-a.safetensors (the diffusers / PEFT layout that save_lora_weights writes, with its
lora_adapter_metadata: lora_alpha 8 at rank 4), cases.json (the pipeline_parity.h case format
plus "loras": file and weight) and images.safetensors (case name -> float32 [n, H, W, 3] in [0, 1]), the no-LoRA
images included (case names ending in "-none"), so that the C++ test also checks that each LoRA
changes the image by far more than the tolerance.
"""

import torch
import transformers.integrations.peft as transformers_peft
from diffusers import StableDiffusionPipeline
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from common import mark_done, models_dir, parse_args, ref_dir, save_json, save_tensors
from ref_pipeline import PROMPT, SAMPLERS

# transformers 5.24 asks for peft >= 0.22.0 before its text-encoder adapter calls (load_adapter,
# add_adapter), which diffusers' load_lora_weights makes; PyPI's newest peft is 0.21.2, whose
# LoRA layers those calls use unchanged. The check alone is skipped here.
transformers_peft.check_peft_version = lambda min_version: None

# How much each LoRA moves the images at least (mean |diff| in [0, 1] against no LoRA); the
# comparison tolerance is far below it (pipeline_parity.cpp).
MIN_EFFECT = 0.01


def lora_layers(module):
    """Every Linear and Conv2d of a module, by module path."""
    return [(name, m) for name, m in module.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def kohya_factors(prefix, module, generator, state, rename=lambda name: name):
    """Random kohya factors for every layer: rank 4 (every fifth layer rank 2), alpha 2.0
    (every third layer none: alpha = rank). `rename`: the module path a layer's key is written
    under (None: the layer is left out)."""
    for i, (name, layer) in enumerate(lora_layers(module)):
        rank = 2 if i % 5 == 4 else 4
        renamed = rename(name)
        if renamed is None:
            continue
        key = prefix + renamed.replace(".", "_")
        if isinstance(layer, torch.nn.Linear):
            down_shape = (rank, layer.in_features)
            up_shape = (layer.out_features, rank)
        else:
            down_shape = (rank, layer.in_channels, *layer.kernel_size)
            up_shape = (layer.out_channels, rank, 1, 1)
        fan_in = 1
        for d in down_shape[1:]:
            fan_in *= d
        state[key + ".lora_down.weight"] = torch.randn(down_shape, generator=generator) / fan_in ** 0.5
        state[key + ".lora_up.weight"] = torch.randn(up_shape, generator=generator) * 0.3 / rank ** 0.5
        if i % 3 != 2:
            state[key + ".alpha"] = torch.tensor(2.0)


def write_kohya(pipe, path, seed):
    generator = torch.Generator().manual_seed(seed)
    state = {}
    kohya_factors("lora_unet_", pipe.unet, generator, state)
    # kohya names the text encoder's layers as transformers 4 did, under "text_model." (which
    # transformers 5's CLIPTextModel no longer has as a module level).
    kohya_factors("lora_te_text_model_", pipe.text_encoder, generator, state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


LDM_FIXED = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_out": "out.2"}
LDM_RESNET = {"conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "conv2": "out_layers.3",
              "conv_shortcut": "skip_connection"}


def ldm_unet_path(unet, path):
    """The original LDM / SGM module path of a diffusers U-Net layer (what ComfyUI and LyCORIS
    name kohya keys after): input_blocks.i (i >= 1: down block (i-1) / (L+1), layer
    (i-1) % (L+1), .0 ResNet or downsampler "op", .1 attention), middle_block.{0,1,2},
    output_blocks.i (up block i / (L+1), layer i % (L+1): .0 ResNet, .1 attention, then the
    upsampler "conv"). None for an upsampler that follows a ResNet (output_blocks.i.1.conv),
    which diffusers' _maybe_map_sgm_blocks_to_diffusers reads as an attention."""
    if path in LDM_FIXED:
        return LDM_FIXED[path]
    step = unet.config.layers_per_block + 1
    parts = path.split(".")
    if parts[0] == "mid_block":
        index = {"resnets.0": 0, "attentions.0": 1, "resnets.1": 2}[".".join(parts[1:3])]
        rest = ".".join(parts[3:])
        return f"middle_block.{index}." + (LDM_RESNET[rest] if parts[1] == "resnets" else rest)
    block, kind, layer, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
    down = parts[0] == "down_blocks"
    first = block * step + 1 if down else block * step
    if kind in ("downsamplers", "upsamplers"):
        if down:
            return f"input_blocks.{first + step - 1}.0.op"
        if not hasattr(unet.up_blocks[block], "attentions"):
            return None
        return f"output_blocks.{first + step - 1}.2.conv"
    blocks = "input_blocks" if down else "output_blocks"
    if kind == "resnets":
        return f"{blocks}.{first + layer}.0.{LDM_RESNET[rest]}"
    return f"{blocks}.{first + layer}.1.{rest}"


def write_kohya_ldm(pipe, path, seed):
    """kohya factors as write_kohya's, the U-Net's keys named after the LDM module tree."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    kohya_factors("lora_unet_", pipe.unet, generator, state,
                  rename=lambda name: ldm_unet_path(pipe.unet, name))
    kohya_factors("lora_te_text_model_", pipe.text_encoder, generator, state)
    assert any(k.startswith("lora_unet_input_blocks_4_1_") for k in state), sorted(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))


def write_peft(pipe, path, seed):
    """A PEFT adapter on every Linear and Conv2d, random A and B, saved by diffusers."""
    torch.manual_seed(seed)
    layers = {}
    metadata = {}
    for prefix, module in (("unet", pipe.unet), ("text_encoder", pipe.text_encoder)):
        config = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                            target_modules=[name for name, _ in lora_layers(module)])
        module.add_adapter(config, adapter_name="make")
        with torch.no_grad():
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    p.mul_(0.15)
        layers[prefix] = get_peft_model_state_dict(module, adapter_name="make")
        metadata[prefix] = config.to_dict()
        # diffusers' models and transformers' name the call differently.
        (module.delete_adapters if hasattr(module, "delete_adapters") else module.delete_adapter)("make")
    StableDiffusionPipeline.save_lora_weights(
        str(path.parent), unet_lora_layers=layers["unet"],
        text_encoder_lora_layers=layers["text_encoder"], weight_name=path.name,
        unet_lora_adapter_metadata=metadata["unet"],
        text_encoder_lora_adapter_metadata=metadata["text_encoder"])


def case(name, model, loras, **overrides):
    params = dict(name=name, model=model, prompt=PROMPT, negative_prompt="", width=64, height=64,
                  steps=5, guidance_scale=7.5, guidance_rescale=0.0, sampler="euler", eta=0.0,
                  seed=21, num_images=1, loras=[{"name": n, "weight": w} for n, w in loras])
    params.update(overrides)
    return params


CASES = [
    case("kohya-a", "tiny-a", [("kohya-a.safetensors", 0.8)]),
    case("peft-a", "tiny-a", [("peft-a.safetensors", 1.3)], sampler="pndm", seed=5),
    case("both-a", "tiny-a", [("kohya-a.safetensors", 0.5), ("peft-a.safetensors", -0.7)],
         sampler="dpmpp_2m", num_images=2),
    case("kohya-b", "tiny-b", [("kohya-b.safetensors", 1.0)], steps=4),
    case("kohya-ldm-b", "tiny-b", [("kohya-ldm-b.safetensors", 0.9)], steps=4, seed=8),
]


def main():
    args = parse_args(__doc__)
    out = ref_dir(args.parity_dir, "lora")
    pipes = {}
    for model in ("tiny-a", "tiny-b"):
        pipe = StableDiffusionPipeline.from_pretrained(
            models_dir(args.parity_dir) / model, safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        pipes[model] = (pipe, dict(pipe.scheduler.config))
    write_kohya(pipes["tiny-a"][0], out / "kohya-a.safetensors", 1)
    write_kohya(pipes["tiny-b"][0], out / "kohya-b.safetensors", 2)
    write_peft(pipes["tiny-a"][0], out / "peft-a.safetensors", 3)
    write_kohya_ldm(pipes["tiny-b"][0], out / "kohya-ldm-b.safetensors", 4)

    images = {}
    cases = []
    for c in CASES:
        pipe, scheduler_config = pipes[c["model"]]
        sampler_cls, extra = SAMPLERS[c["sampler"]]
        pipe.scheduler = sampler_cls.from_config(scheduler_config, **extra)

        def run():
            return torch.from_numpy(pipe(
                prompt=c["prompt"], num_inference_steps=c["steps"],
                guidance_scale=c["guidance_scale"], num_images_per_prompt=c["num_images"],
                width=c["width"], height=c["height"],
                generator=torch.Generator("cpu").manual_seed(c["seed"]), output_type="np").images).float()

        none = run()
        names = []
        for i, lora in enumerate(c["loras"]):
            names.append(f"l{i}")
            # unet_config: StableDiffusionPipeline's load_lora_weights renumbers the LDM
            # layout's blocks (_maybe_map_sgm_blocks_to_diffusers) only when given the U-Net's
            # config (the SDXL pipeline passes it itself); without it, input_blocks.4 becomes
            # down_blocks.4 and PEFT drops the layers with a warning.
            pipe.load_lora_weights(str(out), weight_name=lora["name"], adapter_name=names[-1],
                                   unet_config=pipe.unet.config)
        pipe.set_adapters(names, adapter_weights=[lora["weight"] for lora in c["loras"]])
        for module in (pipe.unet, pipe.text_encoder):
            # Every factor came from the file: none left at PEFT's initial zeros (a key that
            # diffusers or transformers did not map would be).
            for name, p in module.named_parameters():
                if "lora_B" in name:
                    assert p.abs().sum() > 0, f"{c['name']}: {name} was not loaded"
        for name, lora in zip(names, c["loras"]):
            # Every U-Net layer of the file adapted (none dropped by a name diffusers mapped
            # elsewhere).
            with safe_open(str(out / lora["name"]), "pt") as f:
                layers = sum((k.startswith("lora_unet_") and k.endswith(".lora_down.weight"))
                             or (k.startswith("unet.") and k.endswith(".lora_A.weight"))
                             for k in f.keys())
            adapted = sum(f".lora_B.{name}." in n for n, _ in pipe.unet.named_parameters())
            assert adapted == layers, f"{c['name']}: {adapted} U-Net layers adapted, {layers} in file"
        with_lora = run()
        pipe.unload_lora_weights()
        effect = (with_lora - none).abs().mean().item()
        print(f"{c['name']}: {tuple(with_lora.shape)}, mean |LoRA - none| {effect:.4f}")
        assert effect > MIN_EFFECT, f"{c['name']}: the LoRA changes the image too little ({effect})"
        images[c["name"]] = with_lora
        images[c["name"] + "-none"] = none
        cases.append(c)
        cases.append(dict(c, name=c["name"] + "-none", loras=[]))
    save_tensors(out / "images.safetensors", images)
    save_json(out / "cases.json", cases)
    mark_done(out)


if __name__ == "__main__":
    with torch.no_grad():
        main()
