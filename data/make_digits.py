#!/usr/bin/env python3
"""Build the demo data set: scikit-learn's 1,797 handwritten digits as PNGs in class folders.

Deterministic: the same bytes on every machine. Each 8x8 scan (16 grey levels)
is scaled to 0..255 and upsampled to 64x64 with nearest neighbours, so the
pixels stay the real scans; the models' own preprocessing does the rest.

    python data/make_digits.py data/digits
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", default=Path(__file__).parent / "digits")
    args = ap.parse_args()
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    for i, (img, label) in enumerate(zip(images, digits.target, strict=True)):
        folder = args.out / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").resize((64, 64), Image.NEAREST).save(folder / f"digit_{i:04d}.png")
    print(f"wrote {len(images)} images in {len(set(digits.target))} class folders under {args.out}")


if __name__ == "__main__":
    main()
