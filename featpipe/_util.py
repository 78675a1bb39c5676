"""Small helpers the whole package shares, each written once: files written whole, file digests, this
process's share of the machine (cores, memory), featpipe's cache folder, installed versions, and a
pyplot that needs no display.

Standard library only at the top: every module may import this one, and it imports no featpipe module.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import BinaryIO

# --- files written whole -----------------------------------------------------------------------------


def temporary_name(name: str) -> str:
    """The temporary name ``name`` is written under: hidden, unique (workers on several machines may share
    pids), and recognised by ``is_temporary`` and ``remove_temporaries`` whoever wrote it."""
    return f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def is_temporary(name: str) -> bool:
    """A name made by ``temporary_name``: a file of a writer that has not finished (or was killed)."""
    return name.startswith(".") and ".tmp-" in name


def remove_temporaries(path: Path) -> None:
    """Temporary files left next to ``path`` by writers that were killed. Only a caller that knows nobody is
    writing ``path`` now (it holds the output's lock) may call this."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        stale.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` over ``final`` durably: the data first, then the directory entry."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path next to ``path`` to write to; on a clean exit it replaces ``path`` whole (a reader
    sees the old file or the new one, never half of one); on an error it is removed."""
    path = Path(path)
    tmp = path.with_name(temporary_name(path.name))
    try:
        yield tmp
        replace_durably(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (weights files, images with --verify-content)."""
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_stream(f: BinaryIO) -> str:
    """Hex sha256 of what is left to read in ``f`` (a file, a tar member), read 1 MiB at a time."""
    h = hashlib.sha256()
    for block in iter(lambda: f.read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


# --- this process's share of the machine ---------------------------------------------------------------

CGROUP = Path("/sys/fs/cgroup")  # cgroup v2, where containers state their limits


def cpu_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:  # "max 100000" or "200000 100000"
        quota, period = (CGROUP / "cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return cores


def available_memory() -> int:
    """Bytes this process can still allocate: the system's available memory, capped by a cgroup
    (container) limit."""
    import psutil

    free = int(psutil.virtual_memory().available)
    try:  # "max", or a limit in bytes
        limit = (CGROUP / "memory.max").read_text().strip()
        if limit != "max":
            used = int((CGROUP / "memory.current").read_text())
            free = min(free, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return free


# --- where featpipe keeps things -----------------------------------------------------------------------


def user_cache(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/<parts>`` (``~/.cache/...``), where featpipe and torch keep their caches; not created."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, *parts)


def cache_dir(*parts: str) -> Path:
    """``$XDG_CACHE_HOME/featpipe/<parts>`` (``~/.cache/featpipe/...``); not created."""
    return user_cache("featpipe", *parts)


def installed_version(dist: str) -> str:
    """The installed version of the distribution ``dist``, or 'none'."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "none"


def pyplot():
    """matplotlib.pyplot on the Agg backend: plots are files, and a machine without a display draws them too."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
