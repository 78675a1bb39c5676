"""The CUDA path, on a real GPU (skipped without CUDA): GPU decoding, precision, batch size, several GPUs.

Tolerances stated here (README, "On a GPU"):
* --decode gpu against --decode exact (same GPU, fp32): crops within a mean of 1.5/255 per pixel, and
  features at a cosine of at least 0.999 per row (nvJPEG's IDCT and the float resize round differently
  from libjpeg-turbo and the CPU's uint8 resize);
* bf16 against fp32 on the GPU: cosine >= 0.999 per row;
* fp32 on the GPU against the CPU: 1e-4 relative (TF32 off), per row.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featpipe
from featpipe import ExtractConfig, extract

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

MODEL = "resnet18"  # random weights: a real depth of network; precision does not depend on training


def photos(folder: Path, n: int = 24) -> Path:
    """Photo-like JPEGs of varied sizes (smooth colour fields plus grain), a PNG and a progressive JPEG
    among them (the CPU decodes those)."""
    rng = np.random.default_rng(0)
    for i in range(n):
        w, h = int(rng.integers(300, 900)), int(rng.integers(240, 700))
        small = rng.uniform(0, 255, (h // 48 + 2, w // 48 + 2, 3)).astype(np.uint8)
        arr = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
        arr = np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)
        d = folder / f"class_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        if i == 0:
            Image.fromarray(arr).save(d / f"img_{i:03d}.png")
        else:
            Image.fromarray(arr).save(d / f"img_{i:03d}.jpg", quality=90, progressive=(i == 1))
    return folder


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _run(tmp_path: Path, images: Path, name: str, **kw) -> featpipe.FeatureSet:
    kw = {"model": MODEL, "weights": "random", "device": "cuda", "batch_size": 8, **kw}
    return featpipe.load(extract(ExtractConfig(images, tmp_path / f"{name}.h5", **kw)).output)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return photos(tmp_path_factory.mktemp("gpu") / "images")


def test_gpu_decoded_crops_match_cpu_crops(images):
    from featpipe.extraction.gpu_decode import GpuDecoder
    from featpipe.extraction.preprocess import Preprocessor
    from featpipe.models import DataConfig

    config = DataConfig(crop=(224, 224), resize=256, crop_mode="center", interpolation="bilinear",
                        mean=(0.5,) * 3, std=(0.5,) * 3, resampler="torch")
    paths = sorted(images.rglob("*.jpg"))[2:]  # baseline JPEGs
    crops = GpuDecoder(config, torch.device("cuda"))([p.read_bytes() for p in paths])
    cpu = Preprocessor(config)
    for path, crop in zip(paths, crops, strict=True):
        assert crop is not None and crop.device.type == "cuda"
        diff = np.abs(crop.cpu().numpy().astype(int) - cpu.load(path).astype(int))
        assert diff.mean() <= 1.5, (path.name, diff.mean(), diff.max())


def test_gpu_decoding_features_agree_with_cpu_decoding(tmp_path, images):
    exact = _run(tmp_path, images, "exact", decode="exact")
    gpu = _run(tmp_path, images, "gpu", decode="gpu")
    assert gpu.valid.all() and list(gpu.paths) == list(exact.paths)
    assert _cos(exact.X(), gpu.X()).min() >= 0.999


def test_bf16_agrees_with_fp32_on_the_gpu(tmp_path, images):
    fp32 = _run(tmp_path, images, "fp32")
    bf16 = _run(tmp_path, images, "bf16", precision="bf16")
    assert _cos(fp32.X(), bf16.X()).min() >= 0.999


def test_fp32_on_the_gpu_agrees_with_the_cpu(tmp_path, images):
    gpu = _run(tmp_path, images, "gpu32")
    cpu = _run(tmp_path, images, "cpu32", device="cpu")
    a, b = gpu.X(), cpu.X()
    rel = np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)
    assert rel.max() <= 1e-4, rel.max()


def test_batch_size_auto_on_the_gpu_gives_the_same_features(tmp_path, images):
    fixed = _run(tmp_path, images, "fixed")
    auto = _run(tmp_path, images, "auto", batch_size="auto")
    rel = np.linalg.norm(auto.X() - fixed.X(), axis=1) / np.linalg.norm(fixed.X(), axis=1)
    assert rel.max() <= 1e-4, rel.max()


def test_devices_all_gives_the_same_rows(tmp_path, images):
    one = _run(tmp_path, images, "one")
    every = _run(tmp_path, images, "every", devices="all", device="auto")
    assert list(every.paths) == list(one.paths) and every.valid.all()
    rel = np.linalg.norm(every.X() - one.X(), axis=1) / np.linalg.norm(one.X(), axis=1)
    assert rel.max() <= 1e-4, rel.max()
