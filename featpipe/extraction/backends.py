"""Where the CPU's forward pass runs: PyTorch (eager, or traced and frozen) or OpenVINO (``--backend``).

OpenVINO runs the same network faster than featpipe's traced PyTorch on a CPU, on every architecture measured, in
fp32 and in bf16 where the CPU has AVX512-BF16 or AMX (docs/benchmarks.md: bench/backends_archs.py). ONNX Runtime
was measured too: slower than OpenVINO in fp32 on the development machine, and without a bf16 path on the CPU,
so it is not offered.

The tapped network fed the crops as decoded (``extractor.FromCrops``: uint8 (B, H, W, 3) in, the normalisation
inside, one output per ``--layer``, pooled as asked) is exported once to ONNX, so every layer comes out of the
converted graph. The export is cached on disk (``~/.cache/featpipe/openvino``), keyed by what makes the network
(model, weights' sha256, layers, input size and normalisation) and the versions of torch (the exporter) and
OpenVINO; a second run and every Dask worker on the host read it. Each load is checked against PyTorch on a
probe batch before it is used (see :func:`agreement`); a cache file that fails to load or to agree is converted
again.
"""
from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .. import identity
from .._util import atomic_write, cache_dir, cpu_cores, installed_version
from ..settings import EXTRACT

log = logging.getLogger(__name__)

# Exactness (tests/test_backends.py checks it on real Lite0 weights and the classic architectures):
# fp32 features within FP32_RTOL of PyTorch's, relative to the row's largest magnitude (a feature near zero has
# no relative error to speak of), and a cosine per row of at least FP32_MIN_COSINE. bf16 against fp32: a cosine
# per row of at least BF16_MIN_COSINE: real Lite0 weights on six sample photos measured 0.9985 (OpenVINO) and
# 0.9989 (torch autocast) at the worst row, resnet18 0.99999; --decode fast's is 0.9965.
FP32_RTOL = 1e-4
FP32_MIN_COSINE = 0.99999
BF16_MIN_COSINE = 0.998
INSTALL_HINT = "pip install 'featpipe[cpu]'"


class ConversionError(Exception):
    """The network could not be converted, or the converted one does not agree with PyTorch."""


def check_backend(choice: str) -> None:
    """One of settings.BACKENDS."""
    EXTRACT.check_value("backend", choice)


def openvino_version() -> str | None:
    version = installed_version("openvino")
    return None if version == "none" else version


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX), from the kernel's flags (Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve(choice: str, device_type: str, precision: str) -> str:
    """The backend (settings.BACKENDS) for a run on ``device_type`` at ``precision``: 'torch' or 'openvino'.

    'auto' is OpenVINO where it is installed and can do the precision on the CPU (fp32, bf16), else torch.

    Raises:
        UsageError: an unknown backend; OpenVINO on a GPU, in fp16, or not installed; bf16 on a CPU without it.
    """
    check_backend(choice)
    if device_type == "cpu" and precision == "bf16" and not cpu_has_bf16():
        raise EXTRACT.refuse("{precision} bf16 is unsupported on this CPU (it has neither AVX512-BF16 nor AMX): "
                             "it would be emulated, slower than fp32; use {precision} fp32")
    if choice == "torch" or (choice == "auto" and (device_type != "cpu" or precision == "fp16")):
        return "torch"
    if device_type != "cpu":
        raise EXTRACT.refuse(f"{{backend}} openvino runs on the CPU, not {device_type}; use {{backend}} auto or torch")
    if precision == "fp16":
        raise EXTRACT.refuse("{backend} openvino computes fp32 or bf16 on the CPU; use {precision} fp32 or bf16")
    if openvino_version() is None:
        if choice == "auto":
            return "torch"
        raise EXTRACT.refuse(f"{{backend}} openvino needs OpenVINO: {INSTALL_HINT}")
    return "openvino"


def agreement(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> tuple[float, float]:
    """(largest difference relative to its row's largest magnitude, smallest cosine of a row), over layers."""
    rel, cos = 0.0, 1.0
    for name, ref in want.items():
        a, b = np.asarray(got[name], np.float64), np.asarray(ref, np.float64)
        scale = np.maximum(np.abs(b).max(axis=1, keepdims=True), 1e-12)
        rel = max(rel, float((np.abs(a - b) / scale).max()))
        norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-24)
        cos = min(cos, float(((a * b).sum(axis=1) / norms).min()))
    return rel, cos


def exact(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> bool:
    """``got`` is within the fp32 tolerance of PyTorch fp32's ``want``."""
    rel, cos = agreement(got, want)
    return rel <= FP32_RTOL and cos >= FP32_MIN_COSINE


def file_backends(kept: Mapping[str, int], computed_by: str | None) -> str:
    """The feature file's ``backend`` attribute: every backend whose rows it holds, this run's first.

    ``kept``: the rows kept from earlier runs (the previous file, an interrupted run's parts), counted by the
    backend that computed them (a file's attribute may name several). An update or a resumed run keeps them
    whatever computed them: backends agree within the tolerance of the precision (FP32_RTOL and
    FP32_MIN_COSINE; BF16_MIN_COSINE against fp32), which the identity pins (a bf16 row never joins fp32
    ones). The attribute says when a file holds rows of more than one.
    """
    older = [n for n in dict.fromkeys(n for text, rows in kept.items() if rows for n in text.split(", ")) if n]
    mixed = list(dict.fromkeys(([computed_by] if computed_by else []) + older))
    if computed_by and len(mixed) > 1:
        log.info("keeping %d rows computed by %s; the new ones come from %s (they agree within the precision's "
                 "tolerance: docs/extract.md, 'On the CPU'); --overwrite computes every row again",
                 sum(kept.values()), ", ".join(older), computed_by)
    return ", ".join(mixed)


def cache_key(model: str, weights_sha256: str, layers: Sequence, data_config) -> str:
    """The converted network's cache name: what makes the network, and the converters' versions."""
    import torch

    return identity.config_hash({"model": model, "weights_sha256": weights_sha256,
                                 "layers": [list(layer) for layer in layers],
                                 "input": ["uint8 crops", *data_config.crop],
                                 "normalise": [list(data_config.mean), list(data_config.std)],
                                 "torch": str(torch.__version__), "openvino": openvino_version()})[:32]


def cache_path(key: str) -> Path:
    return cache_dir("openvino", f"{key}.onnx")


def probe_crops(crop: Sequence[int]):
    """Three random uint8 crops (3, H, W, 3), the same each time: what a traced or converted network is checked on
    (the first to trace or export with, the other two at another batch size)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, *crop, 3), generator=gen, dtype=torch.uint8)


def _export(network, names: Sequence[str], probe, path: Path) -> None:
    """``network`` (uint8 crops -> {layer: features}) as an ONNX graph whose outputs are the layers, in order;
    batch size free."""
    import torch

    class Outputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.network = network

        def forward(self, crops):
            out = self.network(crops)
            return tuple(out[name] for name in names)

    path.parent.mkdir(parents=True, exist_ok=True)
    outputs = [f"out{i}" for i in range(len(names))]  # layer names may be any module's: keep ONNX's plain
    with atomic_write(path) as tmp, warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(Outputs().eval(), (probe,), str(tmp), dynamo=False, input_names=["crops"],
                          output_names=outputs, opset_version=17,
                          dynamic_axes={"crops": {0: "batch"}, **{o: {0: "batch"} for o in outputs}})


class OpenVinoNetwork:
    """The network on OpenVINO: ``net(crops)`` with crops uint8 (B, H, W, 3) -> {layer: float32 (B, D)}.

    Compiled for the calling thread's share of the cores (``torch.get_num_threads()``, which featpipe's stream
    plan sets, on Dask workers too), with as many OpenVINO streams as such shares fit the host, so that CPU
    streams calling at once run side by side; each calling thread has its own infer request.
    """

    def __init__(self, network, names: Sequence[str], crop: Sequence[int], key: str, precision: str):
        """``network``: extractor.FromCrops, uint8 crops -> {layer: tensor}."""
        import openvino as ov
        import torch

        self.names = tuple(names)
        self.precision = precision
        self.version = openvino_version()
        self.path = cache_path(key)
        self.conversion_seconds = 0.0  # > 0 when this process converted the network (not read from the cache)
        self._core = ov.Core()
        self._compiled: dict[int, object] = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        probe = probe_crops(crop)
        with torch.inference_mode():
            want = {k: v.float().numpy() for k, v in network(probe[1:]).items()}
        for attempt in ("cached", "converted"):
            if attempt == "converted" or not self.path.exists():
                t0 = time.perf_counter()
                try:
                    _export(network, self.names, probe[:1], self.path)
                except Exception as exc:  # noqa: BLE001 - any exporter failure is reported as one
                    raise ConversionError(f"ONNX export failed ({type(exc).__name__}: {exc})") from exc
                self.conversion_seconds = time.perf_counter() - t0
                attempt = "converted"
            try:
                self._model = self._core.read_model(str(self.path))
                check = self._compile(1, "f32")
                got = self._infer(check.create_infer_request(), probe[1:].numpy())
            except Exception as exc:  # noqa: BLE001 - a corrupt cache file or a graph OpenVINO rejects
                if attempt == "converted":
                    raise ConversionError(f"OpenVINO cannot run the converted network ({exc})") from exc
                log.warning("converted network %s is unreadable (%s); converting again", self.path, exc)
                continue
            if exact(got, want):
                return
            rel, cos = agreement(got, want)
            if attempt == "converted":
                raise ConversionError(f"the converted network differs from PyTorch by {rel:.2g} "
                                      f"(cosine {cos:.6f}), more than {FP32_RTOL:g}")
            log.warning("converted network %s differs from PyTorch (%.2g); converting again", self.path, rel)

    def _compile(self, threads: int, hint: str):
        streams = max(1, cpu_cores() // threads)
        return self._core.compile_model(self._model, "CPU", {
            "INFERENCE_PRECISION_HINT": hint,  # explicit: on AMX CPUs OpenVINO's default is bf16
            "NUM_STREAMS": streams,
            "INFERENCE_NUM_THREADS": streams * threads,
        })

    def _infer(self, request, x: np.ndarray) -> dict[str, np.ndarray]:
        result = request.infer({0: np.ascontiguousarray(x, dtype=np.uint8)})
        # The request's output buffers are reused by its next inference: copy.
        return {name: np.array(result[i], dtype=np.float32) for i, name in enumerate(self.names)}

    def __call__(self, x) -> dict[str, np.ndarray]:
        import torch

        threads = torch.get_num_threads()
        local = self._local
        if getattr(local, "threads", None) != threads:
            with self._lock:
                if threads not in self._compiled:
                    self._compiled[threads] = self._compile(threads, "bf16" if self.precision == "bf16" else "f32")
                compiled = self._compiled[threads]
            local.request, local.threads = compiled.create_infer_request(), threads
        return self._infer(local.request, x.numpy() if isinstance(x, torch.Tensor) else x)

    def describe(self) -> str:
        return f"openvino {self.version}"
