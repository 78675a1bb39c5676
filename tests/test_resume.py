"""Crash safety: SIGKILL mid-run and resume, the single-writer lock, configuration changes."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import h5py
import numpy as np
import pytest

import featpipe
from featpipe import ExtractConfig, extract
from featpipe.errors import RunConflictError

from .conftest import make_images


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "featpipe", *args]


def test_sigkill_mid_run_then_resume_equals_uninterrupted_run(tmp_path):
    images = make_images(tmp_path / "images", classes=3, per_class=40)
    args = ["extract", str(images), "--model", "resnet18", "--weights", "random",
            "--partition-size", "6", "--batch-size", "3", "--quiet"]
    out = tmp_path / "killed.h5"
    parts = tmp_path / "killed.h5.parts"
    proc = subprocess.Popen(cli(*args, "-o", str(out)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("part-*.h5"))) < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = len(list(parts.glob("part-*.h5")))
    assert 3 <= finished < 20, "the kill must land mid-run"
    assert not out.exists()

    resumed = subprocess.run(cli(*args, "-o", str(out)), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    assert not parts.exists()

    clean = tmp_path / "clean.h5"
    done = subprocess.run(cli(*args, "-o", str(clean)), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    a, b = featpipe.load(out), featpipe.load(clean)
    assert a.paths == b.paths and len(a) == 120 and len(set(a.paths)) == 120
    np.testing.assert_array_equal(a.y, b.y)
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_allclose(a.X(), b.X(), rtol=1e-5, atol=1e-6)


def test_second_writer_is_refused(tmp_path):
    images = make_images(tmp_path / "images", classes=1, per_class=2)
    out = tmp_path / "features.h5"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from featpipe.extraction.resume import OutputLock\n"
         f"with OutputLock(Path({str(out)!r})):\n    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunConflictError, match=f"pid {holder.pid}"):
            extract(ExtractConfig(images, out, model="test_resnet", weights="random"))
    finally:
        holder.kill()
        holder.wait()
    # The OS released the lock with the process: the next run proceeds.
    assert extract(ExtractConfig(images, out, model="test_resnet", weights="random")).images == 2


def test_changed_configuration_refuses_to_mix(tmp_path):
    images = make_images(tmp_path / "images", classes=2, per_class=3)
    out = tmp_path / "features.h5"
    first = extract(ExtractConfig(images, out, model="test_resnet", weights="random", seed=0))
    again = extract(ExtractConfig(images, out, model="test_resnet", weights="random", seed=0))
    assert again.already_complete and again.computed == 0 and first.computed == 6
    with pytest.raises(RunConflictError, match="weights.*--overwrite"):
        extract(ExtractConfig(images, out, model="test_resnet", weights="random", seed=1))
    with pytest.raises(RunConflictError, match="dtype"):
        extract(ExtractConfig(images, out, model="test_resnet", weights="random", dtype="float16"))
    with pytest.raises(RunConflictError, match="data_config"):
        extract(ExtractConfig(images, out, model="test_resnet", weights="random", resampler="pil"))
    before = featpipe.load(out).X()
    redo = extract(ExtractConfig(images, out, model="test_resnet", weights="random", seed=1, overwrite=True))
    assert redo.computed == 6 and not np.allclose(featpipe.load(out).X(), before)


def partial_run(tmp_path):
    """A run stopped by --max-failures: finished partitions stay in <output>.parts."""
    images = make_images(tmp_path / "images", classes=2, per_class=3)
    (images / "class_1" / "zz.jpg").write_bytes(b"")
    out = tmp_path / "features.h5"
    with pytest.raises(featpipe.FeatpipeError):
        extract(ExtractConfig(images, out, model="test_resnet", weights="random", partition_size=2, max_failures=0))
    assert (tmp_path / "features.h5.parts").is_dir()
    return images, out


def test_partial_run_of_another_configuration_is_not_mixed(tmp_path):
    images, out = partial_run(tmp_path)
    with pytest.raises(RunConflictError, match="partial run"):
        extract(ExtractConfig(images, out, model="test_resnet", weights="random", seed=5, partition_size=2))
    done = extract(ExtractConfig(images, out, model="test_resnet", weights="random", seed=5,
                                 partition_size=2, overwrite=True))
    assert done.failed == 1 and done.resumed_partitions == 0


def test_input_changed_since_partial_run_reuses_what_is_unchanged(tmp_path):
    images, out = partial_run(tmp_path)
    make_images(tmp_path / "more", classes=3, per_class=3, seed=1)
    shutil.copytree(tmp_path / "more" / "class_2", images / "class_2")  # a class added since
    done = extract(ExtractConfig(images, out, model="test_resnet", weights="random", partition_size=2))
    assert done.images == 10 and done.resumed_partitions >= 1 and 3 <= done.computed < 10
    assert done.failed == 1  # the broken image failed in the partial run: a result, kept


def test_max_failures_holds_on_resume_and_fixed_images_are_retried(tmp_path):
    images = make_images(tmp_path / "images", classes=2, per_class=3)
    bad = images / "class_1" / "zz.jpg"  # sorts last: the abort comes with the last partition
    bad.write_bytes(b"")
    out = tmp_path / "features.h5"
    cfg = ExtractConfig(images, out, model="test_resnet", weights="random", partition_size=2, max_failures=0)
    for _ in range(2):  # the rerun has nothing left to compute and must still refuse
        with pytest.raises(featpipe.FeatpipeError, match="max-failures"):
            extract(cfg)
    assert not out.exists()
    shutil.copy(images / "class_0" / "img_000.jpg", bad)  # the user fixes the image
    done = extract(cfg)
    assert done.failed == 0 and featpipe.load(out).valid.all()


def test_leftovers_of_a_killed_merge_are_cleaned(tmp_path):
    images = make_images(tmp_path / "images", classes=1, per_class=2)
    out = tmp_path / "features.h5"
    stale = tmp_path / ".features.h5.tmp-99999"
    stale.write_bytes(b"half a file")
    extract(ExtractConfig(images, out, model="test_resnet", weights="random"))
    assert not stale.exists()
    (tmp_path / "features.h5.parts").mkdir()  # killed between the rename and the clean-up
    assert extract(ExtractConfig(images, out, model="test_resnet", weights="random")).already_complete
    assert not (tmp_path / "features.h5.parts").exists()


def test_resume_with_another_batch_size(tmp_path):
    images = make_images(tmp_path / "images", classes=2, per_class=4)
    (images / "class_1" / "zz.jpg").write_bytes(b"")
    out = tmp_path / "features.h5"
    with pytest.raises(featpipe.FeatpipeError):
        extract(ExtractConfig(images, out, model="test_resnet", weights="random", batch_size=2, max_failures=0))
    done = extract(ExtractConfig(images, out, model="test_resnet", weights="random", batch_size=4))
    assert done.resumed_partitions >= 1 and done.failed == 1


def test_lock_taken_after_the_holder_let_go_is_real(tmp_path):
    """A process that opened the lock file just before its holder unlinked it must not be let in."""
    from featpipe.extraction.resume import OutputLock

    out = tmp_path / "features.h5"
    first = OutputLock(out).__enter__()
    early = os.open(first.path, os.O_RDWR)  # a second process's open(), before the holder lets go
    first.__exit__(None, None, None)
    second = OutputLock(out).__enter__()  # a third process takes the lock on a fresh file
    import fcntl

    fcntl.flock(early, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds: the stale file is unlocked...
    assert os.fstat(early).st_ino != os.stat(second.path).st_ino  # ...which is why OutputLock compares inodes
    os.close(early)
    with pytest.raises(RunConflictError):
        OutputLock(out).__enter__()
    second.__exit__(None, None, None)


def test_a_file_of_an_unreleased_layout_is_not_taken_for_a_current_one(tmp_path):
    """Files without 'request' and without 'resampler' in their data config were never released: no silent
    upgrade makes them match; extract names the field that differs and asks for --overwrite."""
    images = make_images(tmp_path / "images", classes=2, per_class=3)
    out = tmp_path / "features.h5"
    extract(ExtractConfig(images, out, model="test_resnet", weights="random", resampler="pil"))
    with h5py.File(out, "r+") as f:  # what session-1 featpipe wrote
        del f.attrs["request"]
        config = json.loads(f.attrs["config"])
        del config["data_config"]["resampler"]
        f.attrs["config"] = json.dumps(config, sort_keys=True)
    with pytest.raises(RunConflictError, match="resampler.*--overwrite"):
        extract(ExtractConfig(images, out, model="test_resnet", weights="random", resampler="pil"))
    assert extract(ExtractConfig(images, out, model="test_resnet", weights="random", resampler="pil",
                                 overwrite=True)).computed == 6


def test_finished_run_is_recognised_before_any_network_is_built(tmp_path, monkeypatch):
    """Finding 6 of issue 8: a no-op rerun answers "already complete" without building or tracing the model."""
    from featpipe import models
    from featpipe.extraction import extractor

    images = make_images(tmp_path / "images", classes=2, per_class=2)
    cfg = ExtractConfig(images, tmp_path / "features.h5", model="test_resnet", weights="random")
    extract(cfg)

    def refuse(*args, **kwargs):
        raise AssertionError("a network was built for a finished run")

    monkeypatch.setattr(extractor, "Extractor", refuse)
    monkeypatch.setattr(models, "create_architecture", refuse)
    assert extract(cfg).already_complete
    with pytest.raises(AssertionError, match="network was built"):  # another request still builds
        extract(ExtractConfig(images, cfg.output, model="test_resnet", weights="random", dtype="float16"))


def test_client_killed_mid_run_resumes_without_computing_finished_shards_again(tmp_path):
    """Issue 11: SIGKILL the client once a shard exists (here in a --shard-dir away from the output); the same
    run again reuses every finished shard untouched (same inode, same mtime) and gives the clean run's file."""
    images = make_images(tmp_path / "images", classes=3, per_class=12)
    out, shards = tmp_path / "out.h5", tmp_path / "shards"
    common = dict(model="resnet18", weights="random", partition_size=4, batch_size=4, streams=1)
    proc = subprocess.Popen(cli("extract", str(images), "-o", str(out), "--model", "resnet18", "--weights", "random",
                                "--partition-size", "4", "--batch-size", "4", "--streams", "1",
                                "--shard-dir", str(shards), "--quiet"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not list(shards.glob("*/part-*.h5")):  # the hook: the first finished shard
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    def stats() -> dict:
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards.glob("*/part-*.h5")}

    kept = stats()
    assert 1 <= len(kept) < 9 and not out.exists(), "the kill must land mid-run"
    calls = []

    def untouched(done: int, total: int) -> None:  # called before the first partition and after each one
        now = stats()
        assert {name: now.get(name) for name in kept} == kept
        calls.append(done)

    resumed = extract(ExtractConfig(images, out, shard_dir=str(shards), **common), progress=untouched)
    assert resumed.resumed_partitions == len(kept) and resumed.computed == 36 - 4 * len(kept)
    assert calls[0] == 4 * len(kept) and calls[-1] == 36
    assert not list(shards.iterdir())
    clean = extract(ExtractConfig(images, tmp_path / "clean.h5", **common))
    a, b = featpipe.load(out), featpipe.load(clean.output)
    assert a.paths == b.paths and len(set(a.paths)) == 36
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_allclose(a.X(), b.X(), rtol=1e-5, atol=1e-6)


def test_an_output_of_another_format_version_is_refused_in_one_line(tmp_path):
    """The feature file's reader check (files/features.py) is also resume's: no half-understood reuse."""
    images = make_images(tmp_path / "images", classes=2, per_class=2)
    out = tmp_path / "features.h5"
    cfg = ExtractConfig(images, out, model="test_resnet", weights="random")
    extract(cfg)
    with h5py.File(out, "r+") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(RunConflictError, match="format_version 2.*--overwrite"):
        extract(cfg)
    assert extract(replace(cfg, overwrite=True)).computed == 4
