"""The local executor (featpipe/extraction/executors.py): partitions on threads of this process."""
from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from featpipe.extraction.executors import LocalExecutor
from featpipe.extraction.partition import Stopped, check_stop, worker_name


def test_each_thread_knows_its_worker_and_outside_threads_know_none():
    started = threading.Barrier(4, timeout=10)

    def name():
        started.wait()  # all four threads exist at once: each is its own slot
        return worker_name()

    with LocalExecutor(slots=2, workers=2) as ex:
        names = sorted(f.result() for f in [ex.submit(name) for _ in range(4)])
    assert names == ["0", "0", "1", "1"]  # two slots per worker
    assert worker_name() is None
    check_stop()  # outside the pool: never stops


def test_cancel_drops_pending_tasks_and_stops_running_ones_at_their_next_check():
    ran = []
    running = threading.Event()

    def partition(k):
        ran.append(k)
        running.set()
        while True:  # an endless partition: only check_stop ends it
            check_stop()
            time.sleep(0.01)

    ex = LocalExecutor(slots=1)
    futures = [ex.submit(partition, k) for k in range(3)]
    assert running.wait(10)
    t0 = time.perf_counter()
    ex.cancel(futures)
    ex.close()
    assert time.perf_counter() - t0 < 2
    assert ran == [0]  # the two waiting never started
    assert futures[1].cancelled() and futures[2].cancelled()
    with pytest.raises(Stopped):
        futures[0].result()


def test_leaving_on_an_error_stops_the_partitions_in_flight():
    running = threading.Event()

    def partition():
        running.set()
        while True:
            check_stop()
            time.sleep(0.01)

    t0 = time.perf_counter()
    with pytest.raises(KeyboardInterrupt), LocalExecutor(slots=2) as ex:
        ex.submit(partition)
        assert running.wait(10)
        raise KeyboardInterrupt  # what a notebook's interrupt does to the loop consuming results
    assert time.perf_counter() - t0 < 2


class Result:
    pass


def test_as_completed_yields_every_future_and_keeps_none_it_has_yielded():
    """Memory stays bounded by the partitions in flight: a result the caller has used is freed at once."""
    with LocalExecutor(slots=2) as ex:
        futures = [ex.submit(Result) for _ in range(6)]
        done = ex.as_completed(futures)
        del futures
        refs = []
        for future in done:
            refs.append(weakref.ref(future.result()))
            del future
            gc.collect()
            assert refs[-1]() is None
        assert len(refs) == 6
