"""One partition: decode its rows, run them through the network in batches, and return their features.

A partition is a contiguous run of rows. How decoding overlaps the forward pass depends on the device:

* CPU: several partitions run at once, each a "stream" that decodes its next batch and then runs it with few
  intra-op threads. While one stream decodes, the others compute, so every core stays busy; a decode thread
  beside a many-threaded forward pass would instead stall the whole OpenMP team each time it took a core
  (measured: forward throughput halves).
* GPU: one forward pass at a time (the extractor's lock), fed by a pool of decode threads working two batches
  ahead (Pillow releases the GIL).

The thread that runs a partition may belong to a local worker (executors.LocalExecutor binds it with
``bind_thread``): the partition asks it which worker it is (``--devices``: which GPU) and whether to stop.
"""
from __future__ import annotations

import collections
import io
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .._util import cpu_cores
from ..files.features import augmented_name
from .batching import forward_adaptive
from .decode import MAX_PIXELS, BadImage, PixelBudget
from .devices import WorkerSlot, device_of_worker
from .extractor import Extractor, ExtractorSpec, batch_limit, decode_pool, get_extractor
from .gpu_decode import gpu_refusal
from .inputs import open_partition

# Full-size decoded images alive at once, over every stream and decode thread of the process:
# a 12 MP photo is 36 MB before it is resized (crops waiting for their batch are small).
_pixel_budget = PixelBudget()

# --- the thread a partition runs on ------------------------------------------------------------------------

_thread = threading.local()


class Stopped(Exception):
    """Raised in a partition thread whose executor is shutting down (an error, or a caller that stopped)."""


def bind_thread(worker: str, stop: threading.Event) -> None:
    """Make this thread a task slot of the local worker ``worker``; its partitions stop once ``stop`` is set."""
    _thread.worker = worker
    _thread.stop = stop


def worker_name() -> str | None:
    """The local worker this thread is a slot of ("0", "1", ...); None outside a LocalExecutor's threads."""
    return getattr(_thread, "worker", None)


def check_stop() -> None:
    """Raise Stopped when this thread's executor is shutting down; nothing outside a LocalExecutor."""
    stop = getattr(_thread, "stop", None)
    if stop is not None and stop.is_set():
        raise Stopped("the extraction stopped")


# --- what a partition is -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionTask:
    """One unit of work: rows [start, start + len(paths)) of the run (picklable: it travels to Dask workers)."""

    index: int
    start: int
    root: str
    paths: tuple[str, ...]
    shard: str | None = None  # a tar shard, whose members the rows are (see inputs.py)
    sources: tuple[str | None, ...] | None = None  # where rows are read when not root/path: members, signed URLs
    storage_options: dict = field(default_factory=dict, repr=False)  # fsspec options for URLs


@dataclass(frozen=True)
class WorkPlan:
    """How a worker runs partitions (picklable; the same for every partition of a run)."""

    batch_size: int  # with auto_batch, the first batch size tried
    max_pixels: int = MAX_PIXELS
    auto_batch: bool = False  # --batch-size auto: halve on out-of-memory and carry on
    decode_threads: int | None = None  # GPU: threads decoding ahead of the forward pass; None: the cores
    torch_threads: int | None = None  # CPU: intra-op threads per stream; None: host cores / task threads on the host
    # On a cluster: (host, task threads of every Dask worker on it). Workers that share a machine share its
    # cores: two one-thread workers on 2 cores run 1 torch thread each, not 2 (4 OpenMP threads on 2 cores
    # spin-wait for each other). A host not listed (a worker that joined later) counts its own threads only.
    host_threads: tuple[tuple[str, int], ...] = ()
    devices: tuple[WorkerSlot, ...] = ()  # --devices: each local worker's GPU (see devices.py)


@dataclass
class PartitionResult:
    """Features of one partition; rows of failed images hold NaN and valid = False."""

    index: int
    start: int
    features: dict[str, np.ndarray]
    valid: np.ndarray
    errors: list[tuple[int, str]]  # (row in the whole run, reason)
    timings: dict[str, float] = field(default_factory=dict)
    backend: str = ""  # what computed the rows, with its version (Extractor.backend)

    def __len__(self) -> int:
        return len(self.valid)


def run_partition(spec: ExtractorSpec, task: PartitionTask, plan: WorkPlan) -> PartitionResult:
    """Decode, preprocess and forward every image of ``task``."""
    if plan.devices:  # --devices: this local worker's own GPU (by its thread's slot), and its own network there
        spec = replace(spec, device=device_of_worker(plan.devices, worker_name()))
    ex = get_extractor(spec)
    if ex.device.type == "cpu":
        _set_torch_threads(plan)
    limit = batch_limit(ex, plan.batch_size, plan.auto_batch)
    rows = _RowDecoder(ex, task, plan)
    out = _Features(ex, task)
    batch: list[tuple[int, np.ndarray | bytes]] = []
    for i, (pixels, reason, seconds) in enumerate(rows.decoded(limit.size)):
        check_stop()  # the run ended (an error, Ctrl-C in a notebook): leave now, not after the partition
        out.timings["decode"] += seconds
        if reason is not None:
            out.errors.append((task.start + i, reason))
            continue
        batch.append((i, pixels))
        if len(batch) * ex.views.count >= limit.size:  # --batch-size counts network inputs, views included
            out.forward(batch, rows, limit)
            batch = []
    out.forward(batch, rows, limit)
    rows.close()  # a tar shard left half-read by an exception closes when the reader is collected
    return out.result()


class _RowDecoder:
    """Decode rows: a partition's images, read (local paths, URLs or one tar shard's members) and decoded into
    their crops, within the process's pixel budget; with --decode gpu, the bytes of the JPEGs the GPU decodes."""

    def __init__(self, ex: Extractor, task: PartitionTask, plan: WorkPlan):
        self.ex, self.task, self.plan = ex, task, plan
        self.read = open_partition(task.root, task.sources or task.paths, task.shard, task.storage_options)

    def crops(self, i: int, source) -> np.ndarray:
        """(views, H, W, 3) of row i from ``source`` (a path, a file object), decoded on the CPU; or BadImage."""
        ex = self.ex
        try:
            with _pixel_budget.hold() as reserve:
                img = ex.preprocess.decode(source, self.plan.max_pixels, reserve)
                return ex.preprocess.image(img)[None] if ex.views.count == 1 else ex.views.crops(img, self.task.paths[i])
        except BadImage:
            raise
        except Exception as exc:  # noqa: BLE001 - a strange file must not stop the run
            raise BadImage(f"cannot decode: {type(exc).__name__}: {exc}") from None

    def decode(self, i: int) -> tuple[np.ndarray | bytes | None, str | None, float]:
        """The row's crops, or with --decode gpu the bytes of a JPEG the GPU will decode; or why not."""
        t0 = time.perf_counter()
        try:
            source = self.read(i)
            if self.ex.gpu_decoder is not None:
                data, source = _gpu_bytes(source, self.plan.max_pixels)
                if data is not None:
                    return data, None, time.perf_counter() - t0
            return self.crops(i, source), None, time.perf_counter() - t0
        except BadImage as exc:
            return None, str(exc), time.perf_counter() - t0

    def decoded(self, batch_size: int) -> Iterator[tuple[np.ndarray | bytes | None, str | None, float]]:
        """decode(i) for every row, in order: on the CPU by this stream (the others compute meanwhile); on a GPU
        by the process's decode threads, two batches ahead."""
        n = len(self.task.paths)
        if self.ex.device.type == "cpu":
            return (self.decode(i) for i in range(n))
        pool = decode_pool(self.plan.decode_threads or cpu_cores())
        return _decode_ahead(self.decode, n, pool, lookahead=max(2, 2 * batch_size // self.ex.views.count))

    def close(self) -> None:
        self.read.close()


class _Features:
    """Forward rows: batches of decoded rows through the network, into the partition's features (NaN for
    rows that failed), its validity, its errors and its timings."""

    def __init__(self, ex: Extractor, task: PartitionTask):
        self.ex, self.task = ex, task
        self.n = len(task.paths)
        self.features: dict[str, np.ndarray] = {}
        self.valid = np.zeros(self.n, dtype=bool)
        self.errors: list[tuple[int, str]] = []  # (row in the whole run, reason)
        self.timings = {"decode": 0.0, "forward": 0.0}

    def forward(self, batch: list[tuple[int, np.ndarray | bytes]], rows: _RowDecoder, limit) -> None:
        """Run ``batch`` ((row, its crops or JPEG bytes) each) through the network and keep its features."""
        if not batch:
            return
        ex, views, tta = self.ex, self.ex.views.count, self.ex.views.spec.tta_views
        index = [i for i, _ in batch]
        # A JPEG nvJPEG rejects decodes on the CPU from the bytes already read (a tar member is read once).
        pixels, failed = _to_batch(ex, [item for _, item in batch],
                                   lambda k, data: rows.crops(index[k], io.BytesIO(data)), self.timings)
        self.errors.extend((self.task.start + index[k], reason) for k, reason in failed.items())
        done = [r for k, r in enumerate(index) if k not in failed]
        if not done:
            return
        out, seconds = forward_adaptive(lambda x: ex.forward(x, self.timings), pixels, limit)
        self.timings["forward"] += seconds
        for name, values in out.items():
            per_row = values.reshape(len(done), views, -1)  # a row's views are consecutive
            # TTA: the mean over the row's deterministic views (one view: the eval crop itself).
            self._column(name, per_row.shape[2])[done] = per_row[:, 0] if tta == 1 else per_row[:, :tta].mean(axis=1)
            if views > tta:  # augmented views, stored per row as (views x dim) and laid out by the merge
                self._column(augmented_name(name), (views - tta) * per_row.shape[2])[done] = \
                    per_row[:, tta:].reshape(len(done), -1)
        self.valid[done] = True

    def _column(self, name: str, dim: int) -> np.ndarray:
        if name not in self.features:
            self.features[name] = np.full((self.n, dim), np.nan, dtype=np.float32)
        return self.features[name]

    def result(self) -> PartitionResult:
        ex, views, tta = self.ex, self.ex.views.count, self.ex.views.spec.tta_views
        if not self.features:  # every image failed: shapes come from a dry forward
            out, _ = ex.forward(np.zeros((1, *ex.data_config.crop, 3), np.uint8))
            for name, values in out.items():
                self._column(name, values.shape[1])
            for name, values in out.items() if views > tta else ():
                self._column(augmented_name(name), (views - tta) * values.shape[1])
        self.errors.sort()
        return PartitionResult(self.task.index, self.task.start, self.features, self.valid, self.errors, self.timings,
                               ex.backend)


def _set_torch_threads(plan: WorkPlan) -> None:
    threads = plan.torch_threads
    if threads is None:  # a Dask worker (--scheduler): local runs set torch_threads (executors.LocalExecutor.size)
        try:
            import distributed

            worker = distributed.get_worker()
        except (ImportError, ValueError):
            return
        own = worker.state.nthreads
        shared = dict(plan.host_threads).get(distributed.comm.get_address_host(worker.address), own)
        threads = max(1, cpu_cores() // max(own, shared))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _gpu_bytes(source, max_pixels: int) -> tuple[bytes | None, object]:
    """(the bytes, None) when the GPU decoder should take ``source`` (a path or a file object); else (None,
    what the CPU decodes instead: the path itself, or the bytes read), and the CPU says why it fails, if it does."""
    if isinstance(source, Path):
        try:
            data = source.read_bytes()
        except OSError:
            return None, source
    else:
        data = source.read()
    if gpu_refusal(data, max_pixels) is None:
        return data, None
    return None, source if isinstance(source, Path) else io.BytesIO(data)


def _to_batch(ex: Extractor, items: list, cpu_crops, timings: dict) -> tuple[np.ndarray | torch.Tensor, dict]:
    """One uint8 (B, H, W, 3) batch from rows' CPU crops (views, H, W, 3) and (--decode gpu) JPEG bytes, in order.

    JPEGs decode together on the GPU; one the GPU decoder rejects decodes on the CPU by
    ``cpu_crops(k, its bytes)``, and one that fails there too is returned in ``{k: reason}``, left out of the batch.
    """
    jpegs = [k for k, item in enumerate(items) if isinstance(item, bytes)]
    if not jpegs:
        host = np.concatenate(items)
        return (torch.from_numpy(host).pin_memory() if ex.device.type == "cuda" else host), {}
    t0 = time.perf_counter()
    on_gpu = dict(zip(jpegs, ex.gpu_decoder([items[k] for k in jpegs]), strict=True))
    failed: dict[int, str] = {}
    for k, crop in on_gpu.items():
        if crop is None:
            try:
                items[k] = cpu_crops(k, items[k])
            except BadImage as exc:
                failed[k] = str(exc)
        else:
            items[k] = crop[None]
    keep = [k for k in range(len(items)) if k not in failed]
    if not keep:
        return np.zeros((0, *ex.data_config.crop, 3), np.uint8), failed
    batch = torch.cat([torch.as_tensor(items[k]).to(ex.device, non_blocking=True) for k in keep])
    timings["gpu_decode"] = timings.get("gpu_decode", 0.0) + time.perf_counter() - t0
    return batch, failed


def _decode_ahead(decode, n: int, pool: ThreadPoolExecutor, lookahead: int):
    """Yield decode(0..n-1) in order, keeping ``lookahead`` decodes in flight (bounded memory)."""
    pending: collections.deque[Future] = collections.deque()
    submitted = 0
    while submitted < n or pending:
        while submitted < n and len(pending) < lookahead:
            pending.append(pool.submit(decode, submitted))
            submitted += 1
        yield pending.popleft().result()
