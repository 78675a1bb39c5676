"""The CUDA path, on a real GPU (skipped without CUDA): GPU decoding, precision, batch size, several GPUs.

Tolerances stated here (docs/extract.md, "On a GPU"):
* --decode gpu against --decode exact (same GPU, fp32): crops within a mean of 1.5/255 per pixel, and
  features at a cosine of at least 0.999 per row (nvJPEG's IDCT and the float resize round differently
  from libjpeg-turbo and the CPU's uint8 resize);
* bf16 against fp32 on the GPU: cosine >= 0.999 per row;
* fp32 on the GPU against the CPU: 1e-4 relative (TF32 off), per row.

Each test records what it measured in FIGURES before it asserts, so a failing test still reports its figure;
with $FEATPIPE_GPU_FIGURES set they are written there as JSON (bench/gpu_check.sh prints them).
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featpipe
from featpipe import ExtractConfig, extract

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

MODEL = "resnet18"  # random weights: a real depth of network; precision does not depend on training
FIGURES: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def _write_figures():
    yield
    if os.environ.get("FEATPIPE_GPU_FIGURES") and FIGURES:
        Path(os.environ["FEATPIPE_GPU_FIGURES"]).write_text(json.dumps(FIGURES, indent=1) + "\n")


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


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per row: the difference's length relative to ``b``'s."""
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


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
    assert all(crop is not None and crop.device.type == "cuda" for crop in crops)
    diffs = [np.abs(crop.cpu().numpy().astype(int) - cpu.load(path).astype(int))
             for path, crop in zip(paths, crops, strict=True)]
    FIGURES["gpu_vs_cpu_crops_mean_abs_diff_worst_image"] = max(float(d.mean()) for d in diffs)
    FIGURES["gpu_vs_cpu_crops_max_abs_diff"] = max(int(d.max()) for d in diffs)
    for path, diff in zip(paths, diffs, strict=True):
        assert diff.mean() <= 1.5, (path.name, diff.mean(), diff.max())


def test_gpu_decoding_features_agree_with_cpu_decoding(tmp_path, images):
    exact = _run(tmp_path, images, "exact", decode="exact")
    gpu = _run(tmp_path, images, "gpu", decode="gpu")
    assert gpu.valid.all() and list(gpu.paths) == list(exact.paths)
    FIGURES["gpu_vs_cpu_decoding_features_min_cosine"] = float(_cos(exact.X(), gpu.X()).min())
    FIGURES["gpu_vs_cpu_decoding_features_mean_rel_diff"] = float(_rel(gpu.X(), exact.X()).mean())
    FIGURES["gpu_vs_cpu_decoding_features_mean_abs_diff"] = float(np.abs(gpu.X() - exact.X()).mean())
    assert FIGURES["gpu_vs_cpu_decoding_features_min_cosine"] >= 0.999


def test_bf16_agrees_with_fp32_on_the_gpu(tmp_path, images):
    fp32 = _run(tmp_path, images, "fp32")
    bf16 = _run(tmp_path, images, "bf16", precision="bf16")
    FIGURES["bf16_vs_fp32_min_cosine"] = float(_cos(fp32.X(), bf16.X()).min())
    assert FIGURES["bf16_vs_fp32_min_cosine"] >= 0.999


def test_fp32_on_the_gpu_agrees_with_the_cpu(tmp_path, images):
    gpu = _run(tmp_path, images, "gpu32")
    cpu = _run(tmp_path, images, "cpu32", device="cpu")
    FIGURES["fp32_gpu_vs_cpu_max_rel_diff"] = float(_rel(gpu.X(), cpu.X()).max())
    assert FIGURES["fp32_gpu_vs_cpu_max_rel_diff"] <= 1e-4


def test_batch_size_auto_on_the_gpu_gives_the_same_features(tmp_path, images):
    fixed = _run(tmp_path, images, "fixed")
    auto = _run(tmp_path, images, "auto", batch_size="auto")
    FIGURES["batch_auto_vs_fixed_max_rel_diff"] = float(_rel(auto.X(), fixed.X()).max())
    assert FIGURES["batch_auto_vs_fixed_max_rel_diff"] <= 1e-4


def test_batch_size_auto_survives_a_real_out_of_memory_error(tmp_path, caplog):
    """A real CUDA out-of-memory error, not a simulated one: PyTorch's allocator is capped at 2 GiB, less than
    ResNet-18 needs for auto's first batch of 1024 images at 224 px (its first activation alone is 3.3 GB in
    fp32). 2048 images make partitions of 1024 rows, so that first batch is really tried."""
    many = tmp_path / "many"
    for i in range(2048):
        d = many / f"class_{i % 2}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((48, 64, 3), (i * 7 % 256, i % 256, 128), np.uint8)).save(d / f"{i:04d}.jpg")
    fixed = _run(tmp_path, many, "many_fixed", batch_size=64)
    cap = 2 * 2**30
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap / torch.cuda.get_device_properties(0).total_memory)
    try:
        with caplog.at_level(logging.WARNING, logger="featpipe.extraction.extractor"):
            auto = _run(tmp_path, many, "many_auto", batch_size="auto")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    shrinks = [r.args for r in caplog.records if r.getMessage().startswith("out of memory at a batch")]
    FIGURES["batch_auto_real_oom"] = {"memory_cap_gib": cap / 2**30, "out_of_memory_errors": len(shrinks),
                                      "halvings": [list(a) for a in shrinks],
                                      "settled_batch": shrinks[-1][1] if shrinks else None,
                                      "max_rel_diff_vs_batch_64": float(_rel(auto.X(), fixed.X()).max())}
    assert shrinks, "no out-of-memory error under a 2 GiB cap: the test no longer provokes one"
    assert auto.valid.all() and list(auto.paths) == list(fixed.paths)
    assert FIGURES["batch_auto_real_oom"]["max_rel_diff_vs_batch_64"] <= 1e-4


def test_devices_all_gives_the_same_rows(tmp_path, images):
    one = _run(tmp_path, images, "one")
    every = _run(tmp_path, images, "every", devices="all", device="auto")
    assert list(every.paths) == list(one.paths) and every.valid.all()
    FIGURES["devices_all_vs_one_max_rel_diff"] = float(_rel(every.X(), one.X()).max())
    assert FIGURES["devices_all_vs_one_max_rel_diff"] <= 1e-4
