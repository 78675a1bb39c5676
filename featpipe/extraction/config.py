"""The settings of an extraction (``ExtractConfig``, checked when it is made), what they ask for
(``request_of``: the request a finished run is recognised by) and what a run did (``ExtractSummary``, with the
stage that bounded it and what would help).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import identity, models
from ..errors import UsageError
from ..settings import EXTRACT, shown
from ..store import load
from .decode import MAX_PIXELS
from .parts import PartStore
from .views import ViewSpec


@dataclass(frozen=True)
class ExtractConfig:
    """Settings of one extraction (the CLI's options, as one typed object). Made, each value is within its range
    (settings.EXTRACT) or it raises SettingError naming the field (``ExtractConfig.batch_size``): see
    :func:`check_config`."""

    input: str | Path  # a local path, an fsspec URL, or a brace pattern of tar shards
    output: Path
    model: str = ""  # "": the base model recorded in a `featpipe finetune` checkpoint given as weights
    weights: str = "pretrained"
    layers: tuple[str, ...] = ("pooled",)
    pool: str = "avg"
    batch_size: int | str = 32  # or "auto": the largest that fits, halved on out-of-memory
    device: str = "auto"
    precision: str = "fp32"
    backend: str = "auto"  # auto, torch or openvino: what runs the CPU's forward pass (extraction/backends.py)
    resampler: str = "auto"  # auto, torch or pil: see extraction/preprocess.py
    decode: str = "exact"  # exact, fast, gpu or auto (settings.DECODES): see models/data_config.py
    dtype: str = "float32"
    seed: int = 0
    partition_size: int | None = None  # default: about 50 partitions, at most executors.MAX_PARTITION rows
    streams: int | None = None  # CPU: partitions computed at once; default min(cores, 4)
    decode_threads: int | None = None  # GPU: decode threads feeding the device; default: the cores
    devices: str | None = None  # "all" or "cuda:0,cuda:1": one local worker per GPU (see extraction/devices.py)
    # An int is a count of images, a float a fraction of all images (0.05 = 5%); None: no limit.
    max_failures: int | float | None = None
    max_pixels: int = MAX_PIXELS
    scheduler: str | None = None
    # Where the parts (partial results) live while a run is unfinished: a folder or an fsspec URL that every
    # worker reaches, where workers write them. None: <output>.parts, written by the client (see parts.py).
    shard_dir: str | None = None
    overwrite: bool = False
    # Images are the same when path, size and modification time are; with verify_content also their bytes.
    verify_content: bool = False
    retry_failed: bool = False  # compute images that failed before again (else a failure is kept as a result)
    # Views besides the eval crop (extraction/views.py): features averaged over deterministic TTA views, and
    # `augment` seeded augmented views per image, stored apart in /augmented/<layer>.
    tta: str = "none"
    augment: int = 0
    augment_strength: str = "standard"
    flip: bool = True  # augmented views may be mirrored; off for digits, text, left/right signs

    label_key: str | None = None  # tar shards: where a sample's label is (.cls, .txt, or a .json field)
    # fsspec options for URLs (credentials among them: never printed, never stored).
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        check_config(self)

    @property
    def views(self) -> ViewSpec:
        return ViewSpec(self.tta, self.augment, self.augment_strength, self.flip, self.seed)


@dataclass
class ExtractSummary:
    """What a run did, and where its time went (seconds)."""

    output: Path
    images: int
    failed: int
    computed: int  # images processed by this run (the rest came from finished shards)
    resumed_partitions: int
    seconds: float
    timings: dict[str, float] = field(default_factory=dict)
    errors: list[tuple[str, str]] = field(default_factory=list)  # first few (path, reason)
    already_complete: bool = False
    # Against the previous feature file, when the run updated one (see featpipe/identity.py):
    updated: bool = False
    changes: dict[str, int] = field(default_factory=dict)  # unchanged, added, changed, removed, retried
    layers_added: tuple[str, ...] = ()
    wall_seconds: float = 0.0  # the whole call, model build and merge included
    # How many of each stage ran side by side (decode threads or CPU streams; forward passes at once).
    parallel: dict[str, int] = field(default_factory=dict)
    backend: str = ""  # what ran the forward pass, with its version ('openvino 2026.4.1'); "" when nothing ran
    conversion_seconds: float = 0.0  # converting the network for the backend (0 when read from the cache)

    @property
    def valid(self) -> int:
        return self.images - self.failed

    @property
    def images_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def check_config(config: ExtractConfig) -> None:
    """The settings' own values (an ExtractConfig checks itself when it is made, before any file is touched):
    each field against its constraint (settings.EXTRACT), then the settings that must agree with each other.

    Raises:
        SettingError: a value out of its range or not one of its choices, named ``ExtractConfig.<field>``.
        UsageError: settings that contradict each other.
    """
    EXTRACT.check(config, skip=() if config.augment else ("augment_strength",))
    if config.devices is not None and config.scheduler:
        raise EXTRACT.refuse("{devices} runs local workers, one per GPU; with {scheduler} start one "
                             "`dask worker` per GPU instead (CUDA_VISIBLE_DEVICES=N) and leave out {devices}")
    if config.devices is not None and config.device not in ("auto", "cuda"):
        raise EXTRACT.refuse(f"{{devices}} {shown(config.devices)} and {{device}} {shown(config.device)} disagree; "
                             "give one of them")


def check_output(config: ExtractConfig) -> None:
    """The output's folder exists and is writable, and the output is no folder (``config.output`` absolute).

    Raises:
        UsageError: naming the path and the fix.
    """
    out = config.output
    if not out.parent.is_dir():
        raise UsageError(f"output folder {str(out.parent)!r} does not exist; create it or choose another -o")
    if out.is_dir():
        raise UsageError(f"output {str(out)!r} is a folder; give a file name such as features.h5")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"output folder {str(out.parent)!r} is not writable; choose another -o")
    parts = PartStore(config.shard_dir) if config.shard_dir is not None else None
    if parts is not None and parts.local is not None and parts.local.exists() and not parts.local.is_dir():
        raise EXTRACT.refuse(f"{{shard_dir}} {shown(config.shard_dir)} is a file; give a folder (or an fsspec URL)")


def request_of(config: ExtractConfig) -> tuple[str, dict]:
    """The model's resolved name, and what ``config`` asks for with the digest of its weights file and the
    versions that build the extractor (identity.request): enough to recognise a finished run without torch."""
    model = models.resolve(config.model or _checkpoint_model(config.weights)).name
    return model, identity.request(model, weights_argument(config), config.seed, config.layers, config.pool,
                                   config.precision, config.dtype, config.resampler, _request_decode(config),
                                   config.views.identity())


def _checkpoint_model(weights: str) -> str:
    """The base model of a `featpipe finetune` checkpoint, for an extract without --model."""
    if weights in ("pretrained", "random"):
        raise EXTRACT.refuse("{model} is missing; name one (`featpipe models` lists them), or give {weights} a "
                             "checkpoint from `featpipe finetune`, which records its model")
    from ..models.weights import checkpoint_meta

    meta = checkpoint_meta(weights)
    if meta is None:
        raise EXTRACT.refuse(f"{{model}} is missing, and {{weights}} {shown(weights)} is a plain state dict that does "
                             "not say which model it belongs to; give {model}")
    return str(meta["model"])


def _request_decode(config: ExtractConfig) -> str:
    """--decode as the request records it; 'auto' with the device type ('auto:cuda'), so a GPU-decoded file
    is never taken for what 'auto' asks of a CPU. Only --decode auto with --device auto needs torch to tell."""
    if config.decode != "auto":
        return config.decode
    device = config.device
    if device == "auto" and not config.scheduler:
        from .devices import resolve_device

        device = resolve_device(device)
    # What auto turns into depends on the device type (and the model, which the request names):
    # 'auto' on a GPU and 'auto' on a CPU are different requests. On a cluster its workers decide.
    return "auto" if device == "auto" else f"auto:{device.split(':')[0]}"


def weights_argument(config: ExtractConfig) -> str:
    """What --weights said, resolved: enough to extract the same way again (featpipe predict on images)."""
    return config.weights if config.weights in ("pretrained", "random") else str(Path(config.weights).resolve())


# What helps when a stage bounds the run (see bottleneck).
_ADVICE = {
    "decode": "reading and decoding images (on the CPU): more cores or --decode-threads on a GPU host; "
              "--decode fast for photos much larger than the network's input; --decode gpu on a GPU",
    "gpu_decode": "nvJPEG decoding and resizing on the GPU: larger batches (--batch-size auto), or "
                  "--decode exact to share the work with the CPU's cores",
    "forward": "the network's forward pass: --precision bf16 on a CPU with AVX512-BF16 or AMX, a GPU instead of the "
               "CPU, --precision bf16 or fp16 on a GPU, more GPUs (--devices all), or a smaller model",

    "copy": "host-to-device copies: larger batches; --decode gpu sends compressed JPEGs instead of pixels",
    "write": "writing features: fewer or smaller layers (--pool, --layer), --dtype float16",
}


def bottleneck(summary: ExtractSummary) -> tuple[str, float, str] | None:
    """The stage that bounded the run, the share of the compute time it was busy (summed seconds over
    the workers that ran it side by side), and what would help; None when nothing was computed.

    Reading files is part of ``decode`` (Pillow reads as it decodes)."""
    t, seconds = summary.timings, summary.seconds
    if not summary.computed or seconds <= 0:
        return None
    busy = {stage: t.get(stage, 0.0) / (seconds * max(1, summary.parallel.get(stage, 1)))
            for stage in ("decode", "gpu_decode", "forward", "copy", "write") if t.get(stage)}
    if not busy:
        return None
    stage = max(busy, key=busy.get)
    advice = _ADVICE[stage]
    if stage == "forward" and summary.backend.startswith("torch") and "copy" not in t:  # a CPU run on torch
        advice = advice.replace(": ", ": --backend openvino (featpipe[cpu]; auto takes it for runs of 256 images or "
                                "more), ", 1)
    return stage, busy[stage], advice


def summary_of(output: Path, computed: int, resumed: int, seconds: float, timings: dict,
               already_complete: bool = False, wall: float = 0.0) -> ExtractSummary:
    """The summary of a run that wrote (or found complete) ``output``: counts and errors read from the file."""
    fs = load(output)
    return ExtractSummary(
        output=output,
        images=len(fs),
        failed=int((~fs.valid).sum()),
        computed=computed,
        resumed_partitions=resumed,
        seconds=seconds,
        timings=timings,
        errors=list(zip(fs.errors["path"], fs.errors["reason"], strict=True))[:10],
        already_complete=already_complete,
        wall_seconds=wall,
    )
