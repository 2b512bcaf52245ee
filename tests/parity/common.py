"""Shared helpers of the parity reference scripts.

Each script takes --parity-dir DIR, reads the model folders that make_models.py wrote under
DIR/models, and writes its reference outputs under DIR/ref/<part>/ as safetensors files (and
JSON where the reference is not a tensor), which the C++ tests load and compare with.
"""

import argparse
import json
import os
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
CLIP_VOCAB_DIR = REPO / "data" / "clip"

# The tiny configurations that the parity tests run: they differ in layers per block, block
# widths, head counts, projection type and text width, so config handling is exercised.
TINY_MODELS = ("tiny-a", "tiny-b")


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--parity-dir", required=True, type=Path)
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    return args


def models_dir(parity_dir: Path) -> Path:
    return parity_dir / "models"


def ref_dir(parity_dir: Path, part: str) -> Path:
    path = parity_dir / "ref" / part
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_tensors(path: Path, tensors: dict) -> None:
    """Saves float tensors as float32 (int tensors as int64), contiguous, on the CPU."""
    from safetensors.torch import save_file

    out = {}
    for name, t in tensors.items():
        t = torch.as_tensor(t).detach().cpu()
        t = t.to(torch.int64) if not t.is_floating_point() else t.to(torch.float32)
        out[name] = t.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))


def save_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False), encoding="utf-8")


def mark_done(path: Path) -> None:
    """Writes the stamp a script leaves when all its references were written."""
    (path / "DONE").write_text("ok\n")
