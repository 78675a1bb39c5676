"""The samples of one extraction as one object (``SampleList``): each row's path, label and where it is read,
and for tar shards each row's shard and member; row i of the feature file is sample i. The readers that make
one from an input are folders.py, lists.py and sources.py (tar shards, and which reader an input needs)."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import identity, remote
from ..errors import UsageError


@dataclass(frozen=True, eq=False)
class SampleList:
    """The samples of one extraction; row i of the feature file is sample i.

    ``root`` is a local folder (a Path) or a URL (a str); ``paths`` are relative to it (or absolute
    paths and URLs outside it). For tar shards a row's path is ``<shard>/<image member>``, the shard
    relative to ``root``.
    """

    root: Path | str
    paths: tuple[str, ...]  # POSIX paths relative to root (or absolute when outside it); URLs without query
    labels: np.ndarray  # int64, -1 where unlabelled
    classes: tuple[str, ...]
    # Where a row is read when that is not root/path: a URL with the query string its stored path lacks.
    reads: Mapping[int, str] = field(default_factory=dict, repr=False)
    # Tar shards: their locations, each row's shard (index) and image member (None: the part of a
    # shard that could not be listed, which fails as one row).
    shards: tuple[str, ...] = field(default=(), repr=False)
    shard_of: np.ndarray | None = field(default=None, repr=False)
    members: tuple[str | None, ...] = field(default=(), repr=False)
    # Identity the listing gave for free (size, mtime, version, sha256 per row); else stat'ed per file.
    known: dict | None = field(default=None, repr=False)
    storage_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.paths)

    def digest(self) -> str:
        """Identifies the list: a resumed run must see the very same samples."""
        h = hashlib.sha256()
        for path, label in zip(self.paths, self.labels.tolist(), strict=True):
            h.update(f"{path}\0{label}\n".encode())
        h.update("\0".join(self.classes).encode())
        return h.hexdigest()

    def location(self, i: int) -> str:
        """Where row i is read: a local path or a URL (with its query string)."""
        if i in self.reads:
            return self.reads[i]
        path = self.paths[i]
        if remote.is_url(path) or os.path.isabs(path):
            return path
        if isinstance(self.root, Path):
            return str(self.root / path)
        return remote.join(self.root, path)

    def files(self, command: str) -> list[Path]:
        """Each row as a local file, for commands that open the files themselves (guide, finetune, predict
        with a checkpoint).

        Raises:
            UsageError: the images are at URLs or in tar shards, which only `featpipe extract` reads.
        """
        if self.shard_of is not None or not isinstance(self.root, Path) or any(map(remote.is_url, self.paths)):
            raise UsageError(f"{command} reads local image files; images at URLs or in tar shards are read by "
                             "`featpipe extract` only: extract their features, or copy the images to a local folder")
        return [self.root / p for p in self.paths]

    def image_stats(self, verify_content: bool = False) -> dict[str, np.ndarray]:
        """Each row's image identity (featpipe/identity.py): what the listing knows, or else stat'ed."""
        return identity.image_stats(self.root, self.paths, verify_content, known=self.known,
                                    locations=self.location, storage_options=self.storage_options)

    def partitions(self, rows: np.ndarray, size: int) -> list[tuple[int, int]]:
        """Spans [a, b) of ``rows`` (rows to compute, ascending) to run as one partition each: ``size``
        rows at a time, or for tar shards one shard each (a shard is read once, front to back)."""
        if self.shard_of is None:
            return [(a, min(a + size, len(rows))) for a in range(0, len(rows), size)]
        if not len(rows):
            return []
        of = self.shard_of[rows]
        cuts = np.flatnonzero(np.diff(of)) + 1
        return [(int(a), int(b)) for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(rows)], strict=True)]

    def task_input(self, rows: np.ndarray) -> dict:
        """What a worker needs to read ``rows`` (one partition): PartitionTask's root, paths (as stored),
        sources (where they are read, when that is not root/path: shard members, URLs with a query), shard,
        storage options."""
        task = {"root": str(self.root), "paths": tuple(self.paths[r] for r in rows),
                "storage_options": dict(self.storage_options)}
        if self.shard_of is not None:
            task["shard"] = self.shards[int(self.shard_of[rows[0]])]
            task["sources"] = tuple(self.members[r] for r in rows)
        elif any(r in self.reads for r in rows.tolist()):
            task["sources"] = tuple(self.location(r) if r in self.reads else self.paths[r] for r in rows.tolist())
        return task


def labelled(root: Path | str, paths: list[str], names: list[str], reads: dict, options: Mapping[str, Any],
              **extra) -> SampleList:
    """A SampleList from label names ('' for none): classes sorted, numerically when all are integers."""
    classes = tuple(label_order({n for n in names if n}))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index.get(n, -1) for n in names], np.int64)
    return SampleList(root, tuple(paths), labels, classes, reads=reads, storage_options=options, **extra)


def label_order(names: set[str]) -> list[str]:
    """Class names sorted; numerically when all are integers (so '10' follows '9')."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)
