"""Parts: each finished partition's result as one file, in a folder local or remote, visible under its final name
only when complete. (A "shard" is a tar file of input images; a "part" is a partial result of this run.)

A part holds its rows' features, validity and errors, and each row's image identity (path, size, modification
time, version, content digest): a later run reuses every row whose image is unchanged, whichever partition it
was computed in. A part that exists under its final name is complete, whatever happened to the process
afterwards; a half-written one only ever exists under a temporary name and is ignored (and cleaned up) by the
next run.

Where parts live (``PartStore``) is answered in one place, so the writer, the resume logic and the merge never
ask whether the folder is local:

* a local folder (a plain path, or a ``file://`` URL): a file is written under a temporary name in the folder
  itself, fsynced, and renamed; the rename is atomic, so a name that matches a part is a complete part;
* anything else fsspec knows (``s3://``, ``gs://``, ``memory://`` ...): object stores have no rename. A file is
  written to a local temporary file, uploaded to a temporary key, and moved to its final key (fsspec's ``mv``: a
  rename where the store has one, else a server-side copy and a delete). An object store creates an object, by
  upload or by copy, whole or not at all, so the final key again only ever holds a complete part. For stores
  that do not promise that, readers get a second line of defence: HDF5 records the file's length in its
  superblock and refuses a truncated file, and ``finished_parts`` drops a part it cannot read.

By default the client writes every part (Dask workers return features). With --shard-dir the worker that
computed a partition writes its part there itself (``PartWrite``) and returns only the partition's summary.
fsspec is imported only for URLs: the default, local, folder costs nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from .. import remote
from .._util import atomic_write, is_temporary, temporary_name
from ..files.features import STR, decode_strings, read_images, write_images
from ..settings import EXTRACT, literal, shown

if TYPE_CHECKING:
    from .partition import PartitionResult

log = logging.getLogger(__name__)

class PartStore:
    """A folder of parts, local or remote (picklable: it travels to Dask workers as its location)."""

    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        self._fs = None
        if remote.is_url(self.location):
            import fsspec
            from fsspec.implementations.local import LocalFileSystem

            try:
                fs, path = fsspec.core.url_to_fs(self.location)
            except (ImportError, ValueError) as exc:
                raise EXTRACT.refuse(f"{{shard_dir}} {shown(self.location)} cannot be opened ({literal(str(exc))}); "
                                     "install the fsspec backend it names (s3fs for s3://, gcsfs for gs://) or give a "
                                     "local folder") from None
            if isinstance(fs, LocalFileSystem):
                self.local: Path | None = Path(path)
            else:
                self.local = None
                self._fs, self._path = fs, path.rstrip("/")
        else:  # a path, or a file:// URL
            self.local = Path(remote.local_path(self.location)).expanduser().absolute()

    @staticmethod
    def location_for(output: Path, shard_dir: str | None) -> str:
        """``<output>.parts`` next to the output; with ``shard_dir``, a folder in it named after the output (and
        a digest of its full path, so that two outputs of the same name never share a folder)."""
        if shard_dir is None:
            return str(output.with_name(output.name + ".parts"))
        tag = hashlib.sha256(str(output).encode()).hexdigest()[:8]
        return f"{str(shard_dir).rstrip('/')}/{output.name}-{tag}.parts"

    @classmethod
    def for_output(cls, output: Path, shard_dir: str | None) -> PartStore:
        """The run's part folder (see location_for)."""
        return cls(cls.location_for(output, shard_dir))

    def __reduce__(self):
        return (PartStore, (self.location,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PartStore) and other.location == self.location

    def __hash__(self) -> int:
        return hash(self.location)

    def __repr__(self) -> str:
        return f"PartStore({self.location!r})"

    def __str__(self) -> str:
        return str(self.local) if self.local is not None else self.location

    def _key(self, name: str) -> str:
        return f"{self._path}/{name}"

    def _fresh(self) -> None:
        # fsspec caches listings per process; the workers' uploads happen in other processes.
        self._fs.invalidate_cache(self._path)

    def exists(self) -> bool:
        if self.local is not None:
            return self.local.is_dir()
        self._fresh()
        return self._fs.exists(self._path)

    def makedirs(self) -> None:
        """Create the folder; on a URL its first part (an object store's bucket) must exist already: s3fs would
        create a bucket, and a typo in its name would go unnoticed."""
        if self.local is not None:
            self.local.mkdir(parents=True, exist_ok=True)
            return
        bucket = self._path.split("/", 1)[0]
        try:
            if bucket and not self._fs.exists(bucket):
                raise EXTRACT.refuse(f"part folder {shown(self.location)}: {shown(bucket)} does not exist (featpipe "
                                     "does not create buckets); create it or give another {shard_dir}")
            self._fs.makedirs(self._path, exist_ok=True)  # a no-op on object stores
        except PermissionError as exc:  # s3fs: bad or missing credentials; its message names no secret
            raise EXTRACT.refuse(f"part folder {shown(self.location)}: access denied ({literal(str(exc))}); check the "
                                 "credentials in the environment or give another {shard_dir}") from None

    def remove(self) -> None:
        """The folder and everything in it; nothing when it is not there."""
        if self.local is not None:
            shutil.rmtree(self.local, ignore_errors=True)
            return
        self._fresh()
        with contextlib.suppress(FileNotFoundError):
            self._fs.rm(self._path, recursive=True)

    def names(self) -> list[str]:
        """The names of the files in the folder (none when it is not there)."""
        if self.local is not None:
            try:
                return [entry.name for entry in os.scandir(self.local)]
            except FileNotFoundError:
                return []
        self._fresh()
        try:
            return [p.rstrip("/").rsplit("/", 1)[-1] for p in self._fs.ls(self._path, detail=False)]
        except FileNotFoundError:
            return []

    def unlink(self, name: str) -> None:
        if self.local is not None:
            (self.local / name).unlink(missing_ok=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                self._fs.rm(self._key(name))

    def read_text(self, name: str) -> str:
        """Raises FileNotFoundError when there is no such file."""
        if self.local is not None:
            return (self.local / name).read_text()
        with self._fs.open(self._key(name), "r") as f:
            return f.read()

    @contextlib.contextmanager
    def writing(self, name: str) -> Iterator[Path]:
        """A local path to write ``name`` to; on a clean exit the file appears under ``name``, complete."""
        if self.local is not None:
            with atomic_write(self.local / name) as tmp:
                yield tmp
            return
        fd, tmp_path = tempfile.mkstemp(prefix="featpipe-", suffix=f"-{name}")
        os.close(fd)
        tmp = Path(tmp_path)
        try:
            yield tmp
            staged = self._key(temporary_name(name))
            self._fs.put_file(str(tmp), staged)
            self._fs.mv(staged, self._key(name))
        finally:
            tmp.unlink(missing_ok=True)

    def write_text(self, name: str, text: str) -> None:
        with self.writing(name) as tmp:
            tmp.write_text(text)

    @contextlib.contextmanager
    def open_h5(self, name: str) -> Iterator:
        """``name`` as an open, read-only h5py.File."""
        import h5py

        if self.local is not None:
            with h5py.File(self.local / name, "r") as f:
                yield f
            return
        # h5py reads a Python file object; fsspec's read-ahead cache turns HDF5's small reads into few requests.
        with self._fs.open(self._key(name), "rb") as raw, h5py.File(raw, "r") as f:
            yield f


PART = re.compile(r"^part-(\d{6})(-[0-9a-f]+)?\.h5$")
MANIFEST = "manifest.json"  # which run the parts belong to (see resume.py)


def part_name(index: int, run: str) -> str:
    """Partition ``index`` of run ``run``. The run's own tag keeps two runs' parts apart: a partition of a
    killed client's run may still be running on a worker of the cluster, and land after the next run started."""
    return f"part-{index:06d}-{run}.h5"


@dataclass(frozen=True)
class Part:
    """One part file: its folder and its name."""

    store: PartStore
    name: str

    def open(self):
        """The part as an open, read-only h5py.File (a context manager)."""
        return self.store.open_h5(self.name)

    def __str__(self) -> str:
        return f"{self.store}/{self.name}"


def write_part(part: Part, result: PartitionResult, dtype: str, images: dict) -> Part:
    """``result`` as ``part``; ``images`` holds its rows' identity (path, size, mtime, version, sha256),
    by which a later run finds rows it can reuse (see featpipe/identity.py)."""
    with part.store.writing(part.name) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["rows"] = len(result)
        f.attrs["backend"] = result.backend  # a resumed run's file names every backend whose rows it holds
        for name, values in result.features.items():
            f.create_dataset(f"features/{name}", data=values.astype(dtype, copy=False))
        f.create_dataset("valid", data=result.valid)
        # Rows within this part; the partition numbers them from the task's start.
        f.create_dataset("error_index", data=np.asarray([i - result.start for i, _ in result.errors], dtype=np.int64))
        f.create_dataset(
            "error_reason", data=np.asarray([r for _, r in result.errors], dtype=object), dtype=STR,
            shape=(len(result.errors),),
        )
        f.create_dataset("path", data=np.asarray(images["path"], dtype=object), dtype=STR, shape=(len(result),))
        write_images(f, images)
    return part


@dataclass(frozen=True)
class PartWrite:
    """A partition's part, to be written where the partition ran (a Dask worker that reaches --shard-dir),
    so only the partition's summary travels back to the client (picklable)."""

    part: Part
    dtype: str
    images: dict  # the partition's rows' identity, as for write_part

    def __call__(self, result: PartitionResult) -> None:
        write_part(self.part, result, self.dtype, self.images)


def _read_images(f: h5py.File) -> tuple[dict, np.ndarray]:
    return {"path": decode_strings(f["path"][:]), **read_images(f)}, f["valid"][:]


def finished_parts(store: PartStore) -> Iterator[tuple[Part, dict, np.ndarray, str]]:
    """Each complete part with its rows' identity ({path, size, mtime, version, sha256}), which rows are valid,
    and the backend that computed them.

    Temporary files of a killed run are removed (the caller holds the output's lock, and this run's tasks have
    not started). So is a part that cannot be read: only on a store without atomic uploads can a part be cut
    short under its final name, and HDF5 notices (its superblock records the file's length).
    """
    for name in sorted(store.names()):
        if is_temporary(name):
            store.unlink(name)
        elif PART.match(name):
            part = Part(store, name)
            try:
                with part.open() as f:
                    images, valid = _read_images(f)
                    backend = str(f.attrs.get("backend", ""))
            except (OSError, KeyError) as exc:
                log.warning("ignoring part %s, which cannot be read (%s); its rows are computed again", part, exc)
                store.unlink(name)
                continue
            yield part, images, valid, backend


def write_manifest(store: PartStore, manifest: dict) -> None:
    store.write_text(MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def read_manifest(store: PartStore) -> dict | None:
    try:
        return json.loads(store.read_text(MANIFEST))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
