"""--scheduler: the same extraction on a real Dask scheduler and worker on loopback."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import featpipe
from featpipe import ExtractConfig, extract
from featpipe.errors import UsageError

from .conftest import make_images


@contextlib.contextmanager
def loopback_cluster(tmp_path: Path, workers: int, nthreads: int,
                     scheduler_env: dict | None = None) -> Iterator[tuple[str, dict]]:
    """A `dask scheduler` and ``workers`` `dask worker` processes (named w0, w1, ...; no nanny, so a killed
    worker stays dead) on 127.0.0.1; yields the scheduler's address and the workers' processes by name."""
    sched_file = tmp_path / "scheduler.json"
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
             "--no-dashboard", "--scheduler-file", str(sched_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **(scheduler_env or {})},
        )
    ]
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        address = json.loads(sched_file.read_text())["address"]
        named = {}
        for k in range(workers):
            named[f"w{k}"] = subprocess.Popen(
                [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", str(nthreads),
                 "--no-nanny", "--no-dashboard", "--host", "127.0.0.1", "--name", f"w{k}"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            procs.append(named[f"w{k}"])
        import distributed

        with distributed.Client(address, timeout="30s") as client:
            client.wait_for_workers(workers, timeout=60)
        yield address, named
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait()


def in_thread(config: ExtractConfig) -> tuple[threading.Thread, dict]:
    """``extract(config)`` running in a thread; the dict gets its "summary" or its "error"."""
    outcome: dict = {}

    def run():
        try:
            outcome["summary"] = extract(config)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


@pytest.fixture
def dask_cluster(tmp_path):
    with loopback_cluster(tmp_path, workers=1, nthreads=2) as (address, _):
        yield address


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


def test_a_worker_killed_mid_run_costs_only_its_partitions(tmp_path):
    """Issue 11: SIGKILL one of two workers while it runs a partition; its partitions run again on the other,
    and the file holds every row once, equal to a local run. The workers write the shards (--shard-dir), so a
    shard the killed worker had half written must not count either."""
    import distributed

    images = make_images(tmp_path / "images", classes=3, per_class=12)
    shards = tmp_path / "shards"
    with loopback_cluster(tmp_path, workers=2, nthreads=1) as (address, workers):
        cfg = ExtractConfig(images, tmp_path / "remote.h5", model="test_resnet", weights="random", batch_size=3,
                            partition_size=3, scheduler=address, shard_dir=str(shards))
        with distributed.Client(address, timeout="30s") as client, distributed.get_task_stream(client) as stream:
            runner, outcome = in_thread(cfg)
            # The first finished shard: both workers are now busy with partitions (each holds two, one running).
            deadline = time.time() + 240
            while not list(shards.glob("*/part-*.h5")):
                assert time.time() < deadline and runner.is_alive(), outcome
                time.sleep(0.01)
            busy = client.processing()
            names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
            victim = next(a for a, keys in busy.items() if keys)
            survivor = next(a for a in names if a != victim)
            lost = set(busy[victim])
            workers[names[victim]].kill()
            workers[names[victim]].wait()
            runner.join(timeout=300)
        assert "summary" in outcome, outcome
    ran_on: dict = {}
    for entry in stream.data:
        ran_on.setdefault(entry["key"], set()).add(entry["worker"])
    # Each partition the killed worker held finished, on the survivor (or, at most, on the victim just before
    # it died); and at least one did run again on the survivor.
    assert all(ran_on.get(key, set()) & {victim, survivor} for key in lost), (lost, ran_on)
    assert any(survivor in ran_on.get(key, set()) for key in lost), (lost, ran_on)
    summary = outcome["summary"]
    assert summary.computed == 36 and summary.failed == 0
    local = extract(ExtractConfig(images, tmp_path / "local.h5", model="test_resnet", weights="random"))
    a, b = featpipe.load(summary.output), featpipe.load(local.output)
    assert a.paths == b.paths and len(set(a.paths)) == len(a) == 36
    np.testing.assert_array_equal(a.y, b.y)
    assert a.valid.all()
    np.testing.assert_allclose(a.X(), b.X(), rtol=1e-4, atol=1e-5)
    assert not list(shards.iterdir()), "the run's shard folder is removed once the file is merged"


def test_a_partition_whose_workers_all_die_stops_the_run_with_one_line(tmp_path):
    """Past Dask's allowed-failures (0 here: the first death) the run stops with one line, keeping its shards."""
    import distributed

    images = make_images(tmp_path / "images", classes=3, per_class=16)
    out = tmp_path / "f.h5"
    parts = tmp_path / "f.h5.parts"
    with loopback_cluster(tmp_path, workers=1, nthreads=1,
                          scheduler_env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}) as (address, workers):
        with distributed.Client(address, timeout="30s") as client:
            runner, outcome = in_thread(ExtractConfig(images, out, model="test_resnet", weights="random",
                                                      batch_size=1, partition_size=2, scheduler=address))
            deadline = time.time() + 240
            # A shard is kept, and the worker still runs a partition: only a death while running one counts as
            # a failure (a quiet machine can finish every partition before the client has written its first shard,
            # and a worker that dies holding only results leaves Dask waiting for another worker).
            while not (list(parts.glob("part-*.h5")) and any(client.processing().values())):
                assert time.time() < deadline and runner.is_alive(), outcome
                time.sleep(0.005)
            workers["w0"].kill()
            runner.join(timeout=120)
    error = outcome.get("error")
    assert isinstance(error, featpipe.FeatpipeError), outcome
    assert str(error).startswith("Dask gave up on partition ") and "\n" not in str(error)
    assert "1 worker died" in str(error) and "finished partitions are kept" in str(error)
    assert list(parts.glob("part-*.h5")) and not out.exists()


def test_a_finished_result_lost_with_its_worker_does_not_hide_a_partition_dask_gave_up_on(tmp_path):
    """The hang of a CI run: the worker died holding part 0's finished result and running part 1. Part 0
    goes back to be computed (which waits for a worker); part 1 is given up on. The run must stop on part 1
    at once, not wait to gather part 0 from a worker that is gone."""
    import operator

    import distributed

    from featpipe.extraction.executors import DaskExecutor

    with loopback_cluster(tmp_path, workers=1, nthreads=1,
                          scheduler_env={"DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0"}) as (address, workers):
        with distributed.Client(address, timeout="30s", set_as_default=False) as client:
            executor = DaskExecutor(client)
            done_first = executor.submit(operator.add, 1, 2, key="t-part-0")
            running = executor.submit(time.sleep, 600, key="t-part-1")
            done = executor.as_completed([done_first, running])
            assert next(done) is done_first
            deadline = time.time() + 60
            while not any(client.processing().values()):  # part 1 is running
                assert time.time() < deadline
                time.sleep(0.01)
            workers["w0"].kill()
            outcome: dict = {}

            def consume():
                try:
                    outcome["result"] = executor.result(done_first)
                    next(done)
                except Exception as exc:  # noqa: BLE001 -- the test inspects it
                    outcome["error"] = exc

            thread = threading.Thread(target=consume, daemon=True)
            thread.start()
            thread.join(timeout=60)
            executor.cancel([done_first, running])
    assert outcome.get("result") == 3, outcome
    error = outcome.get("error")
    assert isinstance(error, featpipe.FeatpipeError) and str(error).startswith("Dask gave up on partition 1: "), outcome


def test_client_killed_on_a_cluster_then_rerun_on_it(tmp_path):
    """SIGKILL the client of a --scheduler --shard-dir run; the task a worker was running finishes anyway and
    writes its shard (under the dead run's tag, so it can never overwrite one of the next run). The same
    command again on the same cluster gives the clean run's file."""
    images = make_images(tmp_path / "images", classes=3, per_class=16)
    out, shards = tmp_path / "out.h5", tmp_path / "shards"
    with loopback_cluster(tmp_path, workers=1, nthreads=1) as (address, _):
        args = [sys.executable, "-m", "featpipe", "extract", str(images), "-o", str(out), "--model", "test_resnet",
                "--weights", "random", "--partition-size", "2", "--batch-size", "2", "--scheduler", address,
                "--shard-dir", str(shards), "--quiet"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 240
        while not list(shards.glob("*/part-*.h5")):
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read().decode()
            time.sleep(0.01)
        proc.kill()
        proc.wait()
        again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout
    assert not list(shards.iterdir())
    clean = extract(ExtractConfig(images, tmp_path / "clean.h5", model="test_resnet", weights="random"))
    a, b = featpipe.load(out), featpipe.load(clean.output)
    assert a.paths == b.paths and len(set(a.paths)) == 48 and a.valid.all()
    np.testing.assert_allclose(a.X(), b.X(), rtol=1e-5, atol=1e-6)
