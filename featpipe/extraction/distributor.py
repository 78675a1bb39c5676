"""Distribute: run partitions on Dask, locally or on an existing cluster.

Locally the default is an in-process Dask cluster with one worker that shares
the client's network: on the CPU with one task slot per stream (see runner),
on a GPU with two slots, so the next partition decodes while the current one
runs the forward pass. With a scheduler address the same tasks run on that
cluster; each worker loads the model once and returns features, and the client
writes the shards. With --shard-dir (a folder every worker reaches) each worker
writes its own partition's shard there and returns only a summary.

A worker that dies mid-partition costs only that partition: the scheduler runs
it again on another worker (Dask's ``allowed_failures``, 3 by default, bounds
how many workers one partition may take down), and a shard becomes visible only
when complete, so a half-written one never counts (see shardstore).
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace

import dask

from ..errors import FeatpipeError, UsageError
from .runner import ExtractorSpec, PartitionResult, PartitionTask, WorkPlan, run_partition
from .writer import ShardWrite

log = logging.getLogger(__name__)

# The local cluster is only a task queue for this machine's own cores. Its
# statistical profiler (every thread's stack sampled every 10 ms, under the GIL)
# and its event-loop tick monitor (every 20 ms) took 5% of the throughput of a
# 2-core machine (measured: 50.7 -> 53.4 images/s with decoding stubbed out).
# A cluster of the user's (--scheduler) keeps its own settings.
QUIET_LOCAL_CLUSTER = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask's INFO chatter (about 37 lines a run: scheduler, worker, plugins) while the local cluster lives,
    unless featpipe itself logs at INFO (`featpipe -v`, or a notebook that asked for it)."""
    if logging.getLogger("featpipe").isEnabledFor(logging.INFO):
        yield
        return
    names = ["distributed"] + [n for n in logging.Logger.manager.loggerDict if n.startswith("distributed.")]
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


@contextlib.contextmanager
def dask_client(scheduler: str | None, slots: int = 2, workers: int = 1) -> Iterator[distributed.Client]:  # noqa: F821
    """A client of the given scheduler, or of a fresh local in-process cluster of ``workers`` workers
    (--devices: one per GPU) with ``slots`` threads each."""
    import distributed

    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError, ValueError) as exc:
            raise UsageError(
                f"cannot reach the Dask scheduler at {scheduler!r} ({exc}); start one with "
                "`dask scheduler` and workers with `dask worker ADDRESS`, or leave out --scheduler"
            ) from None
        with client:
            yield client
        return
    with contextlib.ExitStack() as stack:
        stack.enter_context(_quiet_dask())
        with dask.config.set(QUIET_LOCAL_CLUSTER):  # read when the servers are built
            cluster = stack.enter_context(distributed.LocalCluster(
                n_workers=workers,
                threads_per_worker=slots,
                processes=False,
                # No dashboard (the progress bar reports); its HTTP server on any free port, never 8787.
                dashboard_address=":0",
                scheduler_kwargs={"dashboard": False},
                silence_logs=logging.ERROR,
            ))
            client = stack.enter_context(distributed.Client(cluster, set_as_default=False))
        yield client


def run_and_write(spec: ExtractorSpec, task: PartitionTask, plan: WorkPlan, write: ShardWrite) -> PartitionResult:
    """``run_partition`` on a worker that writes its shard itself: the result comes back without features."""
    result = run_partition(spec, task, plan)
    write(result)
    return replace(result, features={})


def run_partitions(
    client,
    spec: ExtractorSpec,
    tasks: Sequence[PartitionTask],
    plan: WorkPlan,
    key_prefix: str,
    writes: Sequence[ShardWrite] | None = None,
) -> Iterator[PartitionResult]:
    """Yield each partition's result as soon as it is done (in any order). With ``writes`` (one per task) the
    workers write the shards, and the results carry no features."""
    import distributed

    if plan.torch_threads is None:  # workers size their torch threads by how many task threads share their host
        per_host: dict[str, int] = {}
        for w in client.scheduler_info()["workers"].values():
            per_host[w["host"]] = per_host.get(w["host"], 0) + w["nthreads"]
        plan = replace(plan, host_threads=tuple(sorted(per_host.items())))
    futures = [
        client.submit(
            *((run_partition, spec, task, plan) if writes is None else (run_and_write, spec, task, plan, writes[k])),
            key=f"{key_prefix}-part-{task.index}", pure=False,
        )
        for k, task in enumerate(tasks)
    ]
    pending = {f.key: f for f in futures}
    done = distributed.as_completed(futures, loop=client.loop)
    del futures
    try:
        for future in done:
            try:
                result = future.result()
            except distributed.KilledWorker as exc:
                tries = exc.args[2] + 1 if len(exc.args) > 2 else 0  # allowed_failures + 1 (Dask >= 2023)
                died = f"{tries} worker{'s' if tries != 1 else ''}" if tries else "several workers"
                raise FeatpipeError(
                    f"Dask gave up on partition {str(exc.args[0]).rsplit('-', 1)[-1]}: {died} died while "
                    "running it (distributed.scheduler.allowed-failures); check the workers' memory and logs, then "
                    "run the same command again: finished partitions are kept"
                ) from None
            # Drop every reference, so the cluster frees the result right away.
            del pending[future.key]
            future.release()
            yield result
    finally:
        # On an error (or a caller that stops early) cancel what has not run.
        if pending:
            client.cancel(list(pending.values()))
