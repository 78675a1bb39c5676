"""The network of an extraction: an ``Extractor`` (a model in eval mode with its layer taps and its
preprocessing, on one device), the per-process cache that shares it between partitions, and each extractor's
batch limit (``--batch-size auto``: batching.py halves it on out-of-memory).

The network is built once per process and shared by every partition that process runs: the client registers
its own (``extractor_in_use``) for the local workers, and a Dask worker builds one on first use
(``get_extractor``). A process keeps at most one per device.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import torch

from .. import models
from ..errors import WeightsError
from ..models.data_config import DataConfig, resolve_decode
from ..settings import EXTRACT, literal
from . import backends
from .batching import AUTO_BATCH, BatchLimit, free_device_memory
from .devices import local_devices, resolve_device
from .gpu_decode import GpuDecoder
from .preprocess import Preprocessor, resolve_resampler
from .views import ViewMaker, ViewSpec

if TYPE_CHECKING:
    from .config import ExtractConfig

log = logging.getLogger(__name__)

# Tracing and freezing the network (extractor.Extractor.optimize) costs 1-2 s and saves 5-30 ms per image on
# a CPU (resnet18: 6 ms, EfficientNet-Lite0: 31 ms, batch 32, 2 cores): it pays for itself past about
# 250 images (resnet18), so a run that computes fewer stays eager and starts at once.
OPTIMIZE_MIN_IMAGES = 256

# settings.PRECISIONS -> the dtype autocast computes in (None: no autocast).
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class FromCrops(torch.nn.Module):
    """The tapped network fed the crops as decoded, uint8 (B, H, W, 3) -> {layer: (B, D)}.

    The normalisation is part of the network, so that a traced or converted graph runs it fused with the first
    convolution, and a converted one takes a quarter of float32's bytes in the channels-last layout the crops
    already have (no transposing copy per batch)."""

    def __init__(self, preprocess: Preprocessor, tapped: models.TappedModel):
        super().__init__()
        self.preprocess = preprocess
        self.tapped = tapped

    def forward(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.tapped(self.preprocess.batch(crops))


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
    decode: str = "exact"  # exact, fast, gpu or auto (settings.DECODES): see models/data_config.py
    # Set by the client once it has built the model: every worker checks its
    # weights against it, so no worker can silently use other weights.
    weights_sha256: str | None = None
    # Fold batch norm into convolutions and fuse ops (CPU, fp32): the same
    # network to ~1e-6, 10-30% faster per image (resnet18, EfficientNet-Lite0 on
    # CPU), verified against eager mode. It costs about 1-2 s (tracing is Python
    # work per module), so the client asks for it only when the run computes
    # enough images to pay that back (see extract.OPTIMIZE_MIN_IMAGES).
    optimize: bool = True
    views: ViewSpec = ViewSpec()  # TTA and augmented views besides the eval crop (extraction/views.py)
    # auto, torch or openvino (extraction/backends.py); with optimize, the CPU's network is converted to it.
    # The client sends workers the backend its own network ended up on, so all compute on the same one.
    # A network built directly (tests, notebooks) stays on torch unless it asks; extract's default is auto.
    backend: str = "torch"


class Extractor:
    """A network in eval mode with its layer taps and its preprocessing, on one device."""

    def __init__(self, spec: ExtractorSpec):
        EXTRACT.check_value("precision", spec.precision)
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
            else models.eval_config(model, self.model_spec)
        self.device = torch.device(resolve_device(spec.device))
        resampler = resolve_resampler(spec.resampler, data_config.interpolation, data_config.crop_mode)
        decode = resolve_decode(spec.decode, self.device.type, resampler)
        if decode == "gpu" and spec.views.tta_views + spec.views.augment > 1:  # views need the whole picture, on the CPU
            if spec.decode == "gpu":
                raise EXTRACT.refuse("{decode} gpu makes one crop per image; {tta} and {augment} views need "
                                     "{decode} exact or fast")
            decode = "exact"
        self.data_config = replace(data_config, resampler=resampler, decode=decode)
        self.preprocess = Preprocessor(self.data_config)
        self.views = ViewMaker(spec.views, self.preprocess)
        # Channels-last is the layout oneDNN and cuDNN convolutions run fastest in.
        model = model.to(self.device, memory_format=torch.channels_last)
        self.tapped = models.TappedModel(model, self.model_spec, self.layers)
        self.backend_target = backends.resolve(spec.backend, self.device.type, spec.precision)
        self._autocast_dtype = AUTOCAST[spec.precision]
        # A GPU runs one batch at a time; CPU streams share the network freely
        # (inference only reads it, and the taps keep per-thread state).
        self._lock: contextlib.AbstractContextManager = (
            threading.Lock() if self.device.type != "cpu" else contextlib.nullcontext()
        )
        self.from_crops = FromCrops(self.preprocess, self.tapped)
        self.network: Callable = self.from_crops  # uint8 (B, H, W, 3) -> {layer: tensor or array}
        self.optimized = False
        self.converted: backends.OpenVinoNetwork | None = None
        self.batch_limits: dict[tuple[int, bool], BatchLimit] = {}  # see batch_limit
        # --decode gpu: nvJPEG and the GPU's resize for the JPEGs it takes (see gpu_decode.py).
        self.gpu_decoder = GpuDecoder(self.data_config, self.device) if self.data_config.decode == "gpu" else None
        if spec.optimize:
            self.optimize()

    @property
    def backend(self) -> str:
        """What runs the forward pass, with its version: 'openvino 2026.4.1' or 'torch 2.5.1'."""
        return self.converted.describe() if self.converted is not None else f"torch {torch.__version__}"

    def cache_key(self) -> str:
        """The name of this network's conversion in the on-disk cache (extraction/backends.py)."""
        return backends.cache_key(self.model_spec.name, self.weights.sha256,
                                  [(layer.name, layer.node, layer.pool) for layer in self.layers], self.data_config)

    def optimize(self) -> None:
        """The CPU's fastest exact network: converted to the backend (extraction/backends.py), or with the torch
        backend traced and frozen. --backend auto falls back to torch, saying why, where conversion fails."""
        if self.optimized or self.converted is not None:
            return
        if self.backend_target == "openvino":
            try:
                self.converted = backends.OpenVinoNetwork(self.from_crops, [layer.name for layer in self.layers],
                                                          self.data_config.crop, self.cache_key(), self.spec.precision)
            except backends.ConversionError as exc:
                if self.spec.backend != "auto":
                    raise EXTRACT.refuse(f"{{backend}} openvino cannot run {literal(self.spec.model)}: "
                                         f"{literal(str(exc))}; use {{backend}} torch") from exc
                log.warning("%s runs on torch: OpenVINO conversion failed (%s)", self.spec.model, exc)
                self.backend_target = "torch"
            else:
                if self.converted.conversion_seconds:
                    log.info("converted %s for OpenVINO in %.1f s (cached in %s)", self.spec.model,
                             self.converted.conversion_seconds, self.converted.path)
                self.network = self.converted
                self._autocast_dtype = None  # OpenVINO computes the precision itself
                return
        self._trace()

    def _trace(self) -> None:
        """Trace and freeze the tapped network (CPU, fp32 only); keep eager mode unless the result is
        verified equal. torch.jit.trace's own check_trace is off: it traces the whole network again, which
        costs more than tracing did, while the comparison below checks what matters, the outputs, at another
        batch size."""
        if self.optimized or self.device.type != "cpu" or self._autocast_dtype is not None:
            return
        probe = backends.probe_crops(self.data_config.crop)
        try:
            with warnings.catch_warnings():
                # TorchScript is deprecated in favour of torch.compile, whose start-up
                # costs minutes on a small CPU; tracing costs a second.
                warnings.simplefilter("ignore")
                with torch.no_grad():
                    traced = torch.jit.freeze(
                        torch.jit.trace(self.from_crops, probe[:1], strict=False, check_trace=False).eval())
                with torch.inference_mode():
                    want = self.from_crops(probe[1:])  # another batch size than traced with
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
            with self._autocast():
                out = self.network(x)
            out = {name: t if isinstance(t, np.ndarray) else t.float().cpu().numpy() for name, t in out.items()}
            return out, time.perf_counter() - t0


# --- the client's network --------------------------------------------------------------------------------


def build_for_run(config: ExtractConfig, model: str) -> tuple[ExtractorSpec, Extractor]:
    """The client's network, and the spec every worker builds the same one from (with its weights' digest)."""
    devices = local_devices(config)
    spec = ExtractorSpec(
        model=model,
        weights=config.weights,
        seed=config.seed,
        layers=tuple(config.layers),
        pool=config.pool,
        # On a cluster each worker resolves the device itself; locally, now (--devices: the client's copy
        # on the first GPU, each worker its own).
        device=config.device if config.scheduler else devices[0] if devices else resolve_device(config.device),
        precision=config.precision,
        resampler=config.resampler,
        views=config.views,
        decode=config.decode,
        backend=config.backend,
    )
    # Layers are checked on a weightless copy first (a forward on the meta device
    # computes nothing), so a typo costs no weight loading.
    model_spec = models.resolve(spec.model)
    with torch.device("meta"):
        net = models.create_architecture(model_spec).eval()
        cfg = models.eval_config(net, model_spec)
        tapped = models.TappedModel(net, model_spec, models.resolve_layers(net, model_spec, spec.layers, spec.pool))
        with torch.inference_mode():
            tapped(torch.zeros(1, 3, *cfg.crop))
    # Built here, fresh (a checkpoint file may have changed since the last run):
    # bad weights fail before any work starts, and the weights' digest pins
    # every worker to the same weights. Whether to optimise is decided once the
    # run knows how many images it computes (optimize_if_worth_it).
    ex = Extractor(replace(spec, device="cpu" if config.scheduler else spec.device, optimize=False))
    return replace(spec, weights_sha256=ex.weights.sha256), ex


def optimize_if_worth_it(spec: ExtractorSpec, ex: Extractor, computed: int) -> ExtractorSpec:
    """The spec workers build from: optimised (converted to the backend, or traced and frozen) when the run
    computes enough images to pay that back (OPTIMIZE_MIN_IMAGES), when the converted network is already cached,
    or when --backend names the runtime. The client's network follows the same decision, and workers the
    backend it ended up on."""
    worth = computed >= OPTIMIZE_MIN_IMAGES or spec.backend == "openvino" or (
        ex.backend_target == "openvino" and backends.cache_path(ex.cache_key()).exists())
    if worth:
        ex.optimize()
    return replace(spec, optimize=worth, backend=ex.backend_target if worth else "torch")


# Bounded lifetimes: a process keeps at most one extractor (a long-lived Dask worker that extracts with
# several models holds only the latest, in GPU memory too) and one decode pool; an extraction in this
# process releases both when it ends.


_extractors: dict[ExtractorSpec, Extractor] = {}
_extractors_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None
_runs = 0  # extractions of this process in progress (register/release pairs)


def get_extractor(spec: ExtractorSpec) -> Extractor:
    """The process's extractor for ``spec``, built on first use (each Dask worker loads the model once);
    building one for another spec lets the previous one on the same device go (--devices: one per GPU)."""
    with _extractors_lock:
        if spec not in _extractors:
            dropped = [s for s in _extractors if s.device == spec.device]
            for old in dropped:
                del _extractors[old]
            if dropped:
                free_device_memory()
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
    free_device_memory()


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


def decode_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` decode threads (GPU runs), made on first use; released with the last
    extraction."""
    global _pool
    with _extractors_lock:
        if _pool is None or _pool[0] != threads:
            _release_pool()
            _pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="featpipe-decode"))
        return _pool[1]


def batch_limit(ex: Extractor, batch_size: int, auto: bool) -> BatchLimit:
    """The extractor's batch limit for a run's batch size, shared by every partition it runs: what one
    partition learns about the device's memory, the next one knows."""
    with _extractors_lock:
        key = (batch_size, auto)
        if key not in ex.batch_limits:
            first = batch_size
            if auto and ex.device.type == "cpu":  # a cluster's client may not know its workers' devices
                first = min(first, AUTO_BATCH["cpu"])
            ex.batch_limits[key] = BatchLimit(first, auto)
        return ex.batch_limits[key]
