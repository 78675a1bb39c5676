"""Where partitions run: threads of this process (no --scheduler), or an existing Dask cluster (--scheduler),
behind one protocol (``Executor``), so their results are consumed by one code path (``run_partitions``); and how
many task slots they get and how big a partition is (``work_plan``, ``partition_size``).

Locally each pool thread is a task slot of one local worker: with ``--devices`` a worker per GPU, else one
worker. A thread learns its worker's name once, when it starts (workers are named "0", "1", ... and threads are
dealt to them in turn), so a partition finds its device with ``worker_name()``, where a Dask task would ask
``distributed.get_worker()``. All threads take partitions from one queue, so a GPU that is faster takes more. On
the CPU there is one slot per stream (see partition.py), on a GPU two, so the next partition decodes while this
one runs the forward pass. The local workers share the client's network. Threads, not an in-process Dask
``LocalCluster``: importing ``distributed`` and starting the cluster cost 2-3 s of CPU, most of a small
extraction's fixed cost (ARCHITECTURE.md, "Start-up"), so a local run imports no Dask at all.

Stopping: a cancelled partition that has not started never runs; one that is running stops at its next image
(``check_stop``), so an error or Ctrl-C in a notebook does not wait for whole partitions to finish.

On a cluster each worker loads the model once and returns features, and the client writes the parts; with
--shard-dir (a folder every worker reaches) each worker writes its own partition's part there and returns only
a summary. A worker that dies mid-partition costs only that partition: the scheduler runs it again on another
worker (Dask's ``allowed_failures``, 3 by default, bounds how many workers one partition may take down), and a
part becomes visible only when complete, so a half-written one never counts (see parts.py).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

from .._util import cpu_cores
from ..errors import FeatpipeError, UsageError
from .batching import AUTO_BATCH
from .devices import worker_devices
from .partition import PartitionResult, PartitionTask, WorkPlan, bind_thread, run_partition
from .parts import PartWrite

if TYPE_CHECKING:
    from .config import ExtractConfig
    from .extractor import ExtractorSpec

MAX_PARTITION = 1024  # rows lost at most by a crash, per running partition


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


class LocalExecutor:
    """``workers`` local workers of ``slots`` threads each, on one queue of tasks.

    An ``Executor``. A context manager: leaving it cancels what has not run, stops what runs, and waits for
    the threads.
    """

    def __init__(self, slots: int, workers: int = 1):
        self.slots = max(1, slots)
        self.workers = max(1, workers)
        self.threads = self.slots * self.workers
        self._stop = threading.Event()
        self._dealt = itertools.count()
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="featpipe-partition",
                                        initializer=self._start_thread)

    def _start_thread(self) -> None:
        # Round robin: a few tasks still reach every device.
        bind_thread(str(next(self._dealt) % self.workers), self._stop)

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def size(self, plan):
        """The plan (a partition.WorkPlan) with each task's torch threads: the cores shared by every task thread of
        this process (the GPU path; CPU streams come with theirs)."""
        if plan.torch_threads is not None:
            return plan
        return replace(plan, torch_threads=max(1, cpu_cores() // self.threads))

    def submit(self, fn: Callable, *args, key: str = "") -> Future:
        return self._pool.submit(fn, *args)

    def as_completed(self, futures: Sequence[Future]) -> Iterator[Future]:
        """Each future as it finishes. It keeps no reference to a future it has yielded (Python >= 3.9), so a
        partition's features are freed once the caller is done with them; its wait is interruptible (Ctrl-C)."""
        return concurrent.futures.as_completed(futures)

    def result(self, future: Future):
        return future.result()

    def release(self, future: Future) -> None:
        pass  # nothing holds it but the caller

    def cancel(self, futures: Sequence[Future]) -> None:
        for f in futures:
            f.cancel()
        self._stop.set()  # the running ones stop at their next image


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


def run_and_write(spec: ExtractorSpec, task: PartitionTask, plan: WorkPlan, write: PartWrite) -> PartitionResult:
    """``run_partition`` on a worker that writes its part itself: the result comes back without features."""
    result = run_partition(spec, task, plan)
    write(result)
    return replace(result, features={})


def run_partitions(
    executor: Executor,
    spec: ExtractorSpec,
    tasks: Sequence[PartitionTask],
    plan: WorkPlan,
    key_prefix: str,
    writes: Sequence[PartWrite] | None = None,
) -> Iterator[PartitionResult]:
    """Yield each partition's result as soon as it is done (in any order). With ``writes`` (one per task) the
    workers write the parts, and the results carry no features."""
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


# --- how partitions are sized ----------------------------------------------------------------------------


def first_batch(config: ExtractConfig, on_cpu: bool) -> int:
    """The batch size to start with: --batch-size, or for auto the largest worth trying (see batching.AUTO_BATCH)."""
    if config.batch_size != "auto":
        return config.batch_size
    return AUTO_BATCH["cpu" if on_cpu else "cuda"]


def partition_size(config: ExtractConfig, n: int, slots: int, on_cpu: bool = True) -> int:
    """Rows per partition, for ``n`` rows to compute on ``slots`` task slots (0: a cluster's own)."""
    if config.partition_size:
        return config.partition_size
    # About 50 partitions keep the progress bar moving and a crash cheap;
    # whole batches keep the forward passes full.
    bs = first_batch(config, on_cpu)
    size = max(bs, min(math.ceil(n / 50 / bs) * bs, max(bs, MAX_PARTITION // bs * bs)))
    # But never fewer partitions than slots: a small run (an incremental update of 20 images) in one
    # partition ran on one CPU stream, with one core of two idle. Features do not depend on the batch size.
    if slots > 1 and n > 0:
        size = min(size, math.ceil(n / slots))
    return size


def work_plan(config: ExtractConfig, on_cpu: bool, devices: tuple[str, ...] = ()) -> tuple[WorkPlan, int]:
    """How partitions run, and how many task slots (threads) each local worker gets (0 on a cluster)."""
    batch = {"batch_size": first_batch(config, on_cpu), "max_pixels": config.max_pixels,
             "auto_batch": config.batch_size == "auto"}
    if config.scheduler:  # each worker sizes itself from its own cores and threads
        return WorkPlan(**batch, decode_threads=config.decode_threads), 0
    cores = cpu_cores()
    if on_cpu:
        # A few streams, each with a share of the cores: enough to keep every
        # core busy while others decode, few enough to bound activation memory.
        streams = config.streams or min(cores, 4)
        return WorkPlan(**batch, torch_threads=max(1, cores // streams)), streams
    # A GPU worker has two slots, so the next partition decodes while this one runs; --devices' workers
    # (one per GPU, in this process) share one pool of decode threads.
    return WorkPlan(**batch, decode_threads=config.decode_threads or cores, devices=worker_devices(devices)), 2
