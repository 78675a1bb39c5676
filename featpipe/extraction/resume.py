"""Resume: what an earlier run left, and which rows this run still computes.

The output's lock (``OutputLock``) keeps a second process from writing the same output. Under it, a run
reads the previous feature file once (``read_output``), decides whether it is already complete (``is_complete``,
the one place that decides it), and otherwise collects the rows it can reuse: from the previous file (images
unchanged, same extractor) and from the parts of an interrupted run of the same configuration (their
``manifest.json`` says which). ``plan`` then says, row by row, where the features are or that they must be
computed. See ARCHITECTURE.md, "Crash safety" and "Identity".
"""
from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .. import identity
from ..errors import FormatError, RunConflictError
from ..files.features import augmented_name, check_format, read_images
from ..files.features import decode_strings as store_decode
from . import parts as parts_mod
from .config import ExtractConfig
from .samples import SampleList
from .views import ViewSpec

MANIFEST_VERSION = 2  # of <output>.parts/manifest.json; a manifest of another version is not trusted


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


# --- the previous feature file -----------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredOutput:
    """What the previous feature file says about itself (its attributes; its rows are read by ``file_rows``)."""

    path: Path
    config: dict  # the extractor identity of its features
    request: dict | None  # what was asked for
    images_digest: str
    failures: int
    backend: str = ""  # what computed its rows (the `backend` attribute; "" in files from before it existed)


def read_output(config: ExtractConfig) -> StoredOutput | None:
    """The previous feature file at ``config.output``; None when there is none, or with --overwrite.

    Raises:
        RunConflictError: the file is not a featpipe feature file.
    """
    if config.overwrite or not config.output.exists():
        return None
    try:
        with h5py.File(config.output, "r") as f:
            check_format(f.attrs, config.output)
            old = json.loads(f.attrs.get("config", "{}"))
            request = json.loads(f.attrs.get("request", "null"))
            digest = str(f.attrs.get("images_digest", ""))
            failures = len(f["errors/index"]) if "errors/index" in f else 0
            backend = str(f.attrs.get("backend", ""))
    except FormatError as exc:
        raise RunConflictError(f"{exc}; pass --overwrite to replace it") from None
    except (OSError, KeyError, ValueError):
        old, backend = {}, ""
    if not old:
        raise RunConflictError(
            f"{str(config.output)!r} exists and is not a featpipe feature file; pass --overwrite to replace it"
        )
    return StoredOutput(config.output, old, request, digest, failures, backend)


def is_complete(config: ExtractConfig, images_digest: str, stored: StoredOutput | None, same_extractor: bool) -> bool:
    """The output holds the same extractor's features of these very images (paths, sizes, times, labels and
    classes: ``images_digest``), and keeps its failures unless --retry-failed asks to try them again.

    "The same extractor" is known before any network is built when the request is the one recorded (see
    identity.request), and after building it when the identities agree (``same_extractor``): a run whose
    request differs only in what it does not change (a library version) finds the file complete too.
    """
    return (stored is not None and same_extractor and stored.images_digest == images_digest
            and not (config.retry_failed and stored.failures))


def same_extractor(old: dict, new: dict) -> bool:
    """Two extractor identities that compute the same features, whatever the order of their layers."""
    return _without_layers(old) == _without_layers(new) and \
        sorted(map(tuple, old.get("layers", []))) == sorted(map(tuple, new.get("layers", [])))


def _without_layers(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "layers"}


@dataclass
class Previous:
    """The rows an earlier run left: in the previous feature file, and in parts of an interrupted run."""

    file: Path | None = None
    file_layers: tuple[str, ...] = ()
    file_rows: dict = field(default_factory=dict)  # image key -> row
    file_paths: set = field(default_factory=set)
    file_valid: np.ndarray | None = None
    part_rows: dict = field(default_factory=dict)  # image key -> (part, row, valid)
    part_backends: dict = field(default_factory=dict)  # part name -> the backend that computed its rows


def file_rows(config: ExtractConfig, stored: StoredOutput, run_config: dict, prev: Previous) -> None:
    """The previous feature file's reusable rows, into ``prev``.

    Raises:
        RunConflictError: it holds another extractor's features, or layers this run leaves out.
    """
    old = stored.config
    dropped = [layer[0] for layer in old.get("layers", []) if layer not in run_config["layers"]]
    same = _without_layers(old) == _without_layers(run_config)
    if not same or dropped:
        keep = f"; to keep its layers pass --layer {' --layer '.join(dropped)} too" if same else ""
        raise RunConflictError(
            f"{str(config.output)!r} exists from another run ({identity.differences(old, run_config)}){keep}; "
            "pass --overwrite to replace it"
        )
    try:
        with h5py.File(stored.path, "r") as f:
            paths = store_decode(f["samples/path"][:])
            images = read_images(f["samples"])
            prev.file_valid = f["samples/valid"][:]
    except (OSError, KeyError, ValueError):
        raise RunConflictError(f"{str(config.output)!r} is not a complete featpipe feature file; pass --overwrite "
                               "to replace it") from None
    prev.file, prev.file_paths = stored.path, set(paths)
    prev.file_layers = stored_layers([layer[0] for layer in old["layers"]], config.views)  # its views are ours
    keys = identity.row_keys(paths, images, config.verify_content)
    prev.file_rows = {key: j for j, key in enumerate(keys)}


# --- the parts of an interrupted run -------------------------------------------------------------------------


def manifest(run_config: dict) -> dict:
    """What the part folder's manifest records: which extractor its parts were computed with."""
    return {"version": MANIFEST_VERSION, "config_hash": identity.config_hash(run_config), "config": run_config}


def part_rows(config: ExtractConfig, parts: parts_mod.PartStore, run_config: dict, prev: Previous) -> None:
    """Finished parts to reuse, row by row, into ``prev``; the folder is made ready for this run's parts.

    Raises:
        RunConflictError: the folder holds a partial run of another configuration (without --overwrite).
    """
    new = manifest(run_config)
    old = parts_mod.read_manifest(parts)
    if old is not None and old.get("version") != MANIFEST_VERSION:
        old = None  # another featpipe's partial run: its parts cannot be trusted to say which images they hold
    if old is not None and old != new:
        if not config.overwrite:
            raise RunConflictError(
                f"{str(parts)!r} holds a partial run with another configuration "
                f"({manifest_differences(old, new)}); pass --overwrite to discard it"
            )
        parts.remove()
    elif old is None and parts.exists():
        parts.remove()  # no manifest: nothing in it can be trusted
    parts.makedirs()
    parts_mod.write_manifest(parts, new)
    for part, images, valid, backend in parts_mod.finished_parts(parts):
        prev.part_backends[part.name] = backend
        for row, key in enumerate(identity.row_keys(images["path"], images, config.verify_content)):
            prev.part_rows[key] = (part, row, bool(valid[row]))


def manifest_differences(old: dict, new: dict) -> str:
    """How a partial run's manifest differs from this run's, in words."""
    if old.get("config") != new.get("config"):
        return identity.differences(old.get("config") or {}, new.get("config") or {})
    if old.get("samples") != new.get("samples"):
        return "the images differ (other paths, labels or classes)"
    return ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
                     if k != "config_hash" and old.get(k) != new.get(k))


# --- the plan --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """For each row of this run: where its features are, or that it must be computed."""

    old_rows: np.ndarray  # row in the previous file, -1: none
    part_rows: list  # (part, row) or None
    compute: np.ndarray  # bool
    known_failures: int  # rows not computed that fail (kept failures)
    changes: dict[str, int]
    layers_added: tuple[str, ...]


def plan(config: ExtractConfig, samples: SampleList, keys: list, layers: tuple[str, ...], prev: Previous) -> Plan:
    """Row by row: reuse the previous file's row (unchanged image, and no layer to add), a part's row, or compute."""
    n = len(samples)
    old_rows = np.full(n, -1, np.int64)
    from_parts: list = [None] * n
    compute = np.zeros(n, bool)
    added_layers = tuple(name for name in layers if prev.file is not None and name not in prev.file_layers)
    changes = dict.fromkeys(("unchanged", "added", "changed", "removed", "retried"), 0)
    known_failures = 0
    for i, key in enumerate(keys):
        j = prev.file_rows.get(key, -1)
        retried = j >= 0 and config.retry_failed and not prev.file_valid[j]
        if retried:
            j = -1
        part = prev.part_rows.get(key)
        if part is not None and config.retry_failed and not part[2]:
            part = None
        if j >= 0:
            old_rows[i] = j
        if part is not None:
            from_parts[i] = part[:2]
        old_valid = j >= 0 and bool(prev.file_valid[j])
        if part is not None:
            known_failures += not (part[2] and (j < 0 or old_valid))
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
    return Plan(old_rows, from_parts, compute, known_failures, changes, added_layers)


def stored_layers(layers: list[str], views: ViewSpec) -> tuple[str, ...]:
    """The feature datasets of a run: each layer, then with --augment each layer's augmented views."""
    return tuple(layers) + tuple(augmented_name(name) for name in layers if views.augment)
