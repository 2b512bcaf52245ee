"""safetensors interoperability references for tests/io, written with the reference package
(safetensors.torch).

--write DIR: writes DIR/python_written.safetensors (one tensor of every dtype that safetensors
  and torch share, with metadata) and DIR/python_written.json, a dump of it.
--dump FILE --out OUT.json: loads FILE with safetensors (as the C++ writer's output is checked)
  and writes its dump.

A dump is {"metadata": {...}, "header_keys": [...], "header_size": n, "tensors": {name:
{"dtype": "F32", "shape": [...], "hex": "<the tensor's bytes>"}}}: the bytes make the
comparison exact for every dtype.
"""

import argparse
import json
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

# safetensors dtype names of the torch dtypes the C++ reader supports.
DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "C64": torch.complex64,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}
NAMES = {dtype: name for name, dtype in DTYPES.items()}


def sample(name: str, dtype: torch.dtype, shape) -> torch.Tensor:
    """Random values that use the dtype's range (signs, fractions, large magnitudes)."""
    if dtype == torch.bool:
        return torch.rand(shape) > 0.5
    if dtype.is_complex:
        return torch.randn(shape, dtype=dtype)
    if dtype.is_floating_point:
        return (torch.randn(shape, dtype=torch.float64) * 3).to(dtype)
    info = torch.iinfo(dtype)
    if dtype in (torch.uint64, torch.uint32, torch.uint16):
        # randint does not cover the unsigned wide types; build them from bytes.
        numel = 1
        for d in shape:
            numel *= d
        raw = torch.randint(0, 256, (numel * dtype.itemsize,), dtype=torch.uint8)
        return raw.view(dtype).reshape(shape)
    return torch.randint(info.min, info.max, shape, dtype=dtype)


def dump(path: Path) -> dict:
    raw = path.read_bytes()
    (header_size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_size])
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    tensors = {}
    for name, t in load_file(str(path)).items():
        tensors[name] = {
            "dtype": NAMES[t.dtype],
            "shape": list(t.shape),
            "hex": t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes().hex()
            if t.numel() > 0
            else "",
        }
    return {
        "metadata": metadata,
        "header_keys": list(header.keys()),
        "header_size": header_size,
        "tensors": tensors,
    }


def write_reference(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(42)
    shapes = [(3, 5), (2, 1, 4), (7,)]
    tensors = {}
    for i, (name, dtype) in enumerate(DTYPES.items()):
        tensors[f"t_{name.lower()}"] = sample(name, dtype, shapes[i % len(shapes)])
    tensors["scalar_f32"] = torch.tensor(2.5)
    tensors["empty_f32"] = torch.zeros((0, 3))
    tensors["nested.module.weight"] = torch.randn(4, 4)
    metadata = {"format": "pt", "writer": "python", "note": "ünïcode ✓"}
    path = out / "python_written.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    (out / "python_written.json").write_text(json.dumps(dump(path), indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--dump", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.dump is not None:
        if args.out is None:
            parser.error("--dump needs --out")
        args.out.write_text(json.dumps(dump(args.dump), indent=1))
    elif args.write is not None:
        write_reference(args.write)
    else:
        parser.error("give --write or --dump")


if __name__ == "__main__":
    main()
