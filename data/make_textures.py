#!/usr/bin/env python3
"""Build a data set close to ImageNet: patches of photographs, one class per photograph.

Nine photographs that ship with scikit-learn and scikit-image (a temple, a flower,
a cat's fur, coffee, an astronaut, a rocket, and brick, grass and gravel textures).
Each image is a random square patch of one of them (a quarter to a half of its shorter side,
anywhere in it), resized to 112x112 and saved as a JPEG: natural photographic
content at a natural scale, what ImageNet features describe well. Deterministic
for a given --seed.

    python data/make_textures.py data/textures [--per-class 60]
"""
import argparse
from pathlib import Path

import numpy as np
from PIL import Image


def photographs() -> dict[str, np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    china, flower = load_sample_images().images
    grey = {name: np.repeat(getattr(skimage.data, name)()[..., None], 3, axis=2) for name in ("brick", "grass", "gravel")}
    return {"temple": china, "flower": flower, "cat": skimage.data.chelsea(), "coffee": skimage.data.coffee(),
            "astronaut": skimage.data.astronaut(), "rocket": skimage.data.rocket(), **grey}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, nargs="?", default=Path(__file__).parent / "textures")
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    for name, photo in photographs().items():
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        h, w = photo.shape[:2]
        for i in range(args.per_class):
            side = int(rng.integers(min(h, w) // 4, min(h, w) // 2 + 1))
            top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
            patch = Image.fromarray(photo[top:top + side, left:left + side]).resize((112, 112), Image.BICUBIC)
            patch.save(folder / f"{name}_{i:03d}.jpg", quality=90)
    print(f"wrote {9 * args.per_class} patches in 9 class folders under {args.out}")


if __name__ == "__main__":
    main()
