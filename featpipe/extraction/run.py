"""Extract: the whole run, from a folder of images to one feature file.

Plans partitions, takes the output's lock, resumes what a previous run of the
same configuration finished, dispatches the rest to Dask, writes each result as
a shard, and merges the shards into the final file. See ARCHITECTURE.md, "Crash safety".
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import h5py
import timm
import torch

from .. import __version__, models
from ..errors import RunConflictError, TooManyFailuresError, UsageError
from ..store import FORMAT, FORMAT_VERSION, load
from . import distributor, writer
from .decode import MAX_PIXELS
from .merge import merge_shards
from .preprocess import check_resampler
from .runner import (
    Extractor,
    ExtractorSpec,
    PartitionTask,
    WorkPlan,
    cpu_cores,
    register_extractor,
    release_extractor,
    resolve_device,
)
from .sources import SampleList, discover

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16")
MAX_PARTITION = 1024  # rows lost at most by a crash, per running partition


@dataclass(frozen=True)
class ExtractConfig:
    """Settings of one extraction (the CLI's options, as one typed object)."""

    input: Path
    output: Path
    model: str
    weights: str = "pretrained"
    layers: tuple[str, ...] = ("pooled",)
    pool: str = "avg"
    batch_size: int = 32
    device: str = "auto"
    precision: str = "fp32"
    resampler: str = "auto"  # auto, torch or pil: see extraction/preprocess.py
    dtype: str = "float32"
    seed: int = 0
    partition_size: int | None = None  # default: about 50 partitions, at most MAX_PARTITION rows
    streams: int | None = None  # CPU: partitions computed at once; default min(cores, 4)
    decode_threads: int | None = None  # GPU: decode threads feeding the device; default: the cores
    # An int is a count of images, a float a fraction of all images (0.05 = 5%); None: no limit.
    max_failures: int | float | None = None
    max_pixels: int = MAX_PIXELS
    scheduler: str | None = None
    overwrite: bool = False


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

    @property
    def images_per_s(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else 0.0


def _check_config(config: ExtractConfig) -> None:
    if config.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {config.batch_size}")
    check_resampler(config.resampler)
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
    out = config.output
    if not out.parent.is_dir():
        raise UsageError(f"output folder {str(out.parent)!r} does not exist; create it or choose another -o")
    if out.is_dir():
        raise UsageError(f"output {str(out)!r} is a folder; give a file name such as features.h5")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"output folder {str(out.parent)!r} is not writable; choose another -o")


def _partition_size(config: ExtractConfig, n: int) -> int:
    if config.partition_size:
        return config.partition_size
    # About 50 partitions keep the progress bar moving and a crash cheap;
    # whole batches keep the forward passes full.
    bs = config.batch_size
    size = math.ceil(n / 50 / bs) * bs
    return max(bs, min(size, max(bs, MAX_PARTITION // bs * bs)))


def _work_plan(config: ExtractConfig, on_cpu: bool) -> tuple[WorkPlan, int]:
    """How partitions run, and how many task slots the local Dask worker gets."""
    if config.scheduler:  # each worker sizes itself from its own cores and threads
        return WorkPlan(config.batch_size, config.max_pixels, decode_threads=config.decode_threads), 0
    cores = cpu_cores()
    if on_cpu:
        # A few streams, each with a share of the cores: enough to keep every
        # core busy while others decode, few enough to bound activation memory.
        streams = config.streams or min(cores, 4)
        return WorkPlan(config.batch_size, config.max_pixels, torch_threads=max(1, cores // streams)), streams
    return WorkPlan(config.batch_size, config.max_pixels, decode_threads=config.decode_threads or cores), 2


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


def _differences(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def _config_hash(run_config: dict) -> str:
    return hashlib.sha256(json.dumps(run_config, sort_keys=True).encode()).hexdigest()


def _upgrade(run_config: dict) -> dict:
    """A run identity read from disk, with data-config fields added since filled in (so older runs still match)."""
    if isinstance(run_config.get("data_config"), dict):
        run_config = {**run_config, "data_config": models.data_config_upgrade(run_config["data_config"])}
    return run_config


def _existing_output(config: ExtractConfig, run_config: dict, samples_digest: str) -> bool:
    """True when the output already holds this very run; raises when it holds another."""
    if not config.output.exists() or config.overwrite:
        return False
    try:
        with h5py.File(config.output, "r") as f:
            old = _upgrade(json.loads(f.attrs.get("config", "{}")))
            old["samples"] = f.attrs.get("samples_digest", "")
    except OSError:
        old = {}
    new = {**run_config, "samples": samples_digest}
    if old == new:
        return True
    what = _differences(old, new) if old else "it is not a featpipe feature file"
    raise RunConflictError(
        f"{str(config.output)!r} exists from another run ({what[:300]}); pass --overwrite to replace it"
    )


def _prepare_parts(config: ExtractConfig, parts_dir: Path, manifest: dict) -> dict[int, Path]:
    """Finished shards to reuse; refuses to mix with a partial run of another configuration.

    Shards holding failed images are computed again, so that images fixed
    since the last run (after a --max-failures abort, say) are picked up.
    """
    old = writer.read_manifest(parts_dir) if parts_dir.exists() else None
    if old is not None and isinstance(old.get("config"), dict):
        upgraded = _upgrade(old["config"])
        old = {**old, "config": upgraded, "config_hash": _config_hash(upgraded)}
    if old is not None and old != manifest:
        if not config.overwrite:
            raise RunConflictError(
                f"{str(parts_dir)!r} holds a partial run with another configuration "
                f"({_differences(old, manifest)[:300]}); pass --overwrite to discard it"
            )
        shutil.rmtree(parts_dir)
    elif old is None and parts_dir.exists():
        shutil.rmtree(parts_dir)  # no manifest: nothing in it can be trusted
    parts_dir.mkdir(exist_ok=True)
    writer.write_manifest(parts_dir, manifest)
    done = writer.finished_shards(parts_dir)
    for index, path in list(done.items()):
        if writer.shard_errors(path):
            path.unlink()
            del done[index]
    return done


def _remove_leftovers(output: Path) -> None:
    """Temporary files of a merge that was killed: we hold the lock, so nobody is writing them."""
    for stale in output.parent.glob(f".{output.name}.tmp-*"):
        stale.unlink(missing_ok=True)


def extract(config: ExtractConfig, progress: Callable[[int, int], None] | None = None) -> ExtractSummary:
    """Run an extraction; ``progress(done, total)`` is called as partitions finish.

    Raises:
        UsageError: bad input, model, layer or option.
        WeightsError: weights not found or not loadable.
        RunConflictError: another process writes the output, or it holds another run.
        TooManyFailuresError: more failed images than ``max_failures``; finished work is kept.
    """
    t_start = time.perf_counter()
    config = replace(config, input=Path(config.input), output=Path(config.output).expanduser().absolute())
    _check_config(config)
    samples = discover(config.input)
    spec = ExtractorSpec(
        model=models.resolve(config.model).name,
        weights=config.weights,
        seed=config.seed,
        layers=tuple(config.layers),
        pool=config.pool,
        # On a cluster each worker resolves the device itself; locally, now.
        device=config.device if config.scheduler else resolve_device(config.device),
        precision=config.precision,
        resampler=config.resampler,
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
    # every worker to the same weights.
    ex = Extractor(replace(spec, device="cpu") if config.scheduler else spec)
    spec = replace(spec, weights_sha256=ex.weights.sha256)
    if config.scheduler:
        return _extract(config, samples, spec, ex, progress, t_start)
    register_extractor(spec, ex)  # the in-process worker reuses the model just built
    try:
        return _extract(config, samples, spec, ex, progress, t_start)
    finally:
        release_extractor(spec)


def _identity(config: ExtractConfig, spec: ExtractorSpec, ex: Extractor) -> dict:
    """Everything that changes the features; a run only ever resumes or skips its own identity."""
    return {
        "model": spec.model,
        "weights_source": ex.weights.source,
        "weights_sha256": ex.weights.sha256,
        "layers": [[layer.name, layer.node, layer.pool] for layer in ex.layers],
        "data_config": json.loads(ex.data_config.to_json()),
        "precision": config.precision,
        "dtype": config.dtype,
    }


def _file_attrs(config: ExtractConfig, ex: Extractor, run_config: dict, config_hash: str, samples: SampleList) -> dict:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "featpipe_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
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
        "weights": config.weights if config.weights in ("pretrained", "random") else str(Path(config.weights).resolve()),
    }


def _extract(
    config: ExtractConfig,
    samples: SampleList,
    spec: ExtractorSpec,
    ex: Extractor,
    progress: Callable[[int, int], None] | None,
    t_start: float,
) -> ExtractSummary:
    n = len(samples)
    run_config = _identity(config, spec, ex)
    config_hash = _config_hash(run_config)
    parts_dir = config.output.with_name(config.output.name + ".parts")
    part_size = _partition_size(config, n)
    previous = writer.read_manifest(parts_dir) if parts_dir.exists() else None
    if previous and config.partition_size is None and previous.get("partition_size"):
        # The default size follows --batch-size, which does not change features:
        # a resume with another batch size keeps the partitions it started with.
        part_size = int(previous["partition_size"])
    tasks = [
        PartitionTask(i, start, str(samples.root), samples.paths[start:start + part_size])
        for i, start in enumerate(range(0, n, part_size))
    ]
    limit = _max_failures(config, n)
    timings = {"start": 0.0, "decode": 0.0, "forward": 0.0, "write": 0.0}

    with OutputLock(config.output):
        _remove_leftovers(config.output)
        if _existing_output(config, run_config, samples.digest()):
            log.info("%s is already complete", config.output)
            shutil.rmtree(parts_dir, ignore_errors=True)  # left if a run died between rename and clean-up
            return _summary(config.output, computed=0, resumed=len(tasks), seconds=time.perf_counter() - t_start,
                            timings=timings, already_complete=True)
        manifest = {
            "config_hash": config_hash,
            "config": run_config,
            "samples": samples.digest(),
            "n_samples": n,
            "partition_size": part_size,
        }
        done = _prepare_parts(config, parts_dir, manifest)
        failed = sum(writer.shard_errors(p) for p in done.values())
        done_rows = sum(len(t.paths) for t in tasks if t.index in done)
        todo = [t for t in tasks if t.index not in done]
        if done:
            log.info("resuming: %d of %d partitions already finished", len(done), len(tasks))
        if progress:
            progress(done_rows, n)
        t_work = time.perf_counter()
        computed = 0
        if todo:
            plan, slots = _work_plan(config, on_cpu=spec.device == "cpu")
            threads_before = torch.get_num_threads()  # CPU streams change it; the caller's is restored
            try:
                with distributor.dask_client(config.scheduler, slots) as client:
                    timings["start"] = time.perf_counter() - t_work
                    t_work = time.perf_counter()  # images/s counts the compute phase; start-up is reported apart
                    for result in distributor.run_partitions(
                        client, spec, todo, plan, key_prefix=f"featpipe-{uuid.uuid4().hex}"
                    ):
                        t0 = time.perf_counter()
                        done[result.index] = writer.write_shard(parts_dir, result, config.dtype)
                        timings["write"] += time.perf_counter() - t0
                        for key in ("decode", "forward"):
                            timings[key] += result.timings[key]
                        failed += len(result.errors)
                        computed += len(result)
                        done_rows += len(result)
                        if progress:
                            progress(done_rows, n)
                        if limit is not None and failed > limit:
                            _too_many_failures(failed, limit, result.errors, samples, parts_dir)
            finally:
                torch.set_num_threads(threads_before)
        elapsed = time.perf_counter() - t_work
        if limit is not None and failed > limit:  # also when every partition was already done
            _too_many_failures(failed, limit, [], samples, parts_dir)
        t0 = time.perf_counter()
        layer_attrs = {layer.name: {"pool": layer.pool, "node": layer.node} for layer in ex.layers}
        merge_shards([done[i] for i in sorted(done)], config.output, samples,
                     _file_attrs(config, ex, run_config, config_hash, samples), layer_attrs, config.dtype)
        shutil.rmtree(parts_dir, ignore_errors=True)
        timings["write"] += time.perf_counter() - t0
    return _summary(config.output, computed, len(tasks) - len(todo), elapsed, timings)


def _too_many_failures(failed: int, limit: int, errors: list, samples: SampleList, parts_dir: Path) -> None:
    example = f"; for example {samples.paths[errors[0][0]]!r}: {errors[0][1]}" if errors else ""
    raise TooManyFailuresError(
        f"{failed} images failed, more than --max-failures allows ({limit}){example}. Finished partitions are "
        f"kept in {str(parts_dir)!r}: fix or remove the images, or raise --max-failures, and run again to resume"
    )


def _summary(output: Path, computed: int, resumed: int, seconds: float, timings: dict,
             already_complete: bool = False) -> ExtractSummary:
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
    )
