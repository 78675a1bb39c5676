"""Distribute: run partitions on this process's threads, or on an existing Dask cluster.

Locally (no --scheduler) the partitions run on a plain thread pool in this process
(localpool.py), which shares the client's network: on the CPU one task slot per
stream (see runner), on a GPU two slots, so the next partition decodes while the
current one runs the forward pass; with --devices one set of slots per GPU. It
replaced an in-process Dask ``LocalCluster`` for its start-up cost: importing
``distributed`` and starting the cluster took 2-3 s of CPU, most of a small
extraction's fixed cost (see localpool.py; measured with bench/start_time.py),
and a local run imports no Dask at all.

With a scheduler address the same tasks run on that cluster; each worker loads
the model once and returns features, and the client writes the shards. With
--shard-dir (a folder every worker reaches) each worker writes its own
partition's shard there and returns only a summary.

Both places to run satisfy one small interface (``Executor``), so the results
are consumed by one code path (``run_partitions``).

A worker that dies mid-partition costs only that partition: the scheduler runs
it again on another worker (Dask's ``allowed_failures``, 3 by default, bounds
how many workers one partition may take down), and a shard becomes visible only
when complete, so a half-written one never counts (see shardstore).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Any, Protocol

from ..errors import FeatpipeError, UsageError
from .localpool import LocalExecutor
from .runner import ExtractorSpec, PartitionResult, PartitionTask, WorkPlan, run_partition
from .writer import ShardWrite


class Executor(Protocol):
    """Where partitions run: ``LocalExecutor`` (threads of this process) or ``DaskExecutor`` (--scheduler)."""

    def size(self, plan: WorkPlan) -> WorkPlan:
        """The plan with what the workers need to size their torch threads."""

    def submit(self, fn: Callable, *args, key: str) -> Any:
        """Run ``fn(*args)``; a future."""

    def as_completed(self, futures: Sequence[Any]) -> Iterator[Any]:
        """Each future as it finishes, in any order. Iterating or ``result`` raises a task's error
        (FeatpipeError for a failure of the executor itself)."""

    def result(self, future: Any) -> PartitionResult:
        """The result of a future that ``as_completed`` gave."""

    def release(self, future: Any) -> None:
        """Forget a future whose result the caller has."""

    def cancel(self, futures: Sequence[Any]) -> None:
        """Drop tasks that have not run (an error, or a caller that stopped early)."""


class DaskExecutor:
    """Partitions as tasks of a Dask cluster (--scheduler)."""

    def __init__(self, client):
        self.client = client
        self._results: dict[str, Any] = {}  # gathered, not yet handed out

    def size(self, plan: WorkPlan) -> WorkPlan:
        if plan.torch_threads is not None:
            return plan
        # Workers size their torch threads by how many task threads share their host.
        per_host: dict[str, int] = {}
        for w in self.client.scheduler_info()["workers"].values():
            per_host[w["host"]] = per_host.get(w["host"], 0) + w["nthreads"]
        return replace(plan, host_threads=tuple(sorted(per_host.items())))

    def submit(self, fn: Callable, *args, key: str):
        return self.client.submit(fn, *args, key=key, pure=False)

    def as_completed(self, futures):
        """Each future once its result is here. Results are gathered as they finish, each on its own: a
        worker that dies holding a finished result sends that partition back to be computed, which waits
        for a worker, and gathering in the order of finishing would wait there even when Dask has already
        given up on another partition."""
        import distributed

        done = distributed.as_completed(futures, loop=self.client.loop, with_results=True)  # starts gathering now
        return self._each(done)

    def _each(self, done) -> Iterator[Any]:
        import distributed

        while True:
            try:
                future, result = next(done)
            except StopIteration:
                return
            except distributed.KilledWorker as exc:
                raise _gave_up(exc) from None
            self._results[future.key] = result
            yield future

    def result(self, future) -> PartitionResult:
        return self._results.pop(future.key)

    def release(self, future) -> None:
        future.release()  # so the cluster frees the result right away

    def cancel(self, futures) -> None:
        self.client.cancel(list(futures))


def _gave_up(exc) -> FeatpipeError:
    """distributed.KilledWorker in one line: which partition, how many workers died, what to do."""
    tries = exc.args[2] + 1 if len(exc.args) > 2 else 0  # allowed_failures + 1 (Dask >= 2023)
    died = f"{tries} worker{'s' if tries != 1 else ''}" if tries else "several workers"
    return FeatpipeError(
        f"Dask gave up on partition {str(exc.args[0]).rsplit('-', 1)[-1]}: {died} died while "
        "running it (distributed.scheduler.allowed-failures); check the workers' memory and logs, then "
        "run the same command again: finished partitions are kept"
    )


@contextlib.contextmanager
def dask_client(scheduler: str) -> Iterator[distributed.Client]:  # noqa: F821
    """A client of the Dask scheduler at ``scheduler``."""
    import distributed

    try:
        client = distributed.Client(scheduler, timeout="10s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise UsageError(
            f"cannot reach the Dask scheduler at {scheduler!r} ({exc}); start one with "
            "`dask scheduler` and workers with `dask worker ADDRESS`, or leave out --scheduler"
        ) from None
    with client:
        yield client


@contextlib.contextmanager
def executor(scheduler: str | None, slots: int = 2, workers: int = 1) -> Iterator[Executor]:
    """The Dask cluster at ``scheduler``, or threads of this process: ``workers`` local workers
    (--devices: one per GPU) of ``slots`` task threads each."""
    if scheduler:
        with dask_client(scheduler) as client:
            yield DaskExecutor(client)
        return
    with LocalExecutor(slots, workers) as local:
        yield local


def run_and_write(spec: ExtractorSpec, task: PartitionTask, plan: WorkPlan, write: ShardWrite) -> PartitionResult:
    """``run_partition`` on a worker that writes its shard itself: the result comes back without features."""
    result = run_partition(spec, task, plan)
    write(result)
    return replace(result, features={})


def run_partitions(
    executor: Executor,
    spec: ExtractorSpec,
    tasks: Sequence[PartitionTask],
    plan: WorkPlan,
    key_prefix: str,
    writes: Sequence[ShardWrite] | None = None,
) -> Iterator[PartitionResult]:
    """Yield each partition's result as soon as it is done (in any order). With ``writes`` (one per task) the
    workers write the shards, and the results carry no features."""
    plan = executor.size(plan)
    futures = [
        executor.submit(
            *((run_partition, spec, task, plan) if writes is None else (run_and_write, spec, task, plan, writes[k])),
            key=f"{key_prefix}-part-{task.index}",
        )
        for k, task in enumerate(tasks)
    ]
    pending = {id(f): f for f in futures}
    done = executor.as_completed(futures)
    del futures  # only ``pending`` holds what has not been yielded: each result is freed once used
    try:
        for future in done:
            result = executor.result(future)
            del pending[id(future)]
            executor.release(future)
            yield result
    finally:
        # On an error (or a caller that stops early) cancel what has not run.
        if pending:
            executor.cancel(list(pending.values()))
