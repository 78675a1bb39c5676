"""--decode gpu and --batch-size auto: what can be checked without a GPU.

The decisions are plain functions tested here with fake decoders and a simulated
out-of-memory error; the GPU itself is tested in tests/test_gpu.py (skipped without CUDA).
"""
from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import featpipe
from featpipe import ExtractConfig, extract
from featpipe.extraction.batching import BatchLimit, forward_adaptive, is_out_of_memory
from featpipe.extraction.gpu_decode import GpuDecoder, decode_with_fallback, gpu_refusal
from featpipe.models import DataConfig

from .conftest import TINY_MODEL, make_images

CPU = torch.device("cpu")


def _jpeg(size=(64, 48), **save) -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(save.pop("mode", "RGB")).save(buf, "JPEG", **save)
    return buf.getvalue()


def _rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return _jpeg(exif=exif.tobytes())


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.parametrize(("data", "reason"), [
    (_jpeg(), None),
    (_jpeg(quality=60), None),
    (_png(), "not a JPEG"),
    (_jpeg(mode="CMYK"), "CMYK JPEG"),
    (_jpeg(mode="L"), "L JPEG"),
    (_jpeg(progressive=True), "progressive JPEG"),
    (_rotated(), "EXIF-rotated"),
    (b"\xff\xd8\xff\xe0 garbage", "unreadable header"),
    (b"", "not a JPEG"),
], ids=["baseline", "q60", "png", "cmyk", "gray", "progressive", "exif", "garbage", "empty"])
def test_which_files_the_gpu_decodes(data, reason):
    assert gpu_refusal(data, max_pixels=10**8) == reason


def test_too_many_pixels_go_to_the_cpu_which_calls_them_a_bomb():
    assert gpu_refusal(_jpeg((64, 48)), max_pixels=1000) == "too many pixels"


class FakeDecoder:
    """torchvision.io.decode_jpeg's contract on the CPU, refusing bytes that start with b'BAD'
    (as nvJPEG refuses a corrupt file: the whole batch fails, no partial results)."""

    def __init__(self):
        self.calls = []

    def __call__(self, datas, device):
        self.calls.append(len(datas))
        if any(bytes(d[:3].tolist()) == b"BAD" for d in datas):
            raise RuntimeError("nvjpegDecodeBatched failed")
        return [torch.full((3, 4, 4), int(d[0]), dtype=torch.uint8) for d in datas]


def test_a_batch_the_decoder_rejects_is_retried_file_by_file():
    datas = [torch.tensor(list(b), dtype=torch.uint8) for b in (b"\x01ok", b"BAD", b"\x03ok")]
    fake = FakeDecoder()
    out = decode_with_fallback(datas, fake, CPU)
    assert fake.calls == [3, 1, 1, 1]  # the batch, then each file
    assert out[1] is None  # the CPU takes it
    assert int(out[0][0, 0, 0]) == 1 and int(out[2][0, 0, 0]) == 3
    fake = FakeDecoder()
    assert len(decode_with_fallback(datas[::2], fake, CPU)) == 2 and fake.calls == [2]  # one call when all go


def test_gpu_crops_match_the_cpu_torch_resampler(tmp_path):
    """The GPU path's arithmetic (torchvision's decoder, then resize in float), run on the CPU."""
    from featpipe.extraction.preprocess import Preprocessor

    config = DataConfig(crop=(32, 32), resize=36, crop_mode="center", interpolation="bicubic",
                        mean=(0.5,) * 3, std=(0.5,) * 3, resampler="torch")
    decoder = GpuDecoder(config, CPU, decoder=lambda datas, device: __import__("torchvision").io.decode_jpeg(
        datas, mode=__import__("torchvision").io.ImageReadMode.RGB, device=device))
    paths = []
    for i, size in enumerate([(120, 90), (90, 160), (300, 200)]):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(_jpeg(size, quality=90))
    crops = decoder([p.read_bytes() for p in paths])
    cpu = Preprocessor(config)
    for path, crop in zip(paths, crops, strict=True):
        want = cpu.load(path).astype(int)
        got = crop.numpy().astype(int)
        assert got.shape == want.shape == (32, 32, 3)
        assert np.abs(got - want).max() <= 2  # libjpeg both ways; the resize within rounding


def _odd_files(folder: Path) -> dict[str, str | None]:
    """Files each decoder must handle, and the failure reason expected (None: a valid row)."""
    good = (folder / "class_0" / "img_000.jpg").read_bytes()
    (folder / "class_0" / "cmyk.jpg").write_bytes(_jpeg((70, 50), mode="CMYK"))
    (folder / "class_0" / "progressive.jpg").write_bytes(_jpeg((70, 50), progressive=True))
    (folder / "class_0" / "rotated.jpg").write_bytes(_rotated())
    (folder / "class_1" / "cut.jpg").write_bytes(good[: len(good) // 2])
    (folder / "class_1" / "nvjpeg_says_no.jpg").write_bytes(_jpeg((60, 60), quality=80))
    return {"cut.jpg": "truncated"}


def test_gpu_path_end_to_end_on_cpu_with_a_fake_gpu_decoder(tmp_path, monkeypatch):
    """run_partition with --decode gpu's plumbing on the CPU: torchvision's CPU decoder plays nvJPEG and
    refuses one file it could decode; every row comes out once, close to the exact path, failures kept."""
    import torchvision

    from featpipe.extraction import extractor

    images = make_images(tmp_path / "images", classes=2, per_class=6)
    _odd_files(images)
    exact = featpipe.load(extract(ExtractConfig(images, tmp_path / "exact.h5", model=TINY_MODEL, weights="random",
                                                batch_size=4)).output)
    calls = []

    def fake_nvjpeg(datas, device):
        calls.append(len(datas))
        if any(bytes(d[-8:].tolist()) == (images / "class_1" / "nvjpeg_says_no.jpg").read_bytes()[-8:] for d in datas):
            raise RuntimeError("nvjpeg: unsupported")
        return torchvision.io.decode_jpeg(list(datas), mode=torchvision.io.ImageReadMode.RGB, device=device)

    real_init = extractor.Extractor.__init__

    def init(self, spec):  # the decode choice as on a GPU, the device a CPU
        real_init(self, spec)
        self.gpu_decoder = GpuDecoder(self.data_config, self.device, decoder=fake_nvjpeg)

    monkeypatch.setattr(extractor.Extractor, "__init__", init)
    gpu = featpipe.load(extract(ExtractConfig(images, tmp_path / "gpu.h5", model=TINY_MODEL, weights="random",
                                              batch_size=4)).output)
    assert calls and max(calls) > 1  # batches went to the "GPU" decoder
    assert list(gpu.paths) == list(exact.paths)
    np.testing.assert_array_equal(gpu.valid, exact.valid)
    bad = dict(zip(gpu.errors["path"], gpu.errors["reason"], strict=True))
    assert list(bad) == ["class_1/cut.jpg"] and "truncated" in bad["class_1/cut.jpg"]
    a, b = exact.X()[exact.valid], gpu.X()[gpu.valid]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999, cos


# ---------------------------------------------------------------- --batch-size auto


def test_out_of_memory_is_told_from_other_errors():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_forward_adaptive_halves_and_keeps_every_row_once_in_order():
    seen = []

    def forward(x):
        if len(x) > 5:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        seen.append(len(x))
        return {"f": x[:, None].astype(np.float32)}, 0.1

    limit = BatchLimit(32, adaptive=True)
    out, seconds = forward_adaptive(forward, np.arange(20), limit)
    np.testing.assert_array_equal(out["f"][:, 0], np.arange(20))
    assert limit.size == 5 and seen == [5] * 4 and seconds == pytest.approx(0.4)  # 20 -> 10 -> 5
    with pytest.raises(torch.cuda.OutOfMemoryError):  # a fixed --batch-size does not hide the error
        forward_adaptive(forward, np.arange(20), BatchLimit(8, adaptive=False))
    with pytest.raises(RuntimeError, match="shape"):  # nor does auto hide other errors

        def broken(x):
            raise RuntimeError("shape mismatch")

        forward_adaptive(broken, np.arange(4), BatchLimit(8, adaptive=True))


def test_batch_size_auto_survives_out_of_memory_with_the_same_features(tmp_path, monkeypatch):
    from featpipe.extraction import extractor

    images = make_images(tmp_path / "images", classes=2, per_class=15)
    ref = featpipe.load(extract(ExtractConfig(images, tmp_path / "ref.h5", model=TINY_MODEL, weights="random",
                                              batch_size=8)).output)
    real = extractor.Extractor.forward
    sizes = []

    def forward(self, pixels, timings=None):
        if len(pixels) > 6:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB (simulated)")
        sizes.append(len(pixels))
        return real(self, pixels, timings)

    monkeypatch.setattr(extractor.Extractor, "forward", forward)
    summary = extract(ExtractConfig(images, tmp_path / "auto.h5", model=TINY_MODEL, weights="random",
                                    batch_size="auto", partition_size=32))
    got = featpipe.load(summary.output)
    assert summary.failed == 0 and got.valid.all() and list(got.paths) == list(ref.paths)
    assert max(sizes) <= 6 and sum(sizes) == 30  # 30 -> 15 -> 7 -> 3: every image forwarded once
    np.testing.assert_allclose(got.X(), ref.X(), rtol=1e-5, atol=1e-6)


def test_batch_size_is_a_count_or_auto(tmp_path, image_folder):
    from featpipe.errors import UsageError

    for bad in (0, "big", 2.5):
        with pytest.raises(UsageError, match=r"ExtractConfig\.batch_size must be at least 1 or auto, got"):
            extract(ExtractConfig(image_folder, tmp_path / "f.h5", model=TINY_MODEL, weights="random",
                                  batch_size=bad))


def test_decode_auto_on_cpu_is_exact_and_recorded_as_asked(tmp_path, image_folder):
    import json

    import h5py

    out = extract(ExtractConfig(image_folder, tmp_path / "f.h5", model=TINY_MODEL, weights="random",
                                decode="auto", device="cpu")).output
    with h5py.File(out) as f:
        assert json.loads(f.attrs["data_config"])["decode"] == "exact"
        assert json.loads(f.attrs["request"])["decode"] == "auto:cpu"


def test_decode_gpu_needs_cuda(tmp_path, image_folder):
    from featpipe.errors import UsageError

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError, match="ExtractConfig.decode gpu needs a CUDA device"):
        extract(ExtractConfig(image_folder, tmp_path / "f.h5", model=TINY_MODEL, weights="random",
                              decode="gpu", device="cpu"))


# ---------------------------------------------------------------- --devices


def test_device_lists():
    from featpipe.errors import UsageError
    from featpipe.extraction.devices import parse_devices

    assert parse_devices("all", 4) == ("cuda:0", "cuda:1", "cuda:2", "cuda:3")
    assert parse_devices("cuda:1, cuda:0", 2) == ("cuda:1", "cuda:0")
    assert parse_devices("0,2", 3) == ("cuda:0", "cuda:2")
    for text, count, message in [("all", 0, "no CUDA GPU"), ("cuda:2", 2, "has 2 GPU"), ("cuda:0,cuda:0", 2, "twice"),
                                 ("gpu0", 2, "cuda:0,cuda:1"), ("cuda:1", 0, "has 0 GPU")]:
        with pytest.raises(UsageError, match=message):
            parse_devices(text, count)


def test_devices_all_plans_one_worker_per_visible_gpu(monkeypatch, tmp_path):
    from featpipe.extraction import executors
    from featpipe.extraction.devices import WorkerSlot, device_of_worker, local_devices

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    config = ExtractConfig(tmp_path, tmp_path / "f.h5", model=TINY_MODEL, devices="all", batch_size="auto")
    devices = local_devices(config)
    assert devices == ("cuda:0", "cuda:1", "cuda:2")
    plan, slots = executors.work_plan(config, on_cpu=False, devices=devices)
    assert plan.devices == (WorkerSlot("0", "cuda:0"), WorkerSlot("1", "cuda:1"), WorkerSlot("2", "cuda:2"))
    assert slots == 2 and plan.auto_batch and plan.batch_size == 1024
    assert device_of_worker(plan.devices, "1") == "cuda:1"  # the local executor names its workers "0", "1", ...


def test_devices_conflicting_options(tmp_path, image_folder):
    from featpipe.errors import UsageError

    for kw, message in [({"scheduler": "tcp://127.0.0.1:1"}, "dask worker"), ({"device": "cpu"}, "disagree")]:
        with pytest.raises(UsageError, match=message):
            extract(ExtractConfig(image_folder, tmp_path / "f.h5", model=TINY_MODEL, weights="random",
                                  devices="all", **kw))


def test_one_worker_per_device_every_row_once(tmp_path, monkeypatch):
    """Two local workers (threads of this process), each told its own device (both the CPU here): rows
    complete, none twice, the same features as one worker, and both workers ran partitions."""
    from featpipe.extraction import devices as devices_mod
    from featpipe.extraction import executors, extractor, partition

    images = make_images(tmp_path / "images", classes=2, per_class=10)
    ref = featpipe.load(extract(ExtractConfig(images, tmp_path / "ref.h5", model=TINY_MODEL, weights="random",
                                              batch_size=4, device="cpu")).output)
    spec = extractor.ExtractorSpec(TINY_MODEL, "random", 0, ("pooled",), "avg", "cpu", "fp32")
    slots = (devices_mod.WorkerSlot("0", "cpu"), devices_mod.WorkerSlot("1", "cpu"))
    seen = []
    real = partition.device_of_worker
    both = threading.Barrier(2, timeout=120)

    def device_of_worker(s, name):
        first = name not in seen
        seen.append(name)
        if first:  # each worker holds its first partition until the other has one: both surely take part
            both.wait()
        return real(s, name)

    monkeypatch.setattr(partition, "device_of_worker", device_of_worker)
    paths = tuple(str(p.relative_to(images)) for p in sorted(images.rglob("*.*")))
    tasks = [partition.PartitionTask(k, start, str(images), paths[start:start + 4]) for k, start in
             enumerate(range(0, len(paths), 4))]
    plan = partition.WorkPlan(4, devices=slots, torch_threads=1)
    with executors.executor(None, slots=1, workers=2) as executor:
        results = sorted(executors.run_partitions(executor, spec, tasks, plan, key_prefix="t"),
                         key=lambda r: r.start)
    assert sorted(set(seen)) == ["0", "1"]  # both workers (each a thread of this process) took partitions
    assert [r.start for r in results] == list(range(0, len(paths), 4))
    got = np.concatenate([r.features["pooled"] for r in results])
    order = [paths.index(p) for p in ref.paths]
    np.testing.assert_allclose(got[order], ref.X(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- what bounded the run


def test_bottleneck_weighs_each_stage_by_its_parallel_workers(tmp_path):
    from featpipe.extraction.config import ExtractSummary, bottleneck

    def summary(timings, parallel):
        return ExtractSummary(tmp_path, 100, 0, 100, 0, 10.0, timings, parallel=parallel)

    # 16 decode threads busy 60 s in a 10 s run: 37%; one GPU busy 9 s: 90% -> the forward pass.
    stage, busy, advice = bottleneck(summary({"decode": 60.0, "forward": 9.0, "copy": 0.5, "write": 0.2},
                                             {"decode": 16, "forward": 1, "copy": 1}))
    assert stage == "forward" and busy == pytest.approx(0.9) and "bf16" in advice
    stage, busy, advice = bottleneck(summary({"decode": 150.0, "forward": 4.0}, {"decode": 16, "forward": 1}))
    assert stage == "decode" and busy == pytest.approx(150 / 160) and "--decode fast" in advice
    assert bottleneck(ExtractSummary(tmp_path, 5, 0, 0, 1, 0.0, {})) is None  # nothing computed


def test_the_summary_says_what_bounded_the_run(tmp_path, image_folder):
    from typer.testing import CliRunner

    from featpipe.cli import app

    result = CliRunner().invoke(app, ["extract", str(image_folder), "-o", str(tmp_path / "f.h5"), "--model",
                                      TINY_MODEL, "--weights", "random", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "bounded by " in result.output and "what would help: " in result.output
