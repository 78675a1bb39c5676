"""Where a partition's image bytes come from: local files, fsspec URLs, or the members of one tar shard.

The worker that runs a partition opens its images itself (nothing passes through the client), and
hands each one to decode.py's ``load_rgb``: a local file as its path, anything else as a file object
on its bytes. Whatever stops an image from being read becomes a :class:`BadImage` with a reason that
names no secret (see featpipe/remote.py), so the row fails and the run goes on.
"""
from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from .. import remote
from .decode import BadImage
from .shards import read_members


def _reason(exc: BaseException, options: Mapping[str, Any]) -> str:
    text = remote.describe_error(exc, options)
    if isinstance(exc, FileNotFoundError):
        return f"missing: {text}"
    if isinstance(exc, PermissionError):
        return f"access refused: {text}"
    return f"unreadable: {text}"


def _bytes(data: bytes) -> BinaryIO:
    if not data:
        raise BadImage("empty file (0 bytes)")
    return io.BytesIO(data)


class FileReader:
    """Rows that are files: a local path is handed on as it is; a URL is read whole by this process."""

    def __init__(self, root: str, paths: tuple[str, ...], options: Mapping[str, Any]):
        self.root, self.paths, self.options = root, paths, options
        self._remote_root = remote.is_url(root)

    def __call__(self, i: int) -> Path | BinaryIO:
        path = self.paths[i]
        if remote.is_url(path) or self._remote_root:
            url = remote.join(self.root, path)
            try:
                return _bytes(remote.read_bytes(url, self.options))
            except BadImage:
                raise
            except Exception as exc:  # noqa: BLE001 - fsspec backends raise their own kinds; the row fails
                raise BadImage(_reason(exc, self.options)) from None
        return Path(self.root) / remote.local_path(path)

    def close(self) -> None:
        pass


class ShardReader:
    """The rows of one tar shard, streamed once, front to back. Calls may come from several decode threads
    in any order: each takes the stream's lock, reads on to its member, and leaves the members it passed
    for the threads that want them (at most the decode look-ahead is held)."""

    def __init__(self, shard: str, members: tuple[str | None, ...], options: Mapping[str, Any]):
        self._stream: Iterator[tuple[int, bytes | str]] = read_members(shard, options, members)
        self._ready: dict[int, bytes | str] = {}
        self._lock = threading.Lock()

    def __call__(self, i: int) -> BinaryIO:
        with self._lock:
            while i not in self._ready:
                j, item = next(self._stream)  # yields every position once: i comes
                self._ready[j] = item
            item = self._ready.pop(i)
        if isinstance(item, str):
            raise BadImage(item)
        return _bytes(item)

    def close(self) -> None:
        self._stream.close()  # closes the shard's file when the partition ends early


def open_partition(root: str, paths: tuple, shard: str | None,
                   options: Mapping[str, Any] | None) -> Callable[[int], Path | BinaryIO]:
    """``read(i)`` for row i of a partition (a Path or a file object for decode.load_rgb); call
    ``read.close()`` when done. Raises BadImage from ``read`` for rows that cannot be read."""
    if shard is not None:
        return ShardReader(shard, paths, options or {})
    return FileReader(root, paths, options or {})
