"""Read: turn the user's input into an ordered list of samples.

The layouts: an ImageFolder tree (class subfolders give labels) or a flat folder of unlabelled
images, local or at an fsspec URL (``s3://bucket/images``); a list, CSV or Parquet, with
``path[,label]`` columns whose paths are local or URLs; or WebDataset tar shards
(``shards/{00000..00099}.tar``, local or URLs; see shards.py). The order is deterministic (sorted
folders, the list's own order, shards in the pattern's order and members in tar order), so row i
means the same image in every run.

Here: which reader an input needs, and tar shards; image folders are folders.py's, CSV and Parquet lists
lists.py's, and what they all make, a SampleList, samples.py's.

Only names are read here, never images: Dask workers read the bytes themselves (inputs.py). Tar
shards are the exception: their members are known only by reading them, so they are listed here,
in parallel, and read again by the workers.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import remote
from ..errors import UsageError
from ..settings import EXTRACT, literal, shown
from . import folders, lists
from . import shards as tar_shards
from .samples import SampleList, labelled

__all__ = ["SampleList", "discover"]


def _common_folder(locations: Sequence[str]) -> str:
    """The deepest folder holding every location (paths or URLs, compared by '/'-separated parts)."""
    folders = [loc.rstrip("/").split("/")[:-1] for loc in locations]
    common = folders[0]
    for parts in folders[1:]:
        k = 0
        while k < min(len(common), len(parts)) and common[k] == parts[k]:
            k += 1
        common = common[:k]
    return "/".join(common) or "/"


def _from_shards(locations: Sequence[str], options: Mapping[str, Any], label_key: str | None,
                 listings: Path | None) -> SampleList:
    """Tar shards, listed in parallel (the listing streams each shard once, unless ``listings`` knows it
    unchanged; see shards.py)."""
    # Shards keep the names given (symlinks are not followed): a row's path is the shard as named.
    cleaned = [remote.clean_url(loc) if remote.is_url(loc) else os.path.abspath(remote.local_path(loc))
               for loc in locations]
    root = _common_folder(cleaned)
    listings = tar_shards.list_shards(locations, options, label_key, listings)
    paths, names, shard_of, members = [], [], [], []
    size, mtime, version, sha = [], [], [], []
    for k, (shard, listing) in enumerate(zip(cleaned, listings, strict=True)):
        rel = shard[len(root) + 1:]
        for m in listing.members:
            paths.append(f"{rel}/{m.name}")
            names.append(m.label or "")
            members.append(m.name)
            size.append(m.size), mtime.append(m.mtime_ns), sha.append(m.sha256)
        if listing.broken is not None and not listing.broken_in_member:
            # The part of the shard that could not be listed: one row that fails with the shard's error.
            paths.append(rel)
            names.append("")
            members.append(None)
            size.append(-1), mtime.append(0), sha.append("")
        shard_of += [k] * (len(paths) - len(shard_of))
        version += [listing.identity] * (len(paths) - len(version))
    if label_key is not None and label_key != tar_shards.DEFAULT_LABEL_KEY and paths and not any(names):
        where = f"a {label_key} member" if label_key.startswith(".") else f"a field {label_key!r} in its .json member"
        raise EXTRACT.refuse(f"{{label_key}} {shown(label_key)}: no sample in the shards has {literal(where)}; use "
                             ".cls, .txt or a field of the samples' .json")
    known = {"size": np.asarray(size, np.int64), "mtime": np.asarray(mtime, np.int64),
             "version": np.asarray(version, dtype=object), "sha256": np.asarray(sha, dtype=object)}
    root_out: Path | str = root if remote.is_url(root) else Path(root)
    return labelled(root_out, paths, names, {}, options, shards=tuple(locations),
                     shard_of=np.asarray(shard_of, np.int64), members=tuple(members), known=known)


def _check_names(samples: SampleList) -> SampleList:
    for path in samples.paths:
        try:
            path.encode("utf-8")
        except UnicodeEncodeError:
            shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
            raise UsageError(
                f"file name {shown!r} is not valid UTF-8 and cannot be stored in the feature file; rename it"
            ) from None
    return samples


def _kind(location: str) -> str:
    name = remote.clean_url(location).lower()
    if name.endswith(lists.LIST_SUFFIXES):
        return "parquet" if not name.endswith(".csv") else "csv"
    return "shards" if tar_shards.is_shard(name) else ""


def _discover(source: str, options: Mapping[str, Any], label_key: str | None, listings: Path | None) -> SampleList:
    expanded = tar_shards.expand_braces(source)
    if len(expanded) > 1 or tar_shards.is_shard(source):
        others = [e for e in expanded if not tar_shards.is_shard(e)]
        if others:
            raise UsageError(f"input {remote.clean_url(source)!r}: a brace pattern names tar shards, but "
                             f"{remote.clean_url(others[0])!r} does not end in .tar; give '.../{{00000..00099}}.tar'")
        if not remote.is_url(source):
            missing = [e for e in expanded if not Path(remote.local_path(e)).expanduser().is_file()]
            if missing:
                raise UsageError(f"input {source!r}: {len(missing)} of {len(expanded)} shards do not exist, such as "
                                 f"{missing[0]!r}; check the pattern")
            expanded = [str(Path(remote.local_path(e)).expanduser()) for e in expanded]
        return _from_shards(expanded, options, label_key, listings)
    kind = _kind(source)
    if remote.is_url(source):
        fs, path = remote.filesystem(source, options)
        try:
            fs.invalidate_cache(path)
            is_dir = fs.info(path).get("type") == "directory"  # raises when missing, or not ours to read
        except OSError as exc:
            raise remote.access_error(source, exc, options) from None
        if is_dir:
            return folders.from_remote_folder(source, options)
        if kind == "csv":
            return lists.from_csv(source, options)
        if kind == "parquet":
            return lists.from_parquet(source, options)
        raise UsageError(f"input {remote.clean_url(source)!r} is neither a folder nor a .csv, .parquet or .tar file; "
                         "give an image folder, a list, or tar shards")
    path = Path(remote.local_path(source)).expanduser()
    if not path.exists():
        raise UsageError(f"input {str(path)!r} does not exist; give an image folder or a CSV list")
    if path.is_dir():
        return folders.from_folder(path.resolve())
    if kind == "csv":
        return lists.from_csv(str(path), options)
    if kind == "parquet":
        return lists.from_parquet(str(path), options)
    raise UsageError(
        f"input {str(path)!r} is neither a folder nor a .csv, .parquet or .tar file; give an image folder, a list "
        "(CSV or Parquet), or tar shards"
    )


def discover(source: str | os.PathLike, storage_options: Mapping[str, Any] | None = None,
             label_key: str | None = None, listings: Path | None = None) -> SampleList:
    """List the samples of ``source``: an image folder (local or a URL), a CSV or Parquet list, or tar shards
    (a brace pattern). ``storage_options`` go to fsspec for URLs; ``label_key`` says where a shard sample's
    label is (``.cls``, ``.txt``, or a field of its ``.json``); ``listings`` is a JSON file that keeps tar
    shards' listings between runs (a shard is read again only when its file changed).

    Raises:
        UsageError: the input is missing, unreachable, of an unknown kind, or holds no image.
    """
    options = dict(storage_options or {})
    text = os.fspath(source)
    samples = _discover(text, options, label_key, listings)
    _check_names(samples)
    if not len(samples):
        raise UsageError(
            f"input {remote.clean_url(text)!r} holds no images (looked for {', '.join(sorted(folders.IMAGE_EXTENSIONS))})"
        )
    return samples
