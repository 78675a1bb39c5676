"""Extract: the whole run, from a folder of images to one feature file, as a few steps (``extract``).

(Not ``extract.py``: a module named like the function ``featpipe.extraction.extract`` would replace it as an
attribute of the package once imported.)

1. Check the settings, list the images, and turn what was asked for into a request (no torch yet).
2. Under the output's lock, compute the run state once: each image's identity and ``images_digest``.
3. Already complete? (resume.is_complete: the same request over the same images.) Then stop here, before
   any network is built.
4. Build the network, and plan: which rows come from the previous file or from parts, which to compute.
5. Compute the rest in partitions (executors.py), each result a part (parts.py), within --max-failures.
6. Merge the previous file's rows and the parts into the final file (merge.py), and remove the parts.

See ARCHITECTURE.md, "Crash safety" and "Identity".
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import identity
from .._util import remove_temporaries
from ..errors import TooManyFailuresError
from ..files.features import augmented_name, root_attrs
from . import backends, resume
from . import parts as parts_mod
from .config import (
    ExtractConfig,
    ExtractSummary,
    check_output,
    request_of,
    summary_of,
    weights_argument,
)
from .samples import SampleList
from .sources import discover

# torch, timm, Dask (--scheduler) and the network's modules are imported once a run has work to do:
# a finished run is recognised without them (see identity.request).
if TYPE_CHECKING:
    from .extractor import Extractor, ExtractorSpec
    from .partition import PartitionTask

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass
class RunState:
    """What a run knows about its images, computed once, under the output's lock: each image's identity
    (size, time, version; with --verify-content its digest: see identity.image_stats) and ``images_digest``."""

    samples: SampleList
    images: dict
    images_digest: str
    keys: list = field(repr=False)  # each row's image key (identity.row_keys)

    @classmethod
    def of(cls, config: ExtractConfig, samples: SampleList) -> RunState:
        images = samples.image_stats(config.verify_content)
        return cls(samples, images, identity.images_digest(samples.paths, samples.labels, samples.classes, images),
                   identity.row_keys(samples.paths, images, config.verify_content))

    def rows_identity(self, rows: np.ndarray) -> dict:
        """The image identity of ``rows``, as a part stores it."""
        return {"path": [self.samples.paths[r] for r in rows],
                **{k: self.images[k][rows] for k in ("size", "mtime", "sha256", "version")}}


def extract(config: ExtractConfig, progress: Progress | None = None) -> ExtractSummary:
    """Run an extraction; ``progress(done, total)`` is called as partitions finish.

    Raises:
        UsageError: bad input, model, layer or option.
        WeightsError: weights not found or not loadable.
        RunConflictError: another process writes the output, or it holds another run.
        TooManyFailuresError: more failed images than ``max_failures``; finished work is kept.
    """
    t_start = time.perf_counter()
    config = replace(config, output=Path(config.output).expanduser().absolute())  # its values checked when made
    check_output(config)
    samples = discover(config.input, config.storage_options, config.label_key,
                       listings=config.output.with_name(config.output.name + ".shards.json"))
    model, request = request_of(config)
    with resume.OutputLock(config.output):
        remove_temporaries(config.output)  # of a merge that was killed: we hold the lock, so nobody writes them
        stored = resume.read_output(config)
        state = RunState.of(config, samples)
        if resume.is_complete(config, state.images_digest, stored, stored is not None and stored.request == request):
            log.info("%s is already complete", config.output)
            wall = time.perf_counter() - t_start
            return _already_complete(config, seconds=wall, timings={}, wall=wall)
        from .extractor import build_for_run

        spec, ex = build_for_run(config, model)
        return _extract(config, state, spec, ex, request, stored, progress, t_start)


def _already_complete(config: ExtractConfig, seconds: float, timings: dict, wall: float) -> ExtractSummary:
    """The summary of a run with nothing to do; parts of an interrupted run are of no use any more."""
    parts_mod.PartStore.for_output(config.output, config.shard_dir).remove()
    return summary_of(config.output, computed=0, resumed=0, seconds=seconds, timings=timings, already_complete=True,
                      wall=wall)


def _identity(config: ExtractConfig, ex: Extractor) -> dict:
    """Everything that changes the features; a run only ever resumes or skips its own identity."""
    return identity.extractor(ex.model_spec.name, ex.weights.source, ex.weights.sha256,
                              [(layer.name, layer.node, layer.pool) for layer in ex.layers],
                              json.loads(ex.data_config.to_json()), config.precision, config.dtype,
                              ex.views.spec.identity())


def _extract(config: ExtractConfig, state: RunState, spec: ExtractorSpec, ex: Extractor, request: dict,
             stored: resume.StoredOutput | None, progress: Progress | None, t_start: float) -> ExtractSummary:
    """Steps 4 to 6, with the network built and the output's lock held."""
    import torch

    from .extractor import extractor_in_use, optimize_if_worth_it

    run_config = _identity(config, ex)
    prev = resume.Previous()
    if stored is not None:
        resume.file_rows(config, stored, run_config, prev)  # refuses another extractor's file
        if resume.is_complete(config, state.images_digest, stored, resume.same_extractor(stored.config, run_config)):
            # The same features of the same images: only the request was recorded differently.
            return _already_complete(config, seconds=0.0, timings={}, wall=time.perf_counter() - t_start)
    parts = parts_mod.PartStore.for_output(config.output, config.shard_dir)
    resume.part_rows(config, parts, run_config, prev)
    plan = resume.plan(config, state.samples, state.keys, resume.stored_layers([layer.name for layer in ex.layers],
                                                                               config.views), prev)
    todo = np.flatnonzero(plan.compute)
    spec = optimize_if_worth_it(spec, ex, len(todo))
    threads_before = torch.get_num_threads()  # CPU streams change it; the caller's is restored
    try:
        if config.scheduler:
            run = _compute(config, state, spec, parts, plan, todo, progress)
        else:  # the local workers (threads) reuse the client's network; released at the end
            with extractor_in_use(spec, ex):
                run = _compute(config, state, spec, parts, plan, todo, progress)
    finally:
        torch.set_num_threads(threads_before)
    t0 = time.perf_counter()
    attrs = _file_attrs(config, ex, run_config, state, request,
                        backends.file_backends(_kept_backends(plan, prev, stored), ex.backend if run.computed else None))
    _merge(config, state, ex, attrs, plan, prev, run.new_parts)
    parts.remove()
    run.timings["write"] += time.perf_counter() - t0
    summary = summary_of(config.output, run.computed, len({p[0] for p in plan.part_rows if p is not None}),
                         run.seconds, run.timings, wall=time.perf_counter() - t_start)
    summary.parallel = run.parallel
    if run.computed:
        summary.backend = ex.backend
        summary.conversion_seconds = ex.converted.conversion_seconds if ex.converted is not None else 0.0
    if prev.file is not None:
        summary.updated, summary.changes, summary.layers_added = True, plan.changes, plan.layers_added
    return summary


def _kept_backends(plan: resume.Plan, prev: resume.Previous, stored: resume.StoredOutput | None) -> Counter:
    """The rows this run keeps from the previous file and from an interrupted run's parts, by their backend."""
    kept = Counter({stored.backend if stored else "": int((plan.old_rows >= 0).sum())})
    kept.update(prev.part_backends.get(where[0].name, "") for where in plan.part_rows if where is not None)
    return kept


@dataclass
class _Computed:
    """What step 5 did: the parts it wrote, with their rows in this run, and its counts and times."""

    new_parts: list = field(default_factory=list)  # (part, rows in it, rows of the run)
    computed: int = 0
    seconds: float = 0.0
    timings: dict = field(default_factory=lambda: {"start": 0.0, "decode": 0.0, "forward": 0.0, "write": 0.0})
    parallel: dict = field(default_factory=dict)  # how many of each stage ran side by side


def _compute(config: ExtractConfig, state: RunState, spec: ExtractorSpec, parts: parts_mod.PartStore,
             plan: resume.Plan, todo: np.ndarray, progress: Progress | None) -> _Computed:
    """Step 5: the rows ``todo`` in partitions, each result written as a part, within --max-failures."""
    from . import executors
    from .devices import local_devices
    from .partition import PartitionTask

    samples, n, out = state.samples, len(state.samples), _Computed()
    devices = local_devices(config)
    on_cpu = spec.device == "cpu"
    work, slots = executors.work_plan(config, on_cpu=on_cpu, devices=devices)
    size = executors.partition_size(config, len(todo), slots, on_cpu=on_cpu)
    tasks = [PartitionTask(k, start, **samples.task_input(todo[start:stop]))
             for k, (start, stop) in enumerate(samples.partitions(todo, size))]
    run_id = uuid.uuid4().hex

    def part_of(task: PartitionTask) -> tuple[parts_mod.Part, np.ndarray]:
        """The task's part, and its rows in this run."""
        return parts_mod.Part(parts, parts_mod.part_name(task.index, run_id[:8])), \
            todo[task.start:task.start + len(task.paths)]

    # With --shard-dir the workers write the parts (the user says they reach it); else the client does.
    writes = [parts_mod.PartWrite(part, config.dtype, state.rows_identity(rows)) for part, rows in map(part_of, tasks)] \
        if config.shard_dir is not None else None
    reused = {p[0] for p in plan.part_rows if p is not None}
    if reused:
        log.info("resuming: %d rows from %d finished partitions", n - len(todo), len(reused))
    limit = _max_failures(config, n)
    failed, done_rows = plan.known_failures, n - len(todo)
    if progress:
        progress(done_rows, n)
    t_work = time.perf_counter()
    if tasks:
        with executors.executor(config.scheduler, slots, workers=max(1, len(devices))) as executor:
            out.timings["start"] = time.perf_counter() - t_work
            t_work = time.perf_counter()  # images/s counts the compute phase; start-up is reported apart
            for result in executors.run_partitions(executor, spec, tasks, work, key_prefix=f"featpipe-{run_id}",
                                                   writes=writes):
                t0 = time.perf_counter()
                part, rows = part_of(tasks[result.index])
                if writes is None:
                    parts_mod.write_part(part, result, config.dtype, state.rows_identity(rows))
                out.new_parts.append((part, np.arange(len(result)), rows))
                out.timings["write"] += time.perf_counter() - t0
                for key, value in result.timings.items():  # decode, forward; on a GPU copy, gpu_decode
                    out.timings[key] = out.timings.get(key, 0.0) + value
                failed += len(result.errors)
                out.computed += len(result)
                done_rows += len(result)
                if progress:
                    progress(done_rows, n)
                if limit is not None and failed > limit:
                    _too_many_failures(failed, limit, [(int(todo[i]), why) for i, why in result.errors], samples, parts)
        gpus = max(1, len(devices))
        out.parallel = {"decode": slots if on_cpu else work.decode_threads or 1,
                        "forward": slots if on_cpu else gpus, "copy": gpus, "gpu_decode": gpus}
    out.seconds = time.perf_counter() - t_work
    if limit is not None and failed > limit:  # also when every row was already done
        _too_many_failures(failed, limit, [], samples, parts)
    return out


def _max_failures(config: ExtractConfig, n: int) -> int | None:
    mf = config.max_failures
    if mf is None:
        return None
    return int(mf * n) if isinstance(mf, float) else mf


def _too_many_failures(failed: int, limit: int, errors: list, samples: SampleList, parts: parts_mod.PartStore) -> None:
    example = f"; for example {samples.paths[errors[0][0]]!r}: {errors[0][1]}" if errors else ""
    raise TooManyFailuresError(
        f"{failed} images failed, more than --max-failures allows ({limit}){example}. Finished partitions are "
        f"kept in {str(parts)!r}: fix or remove the images, or raise --max-failures, and run again to resume"
    )


def _merge(config: ExtractConfig, state: RunState, ex: Extractor, attrs: dict, plan: resume.Plan,
           prev: resume.Previous, new_parts: list) -> None:
    """Step 6: the final file, each row from the previous file or a part (merge.py)."""
    from .merge import Sources, merge

    by_part: dict[parts_mod.Part, tuple[list, list]] = {}
    for i, where in enumerate(plan.part_rows):
        if where is not None:
            rows_in_part, rows_of_run = by_part.setdefault(where[0], ([], []))
            rows_in_part.append(where[1])
            rows_of_run.append(i)
    sources = Sources(len(state.samples), prev.file, plan.old_rows, prev.file_layers,
                      [(p, np.asarray(a), np.asarray(b)) for p, (a, b) in by_part.items()] + new_parts)
    layer_attrs = {layer.name: {"pool": layer.pool, "node": layer.node} for layer in ex.layers}
    if config.augment:
        layer_attrs.update({augmented_name(layer.name): {"pool": layer.pool, "node": layer.node, "layer": layer.name,
                                                         "views": config.augment} for layer in ex.layers})
    merge(config.output, state.samples, attrs, layer_attrs, config.dtype, state.images, sources)


def _file_attrs(config: ExtractConfig, ex: Extractor, run_config: dict, state: RunState, request: dict,
                backend: str) -> dict:
    """The feature file's root attributes (files/features.py) for this run; ``backend``: backends.file_backends."""
    import timm
    import torch

    return root_attrs(config=run_config, request=request, images_digest=state.images_digest,
                      samples_digest=state.samples.digest(), image_root=str(state.samples.root),
                      weights=weights_argument(config), weights_source=ex.weights.describe(),
                      weights_sha256=ex.weights.sha256, data_config=ex.data_config.to_json(),
                      precision=config.precision, dtype=config.dtype, seed=config.seed,
                      # the client's network (they agree to ~1e-6)
                      graph="converted" if ex.converted is not None else "traced" if ex.optimized else "eager",
                      backend=backend, versions={"torch": str(torch.__version__), "timm": str(timm.__version__)})
