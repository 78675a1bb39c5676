"""Extract: the whole run, from a folder of images to one feature file.

Plans partitions, takes the output's lock, resumes what a previous run of the
same configuration finished, dispatches the rest (to threads of this process, or
with --scheduler to a Dask cluster: see distributor), writes each result as a
shard, and merges the shards into the final file. See ARCHITECTURE.md, "Crash safety".
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from .. import identity, models
from .._util import cpu_cores, remove_temporaries
from .._version import __version__
from ..errors import RunConflictError, TooManyFailuresError, UsageError
from ..models.data_config import check_decode, check_resampler
from ..store import FORMAT, FORMAT_VERSION, augmented_name, load
from ..store import decode_strings as store_decode
from . import writer
from .decode import MAX_PIXELS
from .sources import SampleList, discover
from .views import ViewSpec

# torch, timm, Dask (--scheduler) and the network's modules are imported once a run has work to do:
# a finished run is recognised without them (see identity.request).
if TYPE_CHECKING:
    from .runner import Extractor, ExtractorSpec, WorkPlan

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16")
MAX_PARTITION = 1024  # rows lost at most by a crash, per running partition
# Tracing and freezing the network (runner.Extractor.optimize) costs 1-2 s and saves 5-30 ms per image on
# a CPU (resnet18: 6 ms, EfficientNet-Lite0: 31 ms, batch 32, 2 cores): it pays for itself past about
# 250 images (resnet18), so a run that computes fewer stays eager and starts at once.
OPTIMIZE_MIN_IMAGES = 256


@dataclass(frozen=True)
class ExtractConfig:
    """Settings of one extraction (the CLI's options, as one typed object)."""

    input: str | Path  # a local path, an fsspec URL, or a brace pattern of tar shards
    output: Path
    model: str = ""  # "": the base model recorded in a `featpipe finetune` checkpoint given as weights
    weights: str = "pretrained"
    layers: tuple[str, ...] = ("pooled",)
    pool: str = "avg"
    batch_size: int | str = 32  # or "auto": the largest that fits, halved on out-of-memory
    device: str = "auto"
    precision: str = "fp32"
    resampler: str = "auto"  # auto, torch or pil: see extraction/preprocess.py
    decode: str = "exact"  # exact, fast, gpu or auto: see models/data_config.py DECODES
    dtype: str = "float32"
    seed: int = 0
    partition_size: int | None = None  # default: about 50 partitions, at most MAX_PARTITION rows
    streams: int | None = None  # CPU: partitions computed at once; default min(cores, 4)
    decode_threads: int | None = None  # GPU: decode threads feeding the device; default: the cores
    devices: str | None = None  # "all" or "cuda:0,cuda:1": one local worker per GPU (see extraction/devices.py)
    # An int is a count of images, a float a fraction of all images (0.05 = 5%); None: no limit.
    max_failures: int | float | None = None
    max_pixels: int = MAX_PIXELS
    scheduler: str | None = None
    # Where shards live while a run is unfinished: a folder or an fsspec URL that every worker reaches, where
    # workers write them. None: <output>.parts, written by the client (see writer.py).
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

    @property
    def valid(self) -> int:
        return self.images - self.failed

    @property
    def images_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def check_settings(config: ExtractConfig) -> None:
    """The settings' own values, checked before any file is touched (`extract` first of all; a pipeline when
    it is loaded, so that a bad value gets its TOML line). Messages name the command-line option.

    Raises:
        UsageError: a value out of its range or not one of its choices.
    """
    bs = config.batch_size
    if bs != "auto" and not (isinstance(bs, int) and not isinstance(bs, bool) and bs >= 1):
        raise UsageError(f"--batch-size must be at least 1, got {bs!r} (or auto: the largest that fits)")
    check_resampler(config.resampler)
    config.views.check()
    check_decode(config.decode)
    if config.devices is not None and config.scheduler:
        raise UsageError("--devices runs local workers, one per GPU; with --scheduler start one "
                         "`dask worker` per GPU instead (CUDA_VISIBLE_DEVICES=N) and leave out --devices")
    if config.devices is not None and config.device not in ("auto", "cuda"):
        raise UsageError(f"--devices {config.devices!r} and --device {config.device!r} disagree; give one of them")
    if config.dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {', '.join(DTYPES)}, got {config.dtype!r}")
    for name in ("streams", "decode_threads"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if config.partition_size is not None and config.partition_size < 1:
        raise UsageError(f"--partition-size must be at least 1, got {config.partition_size}")
    mf = config.max_failures
    if mf is not None and not (
        (isinstance(mf, int) and mf >= 0) or (isinstance(mf, float) and math.isfinite(mf) and 0 <= mf <= 1)
    ):
        raise UsageError(
            f"--max-failures must be a count (10), a fraction (0.05) or a percentage (5%), got {mf!r}"
        )


def _check_config(config: ExtractConfig) -> None:
    check_settings(config)
    out = config.output
    if not out.parent.is_dir():
        raise UsageError(f"output folder {str(out.parent)!r} does not exist; create it or choose another -o")
    if out.is_dir():
        raise UsageError(f"output {str(out)!r} is a folder; give a file name such as features.h5")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"output folder {str(out.parent)!r} is not writable; choose another -o")
    shards = writer.ShardStore(config.shard_dir) if config.shard_dir is not None else None
    if shards is not None and shards.local is not None and shards.local.exists() and not shards.local.is_dir():
        raise UsageError(f"--shard-dir {config.shard_dir!r} is a file; give a folder (or an fsspec URL)")


def _first_batch(config: ExtractConfig, on_cpu: bool) -> int:
    """The batch size to start with: --batch-size, or for auto the largest worth trying (see runner.AUTO_BATCH)."""
    if config.batch_size != "auto":
        return config.batch_size
    from .runner import AUTO_BATCH

    return AUTO_BATCH["cpu" if on_cpu else "cuda"]


def _partition_size(config: ExtractConfig, n: int, slots: int, on_cpu: bool = True) -> int:
    """Rows per partition, for ``n`` rows to compute on ``slots`` task slots (0: a cluster's own)."""
    if config.partition_size:
        return config.partition_size
    # About 50 partitions keep the progress bar moving and a crash cheap;
    # whole batches keep the forward passes full.
    bs = _first_batch(config, on_cpu)
    size = max(bs, min(math.ceil(n / 50 / bs) * bs, max(bs, MAX_PARTITION // bs * bs)))
    # But never fewer partitions than slots: a small run (an incremental update of 20 images) in one
    # partition ran on one CPU stream, with one core of two idle. Features do not depend on the batch size.
    if slots > 1 and n > 0:
        size = min(size, math.ceil(n / slots))
    return size


def _work_plan(config: ExtractConfig, on_cpu: bool, devices: tuple[str, ...] = ()) -> tuple[WorkPlan, int]:
    """How partitions run, and how many task slots (threads) each local worker gets (0 on a cluster)."""
    from .devices import worker_devices
    from .runner import WorkPlan

    batch = {"batch_size": _first_batch(config, on_cpu), "max_pixels": config.max_pixels,
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


def _max_failures(config: ExtractConfig, n: int) -> int | None:
    mf = config.max_failures
    if mf is None:
        return None
    return math.floor(mf * n) if isinstance(mf, float) else mf


class OutputLock:
    """An exclusive lock on ``<output>.lock``; the OS drops it if the process dies."""

    def __init__(self, output: Path):
        self.path = output.with_name(output.name + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RunConflictError(
                    f"another featpipe process (pid {holder}) is writing {str(self.path)[:-5]!r}; "
                    "wait for it to finish or choose another -o"
                ) from None
            # The holder unlinks the file as it lets go: a lock on a file that is
            # no longer at the path locks nothing, so take the new one instead.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            # Unlink while still holding the lock, so a waiting process cannot
            # lock a file that is about to vanish and race a third one.
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None


@dataclass
class _Previous:
    """The rows an earlier run left: in the previous feature file, and in shards of an interrupted run."""

    file: Path | None = None
    file_layers: tuple[str, ...] = ()
    file_rows: dict = field(default_factory=dict)  # image key -> row
    file_paths: set = field(default_factory=set)
    file_valid: np.ndarray | None = None
    shard_rows: dict = field(default_factory=dict)  # image key -> (shard, row, valid)


def _read_images(f: h5py.File, n: int) -> dict | None:
    g = f["samples"]
    if "size" not in g or "mtime" not in g:  # written before featpipe recorded image identity: nothing to match
        return None
    sha = store_decode(g["sha256"][:]) if "sha256" in g else [""] * n
    version = np.asarray(store_decode(g["version"][:]), dtype=object) if "version" in g else None
    return {"size": g["size"][:], "mtime": g["mtime"][:], "sha256": np.asarray(sha, dtype=object), "version": version}


def _previous_file(config: ExtractConfig, run_config: dict, prev: _Previous) -> None:
    """The previous feature file's reusable rows; raises when it holds another extractor's features."""
    if not config.output.exists() or config.overwrite:
        return
    try:
        with h5py.File(config.output, "r") as f:
            old = identity.upgrade(json.loads(f.attrs.get("config", "{}")))
            paths = store_decode(f["samples/path"][:])
            images = _read_images(f, len(paths))
            valid = f["samples/valid"][:]
    except (OSError, KeyError, ValueError):
        old = {}
    if not old:
        raise RunConflictError(
            f"{str(config.output)!r} exists and is not a featpipe feature file; pass --overwrite to replace it"
        )
    same_extractor = {k: v for k, v in old.items() if k != "layers"} == \
        {k: v for k, v in run_config.items() if k != "layers"}
    dropped = [layer[0] for layer in old.get("layers", []) if layer not in run_config["layers"]]
    if not same_extractor or dropped:
        keep = f"; to keep its layers pass --layer {' --layer '.join(dropped)} too" if same_extractor else ""
        raise RunConflictError(
            f"{str(config.output)!r} exists from another run ({identity.differences(old, run_config)}){keep}; "
            "pass --overwrite to replace it"
        )
    prev.file, prev.file_paths, prev.file_valid = config.output, set(paths), valid
    prev.file_layers = stored_layers([layer[0] for layer in old["layers"]], config.views)  # its views are ours
    if images is not None:
        keys = identity.row_keys(paths, images, config.verify_content)
        prev.file_rows = {key: j for j, key in enumerate(keys)}


def _previous_shards(config: ExtractConfig, parts: writer.ShardStore, manifest: dict, prev: _Previous) -> None:
    """Finished shards to reuse, row by row; refuses to mix with a partial run of another configuration."""
    old = writer.read_manifest(parts)
    if old is not None and old.get("version") != manifest["version"]:
        old = None  # an older featpipe's partial run: its shards cannot say which images they hold
    if old is not None and isinstance(old.get("config"), dict):
        upgraded = identity.upgrade(old["config"])
        old = {**old, "config": upgraded, "config_hash": identity.config_hash(upgraded)}
    if old is not None and old != manifest:
        if not config.overwrite:
            raise RunConflictError(
                f"{str(parts)!r} holds a partial run with another configuration "
                f"({_manifest_differences(old, manifest)}); pass --overwrite to discard it"
            )
        parts.remove()
    elif old is None and parts.exists():
        parts.remove()  # no manifest: nothing in it can be trusted
    parts.makedirs()
    writer.write_manifest(parts, manifest)
    for shard, images, valid in writer.finished_shards(parts):
        for row, key in enumerate(identity.row_keys(images["path"], images, config.verify_content)):
            prev.shard_rows[key] = (shard, row, bool(valid[row]))


@dataclass
class _Plan:
    """For each row of this run: where its features are, or that it must be computed."""

    old_rows: np.ndarray  # row in the previous file, -1: none
    shard_rows: list  # (shard, row) or None
    compute: np.ndarray  # bool
    known_failures: int  # rows not computed that fail (kept failures)
    changes: dict[str, int]
    layers_added: tuple[str, ...]


def _plan(config: ExtractConfig, samples: SampleList, keys: list, layers: list[str], prev: _Previous) -> _Plan:
    n = len(samples)
    old_rows = np.full(n, -1, np.int64)
    shard_rows: list = [None] * n
    compute = np.zeros(n, bool)
    added_layers = tuple(name for name in layers if prev.file is not None and name not in prev.file_layers)
    changes = dict.fromkeys(("unchanged", "added", "changed", "removed", "retried"), 0)
    known_failures = 0
    for i, key in enumerate(keys):
        j = prev.file_rows.get(key, -1)
        retried = j >= 0 and config.retry_failed and not prev.file_valid[j]
        if retried:
            j = -1
        shard = prev.shard_rows.get(key)
        if shard is not None and config.retry_failed and not shard[2]:
            shard = None
        if j >= 0:
            old_rows[i] = j
        if shard is not None:
            shard_rows[i] = shard[:2]
        old_valid = j >= 0 and bool(prev.file_valid[j])
        if shard is not None:
            known_failures += not (shard[2] and (j < 0 or old_valid))
        elif j >= 0 and (old_valid is False or not added_layers):
            known_failures += not old_valid
        else:
            compute[i] = True
        if prev.file is not None:
            path = samples.paths[i]
            kind = "unchanged" if j >= 0 else "retried" if retried else "changed" if path in prev.file_paths else "added"
            changes[kind] += 1
    if prev.file is not None:
        changes["removed"] = len(prev.file_paths - set(samples.paths))
    return _Plan(old_rows, shard_rows, compute, known_failures, changes, added_layers)


def stored_layers(layers: list[str], views: ViewSpec) -> tuple[str, ...]:
    """The feature datasets of a run: each layer, then with --augment each layer's augmented views."""
    return tuple(layers) + tuple(augmented_name(name) for name in layers if views.augment)


def extract(config: ExtractConfig, progress: Callable[[int, int], None] | None = None) -> ExtractSummary:
    """Run an extraction; ``progress(done, total)`` is called as partitions finish.

    Raises:
        UsageError: bad input, model, layer or option.
        WeightsError: weights not found or not loadable.
        RunConflictError: another process writes the output, or it holds another run.
        TooManyFailuresError: more failed images than ``max_failures``; finished work is kept.
    """
    t_start = time.perf_counter()
    config = replace(config, output=Path(config.output).expanduser().absolute())
    _check_config(config)
    samples = discover(config.input, config.storage_options, config.label_key,
                       listings=config.output.with_name(config.output.name + ".shards.json"))
    model = models.resolve(config.model or _checkpoint_model(config.weights)).name
    request = identity.request(model, _weights_argument(config), config.seed, config.layers, config.pool,
                               config.precision, config.dtype, config.resampler, _request_decode(config),
                               config.views.identity())
    if _already_complete(config, request, samples):
        log.info("%s is already complete", config.output)
        wall = time.perf_counter() - t_start
        return _summary(config.output, computed=0, resumed=0, seconds=wall, timings={}, already_complete=True,
                        wall=wall)
    return _build_and_extract(config, samples, model, request, progress, t_start)


def _checkpoint_model(weights: str) -> str:
    """The base model of a `featpipe finetune` checkpoint, for an extract without --model."""
    if weights in ("pretrained", "random"):
        raise UsageError("--model is missing; name one (`featpipe models` lists them), or pass --weights CHECKPOINT.pt "
                         "from `featpipe finetune`, which records its model")
    from ..models.weights import checkpoint_meta

    meta = checkpoint_meta(weights)
    if meta is None:
        raise UsageError(f"--model is missing, and {weights!r} is a plain state dict that does not say which model it "
                         "belongs to; pass --model")
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


def _weights_argument(config: ExtractConfig) -> str:
    """What --weights said, resolved: enough to extract the same way again (featpipe predict on images)."""
    return config.weights if config.weights in ("pretrained", "random") else str(Path(config.weights).resolve())


def _already_complete(config: ExtractConfig, request: dict, samples: SampleList) -> bool:
    """The output holds this very request over these very images (and keeps its failures, unless asked to retry
    them): recognised from the request and the files' sizes and times, before any network is built."""
    if config.overwrite or not config.output.exists():
        return False
    with OutputLock(config.output):
        try:
            with h5py.File(config.output, "r") as f:
                stored = json.loads(f.attrs.get("request", "null"))
                digest = f.attrs.get("images_digest", "")
                failures = len(f["errors/index"]) if "errors/index" in f else 0
        except (OSError, ValueError):
            return False
        if stored != request or (config.retry_failed and failures):
            return False
        images = samples.image_stats(config.verify_content)
        if digest != identity.images_digest(samples.paths, samples.labels, samples.classes, images):
            return False
        remove_temporaries(config.output)  # of a killed merge: we hold the lock
        writer.ShardStore.for_output(config.output, config.shard_dir).remove()
        return True


def _build_and_extract(config: ExtractConfig, samples: SampleList, model: str, request: dict,
                       progress: Callable[[int, int], None] | None, t_start: float) -> ExtractSummary:
    import torch

    from .devices import resolve_device
    from .runner import Extractor, ExtractorSpec

    devices = _devices(config)
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
    )
    # Layers are checked on a weightless copy first (a forward on the meta device
    # computes nothing), so a typo costs no weight loading.
    model_spec = models.resolve(spec.model)
    with torch.device("meta"):
        net = models.create_architecture(model_spec).eval()
        cfg = models.data_config(net, model_spec)
        tapped = models.TappedModel(net, model_spec, models.resolve_layers(net, model_spec, spec.layers, spec.pool))
        with torch.inference_mode():
            tapped(torch.zeros(1, 3, *cfg.crop))
    # Built here, fresh (a checkpoint file may have changed since the last run):
    # bad weights fail before any work starts, and the weights' digest pins
    # every worker to the same weights. Whether to optimise is decided once the
    # run knows how many images it computes (_extract).
    ex = Extractor(replace(spec, device="cpu" if config.scheduler else spec.device, optimize=False))
    spec = replace(spec, weights_sha256=ex.weights.sha256)
    return _extract(config, samples, spec, ex, request, progress, t_start)


def _optimize_if_worth_it(spec: ExtractorSpec, ex: Extractor, computed: int) -> ExtractorSpec:
    """The spec workers build from: optimised (traced and frozen) only when the run computes enough images
    to pay the tracing back (OPTIMIZE_MIN_IMAGES). The client's network follows the same decision."""
    worth = computed >= OPTIMIZE_MIN_IMAGES
    if worth:
        ex.optimize()
    return replace(spec, optimize=worth)


def _devices(config: ExtractConfig) -> tuple[str, ...]:
    """--devices as device names (checked against the GPUs this machine has); () without it."""
    if config.devices is None:
        return ()
    import torch

    from .devices import parse_devices

    return parse_devices(config.devices, torch.cuda.device_count() if torch.cuda.is_available() else 0)


def _identity(config: ExtractConfig, ex: Extractor) -> dict:
    """Everything that changes the features; a run only ever resumes or skips its own identity."""
    return identity.extractor(ex.model_spec.name, ex.weights.source, ex.weights.sha256,
                              [(layer.name, layer.node, layer.pool) for layer in ex.layers],
                              json.loads(ex.data_config.to_json()), config.precision, config.dtype,
                              ex.views.spec.identity())


def _manifest_differences(old: dict, new: dict) -> str:
    """How a partial run's manifest differs from this run's, in words."""
    if old.get("config") != new.get("config"):
        return identity.differences(old.get("config") or {}, new.get("config") or {})
    if old.get("samples") != new.get("samples"):
        return "the images differ (other paths, labels or classes)"
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                     if k != "config_hash" and old.get(k) != new.get(k))


def _file_attrs(config: ExtractConfig, ex: Extractor, run_config: dict, config_hash: str, samples: SampleList,
                request: dict) -> dict:
    import timm
    import torch

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "featpipe_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": run_config["model"],
        "weights_source": ex.weights.describe(),
        "weights_sha256": ex.weights.sha256,
        "data_config": ex.data_config.to_json(),
        "config_hash": config_hash,
        "config": json.dumps(run_config, sort_keys=True),
        "samples_digest": samples.digest(),
        "torch_version": str(torch.__version__),
        "timm_version": str(timm.__version__),
        "image_root": str(samples.root),
        "precision": config.precision,
        "dtype": config.dtype,
        "seed": config.seed,
        # The client's network: traced and frozen (CPU fp32), or eager; they agree to ~1e-6.
        "graph": "traced" if ex.optimized else "eager",
        # What --weights said, resolved: enough to extract the same way again (featpipe predict on images).
        "weights": _weights_argument(config),
        # What was asked for, with the versions that turned it into this extractor: a rerun
        # recognises a finished file from it without building the network.
        "request": json.dumps(request, sort_keys=True),
    }


def _extract(
    config: ExtractConfig,
    samples: SampleList,
    spec: ExtractorSpec,
    ex: Extractor,
    request: dict,
    progress: Callable[[int, int], None] | None,
    t_start: float,
) -> ExtractSummary:
    import torch

    from . import distributor
    from .merge import Sources, merge
    from .runner import PartitionTask, extractor_in_use

    n = len(samples)
    run_config = _identity(config, ex)
    config_hash = identity.config_hash(run_config)
    parts = writer.ShardStore.for_output(config.output, config.shard_dir)
    limit = _max_failures(config, n)
    timings = {"start": 0.0, "decode": 0.0, "forward": 0.0, "write": 0.0}
    layer_names = stored_layers([layer.name for layer in ex.layers], config.views)

    with contextlib.ExitStack() as held:
        held.enter_context(OutputLock(config.output))
        remove_temporaries(config.output)  # of a killed merge: we hold the lock
        images = samples.image_stats(config.verify_content)
        keys = identity.row_keys(samples.paths, images, config.verify_content)
        prev = _Previous()
        _previous_file(config, run_config, prev)
        _previous_shards(config, parts, {"version": 2, "config_hash": config_hash, "config": run_config}, prev)
        plan = _plan(config, samples, keys, layer_names, prev)
        if prev.file is not None and plan.changes["unchanged"] == n and not plan.changes["removed"] \
                and not plan.layers_added:
            with h5py.File(prev.file, "r") as f:
                same_images = f.attrs.get("images_digest") == identity.images_digest(
                    samples.paths, samples.labels, samples.classes, images)
            if same_images:  # the same features of the same images: only the request was recorded differently
                parts.remove()
                return _summary(config.output, computed=0, resumed=0, seconds=0.0, timings=timings,
                                already_complete=True, wall=time.perf_counter() - t_start)
        todo = np.flatnonzero(plan.compute)
        spec = _optimize_if_worth_it(spec, ex, len(todo))
        if not config.scheduler:  # the local workers (threads) reuse the client's network; released at the end
            held.enter_context(extractor_in_use(spec, ex))
        devices = _devices(config)
        plan_w, slots = _work_plan(config, on_cpu=spec.device == "cpu", devices=devices)
        part_size = _partition_size(config, len(todo), slots, on_cpu=spec.device == "cpu")
        tasks = [PartitionTask(k, start, **samples.task_input(todo[start:stop]))
                 for k, (start, stop) in enumerate(samples.partitions(todo, part_size))]
        run_id = uuid.uuid4().hex

        def shard_of(task: PartitionTask) -> tuple[writer.Shard, np.ndarray, dict]:
            """The task's shard, its rows in this run, and their image identity."""
            rows = todo[task.start:task.start + len(task.paths)]
            return writer.Shard(parts, writer.shard_name(task.index, run_id[:8])), rows, {
                "path": [samples.paths[r] for r in rows], "size": images["size"][rows],
                "mtime": images["mtime"][rows], "sha256": images["sha256"][rows], "version": images["version"][rows]}

        # With --shard-dir the workers write the shards (the user says they reach it); else the client does.
        writes = [writer.ShardWrite(shard, config.dtype, ids) for shard, _, ids in map(shard_of, tasks)] \
            if config.shard_dir is not None else None
        new_shards: list[tuple[writer.Shard, np.ndarray, np.ndarray]] = []
        reused = {s[0] for s in plan.shard_rows if s is not None}
        if reused:
            log.info("resuming: %d rows from %d finished partitions", n - len(todo), len(reused))
        failed = plan.known_failures
        done_rows = n - len(todo)
        if progress:
            progress(done_rows, n)
        t_work = time.perf_counter()
        computed = 0
        if tasks:
            threads_before = torch.get_num_threads()  # CPU streams change it; the caller's is restored
            try:
                with distributor.executor(config.scheduler, slots, workers=max(1, len(devices))) as executor:
                    timings["start"] = time.perf_counter() - t_work
                    t_work = time.perf_counter()  # images/s counts the compute phase; start-up is reported apart
                    for result in distributor.run_partitions(
                        executor, spec, tasks, plan_w, key_prefix=f"featpipe-{run_id}", writes=writes
                    ):
                        t0 = time.perf_counter()
                        shard, rows, ids = shard_of(tasks[result.index])
                        if writes is None:
                            writer.write_shard(shard, result, config.dtype, ids)
                        new_shards.append((shard, np.arange(len(result)), rows))
                        timings["write"] += time.perf_counter() - t0
                        for key, value in result.timings.items():  # decode, forward; on a GPU copy, gpu_decode
                            timings[key] = timings.get(key, 0.0) + value
                        failed += len(result.errors)
                        computed += len(result)
                        done_rows += len(result)
                        if progress:
                            progress(done_rows, n)
                        if limit is not None and failed > limit:
                            errors = [(int(todo[i]), reason) for i, reason in result.errors]
                            _too_many_failures(failed, limit, errors, samples, parts)
            finally:
                torch.set_num_threads(threads_before)
        elapsed = time.perf_counter() - t_work
        if limit is not None and failed > limit:  # also when every row was already done
            _too_many_failures(failed, limit, [], samples, parts)
        t0 = time.perf_counter()
        by_shard: dict[writer.Shard, tuple[list, list]] = {}
        for i, where in enumerate(plan.shard_rows):
            if where is not None:
                by_shard.setdefault(where[0], ([], []))
                by_shard[where[0]][0].append(where[1])
                by_shard[where[0]][1].append(i)
        sources = Sources(n, prev.file, plan.old_rows, prev.file_layers,
                          [(p, np.asarray(a), np.asarray(b)) for p, (a, b) in by_shard.items()] + new_shards)
        layer_attrs = {layer.name: {"pool": layer.pool, "node": layer.node} for layer in ex.layers}
        if config.augment:
            layer_attrs.update({augmented_name(layer.name): {"pool": layer.pool, "node": layer.node, "layer": layer.name,
                                                             "views": config.augment} for layer in ex.layers})
        attrs = _file_attrs(config, ex, run_config, config_hash, samples, request)
        attrs["images_digest"] = identity.images_digest(samples.paths, samples.labels, samples.classes, images)
        merge(config.output, samples, attrs, layer_attrs, config.dtype, images, sources)
        parts.remove()
        timings["write"] += time.perf_counter() - t0
    summary = _summary(config.output, computed, len(reused), elapsed, timings, wall=time.perf_counter() - t_start)
    if tasks:
        on_cpu = spec.device == "cpu"
        gpus = max(1, len(devices))
        summary.parallel = {"decode": slots if on_cpu else plan_w.decode_threads or 1,
                            "forward": slots if on_cpu else gpus, "copy": gpus, "gpu_decode": gpus}
    if prev.file is not None:
        summary.updated, summary.changes, summary.layers_added = True, plan.changes, plan.layers_added
    return summary


# What helps when a stage bounds the run (see bottleneck).
_ADVICE = {
    "decode": "reading and decoding images (on the CPU): more cores or --decode-threads on a GPU host; "
              "--decode fast for photos much larger than the network's input; --decode gpu on a GPU",
    "gpu_decode": "nvJPEG decoding and resizing on the GPU: larger batches (--batch-size auto), or "
                  "--decode exact to share the work with the CPU's cores",
    "forward": "the network's forward pass: a GPU instead of the CPU, --precision bf16 or fp16 on a GPU, "
               "more GPUs (--devices all), or a smaller model",
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
    return stage, busy[stage], _ADVICE[stage]


def _too_many_failures(failed: int, limit: int, errors: list, samples: SampleList,
                       parts: writer.ShardStore) -> None:
    example = f"; for example {samples.paths[errors[0][0]]!r}: {errors[0][1]}" if errors else ""
    raise TooManyFailuresError(
        f"{failed} images failed, more than --max-failures allows ({limit}){example}. Finished partitions are "
        f"kept in {str(parts)!r}: fix or remove the images, or raise --max-failures, and run again to resume"
    )


def _summary(output: Path, computed: int, resumed: int, seconds: float, timings: dict,
             already_complete: bool = False, wall: float = 0.0) -> ExtractSummary:
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
