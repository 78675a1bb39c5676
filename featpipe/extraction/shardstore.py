"""Where a run's shards live: a local folder, or an fsspec URL every worker can reach.

One place answers "how do I list, read, publish and remove shards here", so the
writer, the resume logic and the merge never ask whether the folder is local.

* A local folder (a plain path, or a ``file://`` URL): a file is written under a
  temporary name in the folder itself, fsynced, and renamed; the rename is
  atomic, so a name that matches a shard is a complete shard.
* Anything else fsspec knows (``s3://``, ``gs://``, ``memory://`` ...): object
  stores have no rename. A file is written to a local temporary file, uploaded
  to a temporary key, and moved to its final key (fsspec's ``mv``: a rename
  where the store has one, else a server-side copy and a delete). An object
  store creates an object, by upload or by copy, whole or not at all, so the
  final key again only ever holds a complete shard. For stores that do not
  promise that, readers get a second line of defence: HDF5 records the file's
  length in its superblock and refuses a truncated file, and the resume logic
  drops a shard it cannot read (see writer.finished_shards).

fsspec is imported only for URLs: the default, local, path costs nothing.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .. import remote
from .._util import atomic_write, temporary_name
from ..errors import UsageError


class ShardStore:
    """A folder of shards, local or remote (picklable: it travels to Dask workers as its location)."""

    def __init__(self, location: str | os.PathLike):
        self.location = str(location)
        self._fs = None
        if remote.is_url(self.location):
            import fsspec
            from fsspec.implementations.local import LocalFileSystem

            try:
                fs, path = fsspec.core.url_to_fs(self.location)
            except (ImportError, ValueError) as exc:
                raise UsageError(f"--shard-dir {self.location!r} cannot be opened ({exc}); install the fsspec "
                                 "backend it names (s3fs for s3://, gcsfs for gs://) or give a local folder") from None
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
    def for_output(cls, output: Path, shard_dir: str | None) -> ShardStore:
        """The run's shard folder (see location_for)."""
        return cls(cls.location_for(output, shard_dir))

    def __reduce__(self):
        return (ShardStore, (self.location,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShardStore) and other.location == self.location

    def __hash__(self) -> int:
        return hash(self.location)

    def __repr__(self) -> str:
        return f"ShardStore({self.location!r})"

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
                raise UsageError(f"shard folder {self.location!r}: {bucket!r} does not exist (featpipe does not "
                                 "create buckets); create it or give another --shard-dir")
            self._fs.makedirs(self._path, exist_ok=True)  # a no-op on object stores
        except PermissionError as exc:  # s3fs: bad or missing credentials; its message names no secret
            raise UsageError(f"shard folder {self.location!r}: access denied ({exc}); check the credentials in "
                             "the environment or give another --shard-dir") from None

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
