"""Shared fixtures: small generated images, a tiny model, a fixed seed."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TINY_MODEL = "test_resnet"  # timm's 160 px test network: real architecture, milliseconds per image


@pytest.fixture(autouse=True, scope="session")
def _own_conversions(tmp_path_factory):
    """Networks converted for a backend (extraction/backends.py) are cached in the session's folder: a test
    neither finds the user's conversions nor leaves its own in the user's cache."""
    from featpipe.extraction import backends

    root = tmp_path_factory.mktemp("converted")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(backends, "cache_path", lambda key: root / f"{key}.onnx")
        yield root


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def make_images(root: Path, classes: int = 3, per_class: int = 4, seed: int = 0) -> Path:
    """An ImageFolder tree of small JPEGs and PNGs with varied sizes and class-dependent colours."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
            base = np.array([60 + 60 * c, 200 - 50 * c, 100], dtype=np.float64)
            arr = np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            ext = "jpg" if i % 2 == 0 else "png"
            Image.fromarray(arr).save(d / f"img_{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_images(tmp_path / "images")
