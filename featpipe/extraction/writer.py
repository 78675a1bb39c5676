"""Write: each finished partition becomes one shard file, made visible under its final name only when complete.

A shard holds its rows' features, validity and errors, and each row's image
identity (path, size, modification time, version, content digest): a later run reuses
every row whose image is unchanged, whichever partition it was computed in.

A shard that exists under its final name is complete, whatever happened to the
process afterwards; a half-written one only ever exists under a temporary name
and is ignored (and cleaned up) by the next run. Where shards live, and how a
file becomes visible there (a rename, or an upload and a move on an object
store), is shardstore's business.

By default the client writes every shard (Dask workers return features). With
--shard-dir the worker that computed a partition writes its shard there itself
(``ShardWrite``) and returns only the partition's summary.
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h5py
import numpy as np

from .._util import is_temporary
from ..store import STR
from .shardstore import ShardStore

if TYPE_CHECKING:
    from .runner import PartitionResult

__all__ = ["MANIFEST", "Shard", "ShardStore", "ShardWrite", "finished_shards", "read_manifest",
           "shard_name", "write_manifest", "write_shard"]

log = logging.getLogger(__name__)

SHARD = re.compile(r"^part-(\d{6})(-[0-9a-f]+)?\.h5$")
MANIFEST = "manifest.json"


def shard_name(index: int, run: str) -> str:
    """Partition ``index`` of run ``run``. The run's own tag keeps two runs' shards apart: a partition of a
    killed client's run may still be running on a worker of the cluster, and land after the next run started."""
    return f"part-{index:06d}-{run}.h5"


@dataclass(frozen=True)
class Shard:
    """One shard file: its folder and its name."""

    store: ShardStore
    name: str

    def open(self):
        """The shard as an open, read-only h5py.File (a context manager)."""
        return self.store.open_h5(self.name)

    def __str__(self) -> str:
        return f"{self.store}/{self.name}"


def write_shard(shard: Shard, result: PartitionResult, dtype: str, images: dict) -> Shard:
    """``result`` as ``shard``; ``images`` holds its rows' identity (path, size, mtime, version, sha256),
    by which a later run finds rows it can reuse (see featpipe/identity.py)."""
    with shard.store.writing(shard.name) as tmp, h5py.File(tmp, "w") as f:
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
        f.create_dataset("version", data=np.asarray(images["version"], dtype=object), dtype=STR, shape=(n,))
    return shard


@dataclass(frozen=True)
class ShardWrite:
    """A partition's shard, to be written where the partition ran (a Dask worker that reaches --shard-dir),
    so only the partition's summary travels back to the client (picklable)."""

    shard: Shard
    dtype: str
    images: dict  # the partition's rows' identity, as for write_shard

    def __call__(self, result: PartitionResult) -> None:
        write_shard(self.shard, result, self.dtype, self.images)


def _read_images(f: h5py.File) -> tuple[dict, np.ndarray]:
    images = {
        "path": [p.decode() if isinstance(p, bytes) else p for p in f["path"][:]],
        "size": f["size"][:],
        "mtime": f["mtime"][:],
        "sha256": np.asarray([s.decode() if isinstance(s, bytes) else s for s in f["sha256"][:]], dtype=object),
        "version": np.asarray([s.decode() if isinstance(s, bytes) else s for s in f["version"][:]], dtype=object)
        if "version" in f else None,  # shards of an older featpipe: no versions
    }
    return images, f["valid"][:]


def finished_shards(store: ShardStore) -> Iterator[tuple[Shard, dict, np.ndarray]]:
    """Each complete shard with its rows' identity ({path, size, mtime, version, sha256}) and which rows are valid.

    Temporary files of a killed run are removed (the caller holds the output's lock, and this run's tasks have
    not started). So is a shard that cannot be read: only on a store without atomic uploads can a shard be cut
    short under its final name, and HDF5 notices (its superblock records the file's length).
    """
    for name in sorted(store.names()):
        if is_temporary(name):
            store.unlink(name)
        elif SHARD.match(name):
            shard = Shard(store, name)
            try:
                with shard.open() as f:
                    images, valid = _read_images(f)
            except (OSError, KeyError) as exc:
                log.warning("ignoring shard %s, which cannot be read (%s); its rows are computed again", shard, exc)
                store.unlink(name)
                continue
            yield shard, images, valid


def write_manifest(store: ShardStore, manifest: dict) -> None:
    store.write_text(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def read_manifest(store: ShardStore) -> dict | None:
    try:
        return json.loads(store.read_text(MANIFEST))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
