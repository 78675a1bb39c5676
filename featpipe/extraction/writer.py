"""Write: each finished partition becomes one shard file, made visible by a rename.

A shard holds its rows' features, validity and errors, and each row's image
identity (path, size, modification time, content digest): a later run reuses
every row whose image is unchanged, whichever partition it was computed in.

A shard that exists under its final name is complete, whatever happened to the
process afterwards; a half-written one only ever exists under a temporary name
and is ignored (and cleaned up) by the next run.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from ..store import STR

if TYPE_CHECKING:
    from .runner import PartitionResult

SHARD = re.compile(r"^part-(\d{6})\.h5$")
MANIFEST = "manifest.json"


def shard_path(parts_dir: Path, index: int) -> Path:
    return parts_dir / f"part-{index:06d}.h5"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_replace(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` over ``final`` durably: the data first, then the directory entry."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def write_shard(parts_dir: Path, result: PartitionResult, dtype: str, images: dict) -> Path:
    """``result`` as ``part-NNNNNN.h5``; ``images`` holds its rows' identity (path, size, mtime, sha256),
    by which a later run finds rows it can reuse (see featpipe/identity.py)."""
    final = shard_path(parts_dir, result.index)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    with h5py.File(tmp, "w") as f:
        f.attrs["rows"] = len(result)
        for name, values in result.features.items():
            f.create_dataset(f"features/{name}", data=values.astype(dtype, copy=False))
        f.create_dataset("valid", data=result.valid)
        # Rows within this shard; the runner numbers them from the task's start.
        f.create_dataset("error_index", data=np.asarray([i - result.start for i, _ in result.errors], dtype=np.int64))
        f.create_dataset(
            "error_reason", data=np.asarray([r for _, r in result.errors], dtype=object), dtype=STR,
            shape=(len(result.errors),),
        )
        n = len(result)
        f.create_dataset("path", data=np.asarray(images["path"], dtype=object), dtype=STR, shape=(n,))
        f.create_dataset("size", data=np.asarray(images["size"], dtype=np.int64))
        f.create_dataset("mtime", data=np.asarray(images["mtime"], dtype=np.int64))
        f.create_dataset("sha256", data=np.asarray(images["sha256"], dtype=object), dtype=STR, shape=(n,))
    atomic_replace(tmp, final)
    return final


def read_shard_images(path: Path) -> tuple[dict, np.ndarray]:
    """A shard's rows: their identity ({path, size, mtime, sha256}) and which are valid."""
    with h5py.File(path, "r") as f:
        images = {
            "path": [p.decode() if isinstance(p, bytes) else p for p in f["path"][:]],
            "size": f["size"][:],
            "mtime": f["mtime"][:],
            "sha256": np.asarray([s.decode() if isinstance(s, bytes) else s for s in f["sha256"][:]], dtype=object),
        }
        return images, f["valid"][:]


def finished_shards(parts_dir: Path) -> dict[int, Path]:
    """Complete shards by partition index; stale temporary files are removed."""
    done = {}
    for entry in os.scandir(parts_dir):
        m = SHARD.match(entry.name)
        if m:
            done[int(m.group(1))] = Path(entry.path)
        elif ".tmp-" in entry.name:
            os.unlink(entry.path)  # left by a killed run; we hold the lock, so nobody writes it
    return done


def write_manifest(parts_dir: Path, manifest: dict) -> None:
    tmp = parts_dir / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    atomic_replace(tmp, parts_dir / MANIFEST)


def read_manifest(parts_dir: Path) -> dict | None:
    try:
        return json.loads((parts_dir / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
