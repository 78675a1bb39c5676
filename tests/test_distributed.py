"""--scheduler: the same extraction on a real Dask scheduler and worker on loopback."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import featpipe
from featpipe import ExtractConfig, extract
from featpipe.errors import UsageError

from .conftest import make_images


@pytest.fixture
def dask_cluster(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "2",
                 "--no-nanny", "--no-dashboard", "--host", "127.0.0.1"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        )
        import distributed

        with distributed.Client(address, timeout="30s") as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()


def test_extract_on_an_existing_cluster_matches_local_run(tmp_path, dask_cluster):
    images = make_images(tmp_path / "images", classes=2, per_class=5)
    remote = extract(ExtractConfig(images, tmp_path / "remote.h5", model="test_resnet", weights="random",
                                   partition_size=3, scheduler=dask_cluster))
    local = extract(ExtractConfig(images, tmp_path / "local.h5", model="test_resnet", weights="random"))
    a, b = featpipe.load(remote.output), featpipe.load(local.output)
    assert remote.computed == 10 and a.paths == b.paths
    np.testing.assert_allclose(a.X(), b.X(), rtol=1e-5, atol=1e-6)
    assert a.meta["weights_sha256"] == b.meta["weights_sha256"]


def test_unreachable_scheduler_is_a_usage_error(tmp_path):
    images = make_images(tmp_path / "images", classes=1, per_class=1)
    with pytest.raises(UsageError, match="cannot reach the Dask scheduler"):
        extract(ExtractConfig(images, tmp_path / "x.h5", model="test_resnet", weights="random",
                              scheduler="tcp://127.0.0.1:9"))


def test_concurrent_runs_on_one_cluster_keep_their_own_results(tmp_path, dask_cluster):
    import threading

    a = make_images(tmp_path / "a", classes=2, per_class=4, seed=1)
    b = make_images(tmp_path / "b", classes=2, per_class=4, seed=2)
    outs = {}

    def run(name, images):
        try:
            outs[name] = extract(ExtractConfig(images, tmp_path / f"{name}.h5", model="test_resnet", weights="random",
                                               partition_size=2, scheduler=dask_cluster)).output
        except Exception as exc:  # noqa: BLE001 - reported below
            outs[name] = exc

    threads = [threading.Thread(target=run, args=(n, i)) for n, i in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(v, Path) for v in outs.values()), outs
    local = extract(ExtractConfig(b, tmp_path / "b_local.h5", model="test_resnet", weights="random")).output
    np.testing.assert_allclose(featpipe.load(outs["b"]).X(), featpipe.load(local).X(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(featpipe.load(outs["a"]).X(), featpipe.load(outs["b"]).X())
