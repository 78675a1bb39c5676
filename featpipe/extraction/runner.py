"""Forward: run one partition of images through the network.

A partition is a contiguous run of rows. The network is built once per process
and shared by every partition that process runs. How decoding overlaps the
forward pass depends on the device:

* CPU: several partitions run at once, each a "stream" that decodes its next
  batch and then runs it with few intra-op threads. While one stream decodes,
  the others compute, so every core stays busy; a decode thread beside a
  many-threaded forward pass would instead stall the whole OpenMP team each
  time it took a core (measured: forward throughput halves).
* GPU: one forward pass at a time (a lock), fed by a pool of decode threads
  working two batches ahead (Pillow releases the GIL).
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import models
from .._util import cpu_cores
from ..errors import UsageError, WeightsError
from ..models.data_config import DataConfig, resolve_decode
from ..store import augmented_name
from . import localpool
from .decode import MAX_PIXELS, BadImage, PixelBudget
from .devices import WorkerSlot, device_of_worker, resolve_device
from .gpu_decode import GpuDecoder, gpu_refusal
from .inputs import open_partition
from .preprocess import Preprocessor, resolve_resampler
from .views import ViewMaker, ViewSpec

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# --batch-size auto starts here and halves on out-of-memory. A GPU gains little past a few hundred
# images (ResNet-50 in bf16 needs about 5 GB at 1024); a CPU's throughput peaks at small batches
# and it has no out-of-memory error to learn from (the OS kills the process instead).
AUTO_BATCH = {"cuda": 1024, "cpu": 32}


@dataclass(frozen=True)
class ExtractorSpec:
    """Everything a worker needs to build the same network as the client (picklable)."""

    model: str
    weights: str
    seed: int
    layers: tuple[str, ...]
    pool: str
    device: str
    precision: str
    resampler: str = "auto"
    decode: str = "exact"  # exact, fast, gpu or auto: see models/data_config.py DECODES
    # Set by the client once it has built the model: every worker checks its
    # weights against it, so no worker can silently use other weights.
    weights_sha256: str | None = None
    # Fold batch norm into convolutions and fuse ops (CPU, fp32): the same
    # network to ~1e-6, 10-30% faster per image (resnet18, EfficientNet-Lite0 on
    # CPU), verified against eager mode. It costs about 1-2 s (tracing is Python
    # work per module), so the client asks for it only when the run computes
    # enough images to pay that back (see run.OPTIMIZE_MIN_IMAGES).
    optimize: bool = True
    views: ViewSpec = ViewSpec()  # TTA and augmented views besides the eval crop (extraction/views.py)


class Extractor:
    """A network in eval mode with its layer taps and its preprocessing, on one device."""

    def __init__(self, spec: ExtractorSpec):
        if spec.precision not in PRECISIONS:
            raise UsageError(f"--precision must be one of {', '.join(PRECISIONS)}, got {spec.precision!r}")
        self.spec = spec
        self.model_spec = models.resolve(spec.model)
        model, self.weights = models.load_model(self.model_spec, spec.weights, spec.seed)
        if spec.weights_sha256 and self.weights.sha256 != spec.weights_sha256:
            raise WeightsError(
                f"weights for {spec.model} on this worker ({self.weights.describe()}, sha256 "
                f"{self.weights.sha256[:12]}) differ from the client's ({spec.weights_sha256[:12]}); "
                "give every worker the same weights file"
            )
        self.layers = models.resolve_layers(model, self.model_spec, spec.layers, spec.pool)
        # A fine-tuned checkpoint is fed as it was trained (its own image size); any other network as its base model.
        data_config = DataConfig.from_json(self.weights.data_config) if self.weights.data_config \
            else models.data_config(model, self.model_spec)
        self.device = torch.device(resolve_device(spec.device))
        resampler = resolve_resampler(spec.resampler, data_config.interpolation, data_config.crop_mode)
        decode = resolve_decode(spec.decode, self.device.type, resampler)
        if decode == "gpu" and spec.views.tta_views + spec.views.augment > 1:  # views need the whole picture, on the CPU
            if spec.decode == "gpu":
                raise UsageError("--decode gpu makes one crop per image; --tta and --augment views need "
                                 "--decode exact or fast")
            decode = "exact"
        self.data_config = replace(data_config, resampler=resampler, decode=decode)
        self.preprocess = Preprocessor(self.data_config)
        self.views = ViewMaker(spec.views, self.preprocess)
        # Channels-last is the layout oneDNN and cuDNN convolutions run fastest in.
        model = model.to(self.device, memory_format=torch.channels_last)
        self.tapped = models.TappedModel(model, self.model_spec, self.layers)
        self._autocast_dtype = PRECISIONS[spec.precision]
        # A GPU runs one batch at a time; CPU streams share the network freely
        # (inference only reads it, and the taps keep per-thread state).
        self._lock: contextlib.AbstractContextManager = (
            threading.Lock() if self.device.type != "cpu" else contextlib.nullcontext()
        )
        self.network: torch.nn.Module = self.tapped
        self.optimized = False
        self.batch_limits: dict[tuple[int, bool], BatchLimit] = {}  # see _batch_limit
        # --decode gpu: nvJPEG and the GPU's resize for the JPEGs it takes (see gpu_decode.py).
        self.gpu_decoder = GpuDecoder(self.data_config, self.device) if self.data_config.decode == "gpu" else None
        if spec.optimize:
            self.optimize()

    def optimize(self) -> None:
        """Trace and freeze the tapped network (CPU, fp32 only); keep eager mode unless the result is
        verified equal. Measured on resnet18 (2 cores): tracing 0.5 s, freezing 0.1 s, the check 0.7 s;
        torch.jit.trace's own check_trace re-traced the whole network for another 1.8 s, and is off:
        the comparison below checks what matters, the outputs, at another batch size."""
        if self.optimized or self.device.type != "cpu" or self._autocast_dtype is not None:
            return
        h, w = self.data_config.crop
        gen = torch.Generator().manual_seed(0)
        probe = torch.randn(3, 3, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated in favour of torch.compile, whose start-up
                # costs minutes on a small CPU; tracing costs a second.
                warnings.simplefilter("ignore")
                with torch.no_grad():
                    traced = torch.jit.freeze(
                        torch.jit.trace(self.tapped, probe[:1], strict=False, check_trace=False).eval())
                with torch.inference_mode():
                    want = self.tapped(probe[1:])  # another batch size than traced with
                    got = traced(probe[1:])
        except Exception as exc:  # noqa: BLE001 - any tracing failure just means eager mode
            log.info("running %s eagerly: tracing failed (%s)", self.spec.model, exc)
            return
        for name, ref in want.items():
            err = float((got[name] - ref).norm() / ref.norm().clamp_min(1e-12))
            if not err < 1e-4:
                log.info("running %s eagerly: traced layer %s differs by %.2g", self.spec.model, name, err)
                return
        self.network = traced
        self.optimized = True

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self._autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    @contextlib.contextmanager
    def _cuda_flags(self):
        """On a GPU: cuDNN picks its fastest kernels for the fixed input size, and fp32 means fp32
        (no TF32). Set around each forward pass and restored, so a notebook's own settings survive."""
        if self.device.type != "cuda":
            yield
            return
        saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
             torch.backends.cuda.matmul.allow_tf32) = saved

    def forward(self, pixels: np.ndarray | torch.Tensor, timings: dict | None = None
                ) -> tuple[dict[str, np.ndarray], float]:
        """uint8 (B, H, W, 3) crops (host or device) -> ({layer: float32 (B, D)}, seconds on the device).

        On a GPU the seconds are the forward pass alone; the host-to-device copy (waited for, so the
        two are told apart) is added to ``timings['copy']`` when ``timings`` is given.
        """
        with self._lock, torch.inference_mode(), self._cuda_flags():
            t0 = time.perf_counter()
            x = pixels if isinstance(pixels, torch.Tensor) else torch.from_numpy(pixels)
            x = x.to(self.device, non_blocking=True)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
                t1 = time.perf_counter()
                if timings is not None:
                    timings["copy"] = timings.get("copy", 0.0) + t1 - t0
                t0 = t1
            x = self.preprocess.batch(x)
            with self._autocast():
                out = self.network(x)
            out = {name: t.float().cpu().numpy() for name, t in out.items()}
            return out, time.perf_counter() - t0


# Bounded lifetimes: a process keeps at most one extractor (a long-lived Dask worker that extracts with
# several models holds only the latest, in GPU memory too) and one decode pool; an extraction in this
# process releases both when it ends.
_extractors: dict[ExtractorSpec, Extractor] = {}
_extractors_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None
_runs = 0  # extractions of this process in progress (register/release pairs)
# Full-size decoded images alive at once, over every stream and decode thread of the process:
# a 12 MP photo is 36 MB before it is resized (crops waiting for their batch are small).
_pixel_budget = PixelBudget()


def _free_device_memory() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def get_extractor(spec: ExtractorSpec) -> Extractor:
    """The process's extractor for ``spec``, built on first use (each Dask worker loads the model once);
    building one for another spec lets the previous one on the same device go (--devices: one per GPU)."""
    with _extractors_lock:
        if spec not in _extractors:
            dropped = [s for s in _extractors if s.device == spec.device]
            for old in dropped:
                del _extractors[old]
            if dropped:
                _free_device_memory()
            _extractors[spec] = Extractor(spec)
        return _extractors[spec]


def register_extractor(spec: ExtractorSpec, extractor: Extractor) -> None:
    """Make ``extractor`` this process's one for ``spec`` (the client's model, reused by in-process workers)."""
    global _runs
    with _extractors_lock:
        _extractors.clear()
        _extractors[spec] = extractor
        _runs += 1


def release_extractor(spec: ExtractorSpec) -> None:
    """Forget ``spec``'s extractor, and the decode pool once no extraction of this process runs:
    a notebook running many extractions keeps none of their models or threads."""
    global _runs
    with _extractors_lock:
        _extractors.pop(spec, None)
        _runs = max(0, _runs - 1)
        if _runs == 0:
            _extractors.clear()  # --devices: the other GPUs' copies too
            _release_pool()
    _free_device_memory()


@contextlib.contextmanager
def extractor_in_use(spec: ExtractorSpec, extractor: Extractor):
    """``extractor`` is this process's one for ``spec`` while the block runs (an extraction), released after."""
    register_extractor(spec, extractor)
    try:
        yield extractor
    finally:
        release_extractor(spec)


def _release_pool() -> None:
    global _pool
    if _pool is not None:
        _pool[1].shutdown(wait=False)
        _pool = None


def _decode_pool(threads: int) -> ThreadPoolExecutor:
    global _pool
    with _extractors_lock:
        if _pool is None or _pool[0] != threads:
            _release_pool()
            _pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="featpipe-decode"))
        return _pool[1]


@dataclass
class PartitionResult:
    """Features of one partition; rows of failed images hold NaN and valid = False."""

    index: int
    start: int
    features: dict[str, np.ndarray]
    valid: np.ndarray
    errors: list[tuple[int, str]]  # (row in the whole run, reason)
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.valid)


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


def _set_torch_threads(plan: WorkPlan) -> None:
    threads = plan.torch_threads
    if threads is None:  # a Dask worker (--scheduler): local runs set torch_threads (localpool.LocalExecutor.size)
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


@dataclass(frozen=True)
class PartitionTask:
    """One unit of Dask work: rows [start, start + len(paths)) of the run."""

    index: int
    start: int
    root: str
    paths: tuple[str, ...]
    shard: str | None = None  # a tar shard, whose members the rows are (see inputs.py)
    sources: tuple[str | None, ...] | None = None  # where rows are read when not root/path: members, signed URLs
    storage_options: dict = field(default_factory=dict, repr=False)  # fsspec options for URLs


def run_partition(spec: ExtractorSpec, task: PartitionTask, plan: WorkPlan) -> PartitionResult:
    """Decode, preprocess and forward every image of ``task``."""
    if plan.devices:  # --devices: this local worker's own GPU (by its thread's slot), and its own network there
        spec = replace(spec, device=device_of_worker(plan.devices, localpool.worker_name()))
    ex = get_extractor(spec)
    on_cpu = ex.device.type == "cpu"
    if on_cpu:
        _set_torch_threads(plan)
    # Local paths, URLs or one tar shard's members; a shard left half-read by an exception closes when
    # the reader is collected.
    read = open_partition(task.root, task.sources or task.paths, task.shard, task.storage_options)
    n = len(task.paths)
    limit = _batch_limit(ex, plan)

    views, tta = ex.views.count, ex.views.spec.tta_views

    def cpu_crops(i: int, source) -> np.ndarray:
        """(views, H, W, 3) of row i from ``source`` (a path, a file object), decoded on the CPU within the
        process's pixel budget; or BadImage."""
        try:
            with _pixel_budget.hold() as reserve:
                img = ex.preprocess.decode(source, plan.max_pixels, reserve)
                return ex.preprocess.image(img)[None] if views == 1 else ex.views.crops(img, task.paths[i])
        except BadImage:
            raise
        except Exception as exc:  # noqa: BLE001 - a strange file must not stop the run
            raise BadImage(f"cannot decode: {type(exc).__name__}: {exc}") from None

    def decode(i: int) -> tuple[np.ndarray | bytes | None, str | None, float]:
        """The row's crops, or with --decode gpu the bytes of a JPEG the GPU will decode; or why not."""
        t0 = time.perf_counter()
        try:
            source = read(i)
            if ex.gpu_decoder is not None:
                data, source = _gpu_bytes(source, plan.max_pixels)
                if data is not None:
                    return data, None, time.perf_counter() - t0
            return cpu_crops(i, source), None, time.perf_counter() - t0
        except BadImage as exc:
            return None, str(exc), time.perf_counter() - t0

    features: dict[str, np.ndarray] = {}
    valid = np.zeros(n, dtype=bool)
    errors: list[tuple[int, str]] = []
    timings = {"decode": 0.0, "forward": 0.0}
    rows: list[int] = []
    crops: list[np.ndarray | bytes] = []  # (views, H, W, 3) per row, or JPEG bytes for the GPU

    def flush() -> None:
        if not rows:
            return
        # A JPEG nvJPEG rejects decodes on the CPU from the bytes already read (a tar member is read once).
        batch, failed = _to_batch(ex, crops, lambda k, data: cpu_crops(rows[k], io.BytesIO(data)), timings)
        for k, reason in failed.items():
            errors.append((task.start + rows[k], reason))
        done = [r for k, r in enumerate(rows) if k not in failed]
        rows.clear()
        crops.clear()
        if not done:
            return
        out, seconds = forward_adaptive(lambda x: ex.forward(x, timings), batch, limit)
        timings["forward"] += seconds
        for name, values in out.items():
            per_row = values.reshape(len(done), views, -1)  # a row's views are consecutive
            if name not in features:
                features[name] = np.full((n, per_row.shape[2]), np.nan, dtype=np.float32)
            # TTA: the mean over the row's deterministic views (one view: the eval crop itself).
            features[name][done] = per_row[:, 0] if tta == 1 else per_row[:, :tta].mean(axis=1)
            if views > tta:  # augmented views, stored per row as (views x dim) and laid out by the merge
                aug = augmented_name(name)
                if aug not in features:
                    features[aug] = np.full((n, (views - tta) * per_row.shape[2]), np.nan, dtype=np.float32)
                features[aug][done] = per_row[:, tta:].reshape(len(done), -1)
        valid[done] = True

    if on_cpu:
        decoded = (decode(i) for i in range(n))  # this stream decodes, the others compute
    else:
        pool = _decode_pool(plan.decode_threads or cpu_cores())
        decoded = _decode_ahead(decode, n, pool, lookahead=max(2, 2 * limit.size // views))
    for i, (pixels, reason, seconds) in enumerate(decoded):
        localpool.check_stop()  # the run ended (an error, Ctrl-C in a notebook): leave now, not after the partition
        timings["decode"] += seconds
        if reason is not None:
            errors.append((task.start + i, reason))
            continue
        rows.append(i)
        crops.append(pixels)
        if len(rows) * views >= limit.size:  # --batch-size counts network inputs, views included
            flush()
    flush()
    if not features:  # every image failed: shapes come from a dry forward
        out, _ = ex.forward(np.zeros((1, *ex.data_config.crop, 3), np.uint8))
        features = {k: np.full((n, v.shape[1]), np.nan, np.float32) for k, v in out.items()}
        if views > tta:
            features.update({augmented_name(k): np.full((n, (views - tta) * v.shape[1]), np.nan, np.float32)
                             for k, v in out.items()})
    read.close()
    errors.sort()
    return PartitionResult(task.index, task.start, features, valid, errors, timings)


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


class BatchLimit:
    """The largest batch the device has held so far (``--batch-size auto``): halved on out-of-memory."""

    def __init__(self, size: int, adaptive: bool):
        self.size = size
        self.adaptive = adaptive
        self._lock = threading.Lock()

    def shrink(self, failed: int) -> None:
        with self._lock:
            new = max(1, min(self.size, failed // 2))
            if new < self.size:
                log.warning("out of memory at a batch of %d images: continuing with %d", failed, new)
                self.size = new


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's (and other devices') out-of-memory errors, told from any other failure."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(exc, oom)) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def forward_adaptive(forward, pixels, limit: BatchLimit) -> tuple[dict[str, np.ndarray], float]:
    """``forward`` over ``pixels`` in slices of at most ``limit.size``; with an adaptive limit an
    out-of-memory error halves it and the slice runs again, so every row comes out once, in order."""
    pieces: list[dict[str, np.ndarray]] = []
    seconds, i, n = 0.0, 0, len(pixels)
    while i < n:
        size = min(limit.size, n - i)
        try:
            out, sec = forward(pixels[i:i + size])
        except Exception as exc:
            if not (limit.adaptive and is_out_of_memory(exc)) or size == 1:
                raise
            _free_device_memory()
            limit.shrink(size)
            continue
        pieces.append(out)
        seconds += sec
        i += size
    if len(pieces) == 1:
        return pieces[0], seconds
    return {name: np.concatenate([p[name] for p in pieces]) for name in pieces[0]}, seconds


def _batch_limit(ex: Extractor, plan: WorkPlan) -> BatchLimit:
    """The extractor's batch limit for this plan, shared by every partition it runs: what one
    partition learns about the device's memory, the next one knows."""
    with _extractors_lock:
        key = (plan.batch_size, plan.auto_batch)
        if key not in ex.batch_limits:
            first = plan.batch_size
            if plan.auto_batch and ex.device.type == "cpu":  # a cluster's client may not know its workers' devices
                first = min(first, AUTO_BATCH["cpu"])
            ex.batch_limits[key] = BatchLimit(first, plan.auto_batch)
        return ex.batch_limits[key]


def _decode_ahead(decode, n: int, pool: ThreadPoolExecutor, lookahead: int):
    """Yield decode(0..n-1) in order, keeping ``lookahead`` decodes in flight (bounded memory)."""
    pending: collections.deque[Future] = collections.deque()
    submitted = 0
    while submitted < n or pending:
        while submitted < n and len(pending) < lookahead:
            pending.append(pool.submit(decode, submitted))
            submitted += 1
        yield pending.popleft().result()
