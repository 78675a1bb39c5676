#!/usr/bin/env python3
"""Make a synthetic ImageFolder tree of JPEG photos for the benchmarks.

The point is realistic decode and resize work, not realistic content: images
have ImageNet-like sizes (300-640 x 240-480 by default, each one different),
JPEG quality 90, and enough high-frequency detail that they compress like
photos. Each class has its own colour, stripe direction and grain, so the
classes can be told apart by a classifier, though not trivially.

    python bench/make_images.py OUT_DIR [--n 1000] [--classes 10] [--seed 0]
    python bench/make_images.py OUT_DIR --n 200 --size 4000x3000   # camera-sized photos

Images are written as OUT_DIR/class_CC/img_NNNNNN.jpg; image i belongs to class
i mod --classes. The same arguments always give the same files.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def class_style(c: int) -> tuple[np.ndarray, float, float, float]:
    """Colour, stripe angle, stripe period (pixels) and grain strength of class ``c``."""
    rng = np.random.default_rng(7919 * (c + 1))
    colour = rng.uniform(50, 205, size=3).astype(np.float32)
    return colour, rng.uniform(0, np.pi), rng.uniform(12, 60), 8.0 + 2.5 * (c % 7)


def picture(rng: np.random.Generator, c: int, w: int, h: int) -> Image.Image:
    colour, angle, period, grain = class_style(c)
    # Blotches: coarse noise blown up (smooth regions, like objects and background) ...
    coarse = rng.standard_normal((h // 24 + 2, w // 24 + 2, 3), dtype=np.float32)
    blotch = np.stack([
        np.asarray(Image.fromarray(coarse[..., k]).resize((w, h), Image.BICUBIC)) for k in range(3)
    ], axis=-1)
    # ... stripes in the class's direction (edges for the network) ...
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * (2 * np.pi / period) + phase)
    # ... and per-pixel grain (what makes JPEG decoding cost what it costs on photos).
    noise = rng.standard_normal((h, w, 3), dtype=np.float32)
    light = blotch.mean(axis=-1, keepdims=True)  # mostly brightness, a little colour, as in photos
    arr = colour + 60 * light + 15 * (blotch - light) + 25 * stripes[..., None] + grain * noise
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to write the class subfolders into")
    ap.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    ap.add_argument("--classes", type=int, default=10, help="number of class folders (default 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--size", default=None, help="WIDTHxHEIGHT for every image (default: varied, ImageNet-like)")
    args = ap.parse_args()
    if args.n < 1 or args.classes < 1:
        ap.error(f"--n and --classes must be at least 1, got {args.n} and {args.classes}")
    fixed = None
    if args.size:
        try:
            fixed = tuple(int(v) for v in args.size.lower().split("x"))
        except ValueError:
            fixed = ()
        if len(fixed) != 2 or min(fixed) < 1:
            ap.error(f"--size must be WIDTHxHEIGHT such as 640x480, got {args.size!r}")
    rng = np.random.default_rng(args.seed)
    for i in range(args.n):
        c = i % args.classes
        w, h = fixed or (int(rng.integers(300, 641)), int(rng.integers(240, 481)))
        folder = args.out / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        picture(rng, c, w, h).save(folder / f"img_{i:06d}.jpg", quality=90)


if __name__ == "__main__":
    main()
