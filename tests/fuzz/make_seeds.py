"""Writes the seed corpora of the fuzz targets (tests/fuzz): small valid inputs of each format,
made here rather than committed. Usage: make_seeds.py OUT_DIR (OUT_DIR/<target>/<seed>)."""

import io
import json
import pathlib
import struct
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def safetensors(tensors, metadata=None):
    """A safetensors file: tensors is a list of (name, dtype, shape, element size)."""
    header, data = {}, b""
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, size in tensors:
        count = 1
        for dim in shape:
            count *= dim
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + count * size]}
        data += bytes((i * 37) % 256 for i in range(count * size))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def step_schedules():
    return json.dumps([{
        "budget": 0.8, "floor": 0.0, "sampler": "ddim", "steps": 2,
        "timesteps": [999.0, 499.0], "levels": [0.0, 0.5], "flops_fraction": 0.8,
        "flops_curve": {"levels": [0.0, 0.5], "fractions": [1.0, 0.6]},
        "predicted_error": 0.1, "constant_level": 0.25}])


def varint(value):
    out = b""
    while True:
        byte, value = value & 0x7F, value >> 7
        out += bytes([byte | (0x80 if value else 0)])
        if not value:
            return out


def request(fields):
    """A serialized ldcp.v1.GenerateRequest (proto/ldcp/v1/ldcp.proto): fields are
    (number, value) with str/bytes (length-delimited), int (varint) or float (fixed64)."""
    out = b""
    for number, value in fields:
        if isinstance(value, float):
            out += varint(number << 3 | 1) + struct.pack("<d", value)
        elif isinstance(value, int):
            out += varint(number << 3) + varint(value)
        else:
            data = value.encode() if isinstance(value, str) else value
            out += varint(number << 3 | 2) + varint(len(data)) + data
    return out


def images(kind):
    from PIL import Image  # the test environment's Pillow (scripts/requirements-test.txt)

    def gradient(mode, width, height):
        image = Image.new("RGB", (width, height))
        image.putdata([((x * 50) % 256, (y * 70) % 256, ((x + y) * 30) % 256)
                       for y in range(height) for x in range(width)])
        return image.convert(mode) if mode != "RGB" else image

    out = {}
    if kind == "png":
        for mode, size in [("RGB", (4, 3)), ("L", (5, 5)), ("P", (3, 3)), ("RGBA", (2, 2)),
                           ("1", (9, 3)), ("I;16", (3, 2)), ("LA", (2, 3))]:
            buffer = io.BytesIO()
            image = gradient(mode if mode not in ("I;16", "LA") else "L", *size)
            if mode == "I;16":
                image = image.convert("I").point(lambda v: v * 256).convert("I;16")
            elif mode == "LA":
                image = image.convert("LA")
            options = {"transparency": 0} if mode == "P" else {}
            image.save(buffer, "PNG", **options)
            out[f"{mode.replace(';', '')}.png"] = buffer.getvalue()
    else:
        for name, mode, size, options in [
                ("baseline", "RGB", (16, 16), {"quality": 90}),
                ("gray", "L", (8, 8), {}),
                ("progressive", "RGB", (24, 16), {"progressive": True}),
                ("444", "RGB", (8, 8), {"subsampling": 0}),
                ("optimized", "RGB", (9, 7), {"optimize": True}),
                ("cmyk", "CMYK", (8, 8), {})]:
            buffer = io.BytesIO()
            gradient(mode, *size).save(buffer, "JPEG", **options)
            out[f"{name}.jpg"] = buffer.getvalue()
    return out


def seeds():
    demo = ROOT / "data" / "demo-model"
    configs = {f"{path.parent.name}-{path.name}": path.read_bytes()
               for path in sorted(demo.glob("*/*.json")) if path.stat().st_size < 4096}
    configs["model_index.json"] = (demo / "model_index.json").read_bytes()
    configs["non-finite.json"] = b'{"a": -Infinity, "b": [NaN, Infinity], "c": "NaN"}'
    prompts = (demo / "prompts.txt").read_text().splitlines()[:8]
    texts = {f"prompt-{i}.txt": p.encode() for i, p in enumerate(prompts)}
    texts["special.txt"] = "<|startoftext|>A photo of a CAT, it's 2024!!<|endoftext|>".encode()
    texts["unicode.txt"] = "café naïve Ⅻ 東京 — ½ 🙂\tnew\nline".encode()
    tokenizer = demo / "tokenizer"
    config = (tokenizer / "tokenizer_config.json").read_bytes()
    special = json.dumps({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                          "pad_token": {"content": "<|endoftext|>", "normalized": False}}).encode()
    return {
        "clip_tokenizer_files": {
            "config.bin": config,
            "config-special.bin": config + b"\0" + special,
            "tokenizer-json.bin": b"\0\0" + (tokenizer / "tokenizer.json").read_bytes(),
        },
        "safetensors_header": {
            "two.safetensors": safetensors([("a", "F32", [2], 4), ("b", "F32", [1], 4)]),
            "mixed.safetensors": safetensors(
                [("w", "F16", [2, 3], 2), ("e", "I64", [0], 8), ("s", "BF16", [], 2)],
                {"format": "pt"}),
            "empty.safetensors": safetensors([]),
        },
        "gates_file": {
            "gates.safetensors": safetensors(
                [("down_blocks.0.resnets.0", "F32", [4], 4)],
                {"source": "learned", "normalize_per_layer": "false",
                 "step_schedules": step_schedules()}),
            "magnitude.safetensors": safetensors(
                [("mid", "F32", [3], 4)], {"source": "magnitude"}),
        },
        "json_config": configs,
        "clip_tokenizer": texts,
        "prompt_attention": {
            **texts,
            "weights.txt": b"a (red:1.4) fox in ((deep)) snow, [blurry] BREAK \\(oil\\) (open [x",
            "long.txt": b", ".join(b"word%d (detail%d:1.2)" % (i, i) for i in range(60)),
        },
        "request": {
            "default.pb": request([(1, "a red circle")]),
            "full.pb": request([(1, "a cat"), (2, "blurry"), (3, 512), (4, 384), (5, 20),
                                (6, 7.5), (7, "ddim"), (8, 42), (9, 2), (12, "req-1"), (13, 1),
                                (14, 5), (15, 0.5), (16, 0.7),
                                (10, request([(1, 2), (2, 0.35), (4, 0.7)]))]),
            "steps.pb": request([(1, "x"), (5, 4),
                                 (10, request([(1, 2)] + [(3, 0.1 * i) for i in range(4)]))]),
        },
        "original_checkpoint_keys": {
            "sd15.txt": b"\x01\x03" + "\n".join([
                "model.diffusion_model.input_blocks.3.0.op.weight",
                "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
                "model.diffusion_model.output_blocks.2.1.conv.bias",
                "model.diffusion_model.middle_block.0.in_layers.0.weight",
                "first_stage_model.decoder.up.3.block.0.nin_shortcut.weight",
                "first_stage_model.encoder.mid.attn_1.proj_out.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_ids",
                "cond_stage_model.transformer.final_layer_norm.weight",
                "model_ema.diffusion_modelout2weight", "alphas_cumprod"]).encode(),
        },
        "lora_keys": {
            "kohya.safetensors": safetensors([
                ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
                 ".lora_down.weight", "F16", [4, 32], 2),
                ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
                 ".lora_up.weight", "F16", [32, 4], 2),
                ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.alpha",
                 "F32", [], 4),
                ("lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", "F32",
                 [2, 16, 3, 3], 4),
                ("lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight", "F32", [32, 2, 1, 1], 4),
                ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight", "F16", [2, 24], 2),
                ("lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight", "F16", [96, 2], 2)]),
            # The original (LDM) layout's names of the same layers (two layers per block).
            "kohya-ldm.safetensors": safetensors([
                ("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_down.weight",
                 "F16", [4, 32], 2),
                ("lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q.lora_up.weight",
                 "F16", [32, 4], 2),
                ("lora_unet_input_blocks_1_0_in_layers_2.lora_down.weight", "F32",
                 [2, 16, 3, 3], 4),
                ("lora_unet_input_blocks_1_0_in_layers_2.lora_up.weight", "F32", [32, 2, 1, 1], 4),
                ("lora_unet_input_blocks_1_0_in_layers_2.alpha", "F32", [], 4),
                ("lora_unet_middle_block_1_proj_in.lora_down.weight", "F32", [2, 32, 1, 1], 4),
                ("lora_unet_middle_block_1_proj_in.lora_up.weight", "F32", [32, 2, 1, 1], 4)]),
            "peft.safetensors": safetensors([
                ("unet.mid_block.attentions.0.proj_in.lora_A.weight", "F32", [2, 32, 1, 1], 4),
                ("unet.mid_block.attentions.0.proj_in.lora_B.weight", "F32", [32, 2, 1, 1], 4),
                ("text_encoder.encoder.layers.0.mlp.fc1.lora_A.weight", "BF16", [3, 24], 2),
                ("text_encoder.encoder.layers.0.mlp.fc1.lora_B.weight", "BF16", [96, 3], 2)],
                {"lora_adapter_metadata": json.dumps(
                    {"unet.lora_alpha": 4, "unet.r": 2, "text_encoder.use_rslora": True,
                     "text_encoder.alpha_pattern": {"fc1": 6}})}),
        },
        "png": images("png"),
        "jpeg": images("jpeg"),
    }


def main():
    out = pathlib.Path(sys.argv[1])
    for target, files in seeds().items():
        (out / target).mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (out / target / name).write_bytes(data)
    print(f"seeds: {sum(len(files) for files in seeds().values())} files in {out}")


if __name__ == "__main__":
    main()
