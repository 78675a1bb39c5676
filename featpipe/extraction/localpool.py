"""The local executor: partitions on a plain thread pool in this process (no ``--scheduler``).

Each pool thread is a task slot of one local worker: with ``--devices`` a worker per GPU,
else one worker. A thread learns its worker's name once, when it starts (workers are
named "0", "1", ... and threads are dealt to them in turn), so ``runner`` finds its
device with ``worker_name()``, where a Dask task would ask ``distributed.get_worker()``.
All threads take partitions from one queue, so a GPU that is faster takes more.

Why threads and not an in-process Dask cluster: start-up. ``import distributed`` cost
about 1.65 s of CPU and starting a ``LocalCluster`` 0.5-1.2 s more on a 2-core machine,
against about 5 s for ``import torch, timm``: most of a small extraction's fixed cost
(bench/start_time.py). The cluster gave nothing threads do not: its workers ran in this
process too, sharing the client's network. ``--scheduler`` still runs on Dask.

Stopping: a cancelled partition that has not started never runs; one that is running
stops at its next image (``check_stop``), so an error or Ctrl-C in a notebook does not
wait for whole partitions to finish.
"""
from __future__ import annotations

import concurrent.futures
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace

from .._util import cpu_cores

_local = threading.local()


class Stopped(Exception):
    """Raised in a partition thread whose executor is shutting down (an error, or a caller that stopped)."""


def worker_name() -> str | None:
    """The local worker this thread is a slot of ("0", "1", ...); None outside a LocalExecutor's threads."""
    return getattr(_local, "worker", None)


def check_stop() -> None:
    """Raise Stopped when this thread's executor is shutting down; nothing outside a LocalExecutor."""
    stop = getattr(_local, "stop", None)
    if stop is not None and stop.is_set():
        raise Stopped("the extraction stopped")


class LocalExecutor:
    """``workers`` local workers of ``slots`` threads each, on one queue of tasks.

    The interface ``distributor.run_partitions`` consumes, as ``distributor.DaskExecutor`` does:
    ``size``, ``submit``, ``as_completed``, ``result``, ``release``, ``cancel``. A context manager: leaving it
    cancels what has not run, stops what runs, and waits for the threads.
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
        _local.worker = str(next(self._dealt) % self.workers)  # round robin: a few tasks still reach every device
        _local.stop = self._stop

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def size(self, plan):
        """The plan (a runner.WorkPlan) with each task's torch threads: the cores shared by every task thread of
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

