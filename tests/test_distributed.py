"""--scheduler: the same extraction on a real Dask scheduler and worker on loopback."""
from __future__ import annotations

import json
import subprocess
import sys
import time

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
