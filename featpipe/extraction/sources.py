"""Read: turn the user's input into an ordered list of samples.

The layouts: an ImageFolder tree (class subfolders give labels) or a flat folder of unlabelled
images, local or at an fsspec URL (``s3://bucket/images``); a list, CSV or Parquet, with
``path[,label]`` columns whose paths are local or URLs; or WebDataset tar shards
(``shards/{00000..00099}.tar``, local or URLs; see shards.py). The order is deterministic (sorted
folders, the list's own order, shards in the pattern's order and members in tar order), so row i
means the same image in every run.

Only names are read here, never images: Dask workers read the bytes themselves (inputs.py). Tar
shards are the exception: their members are known only by reading them, so they are listed here,
in parallel, and read again by the workers.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import identity, remote
from ..errors import UsageError
from ..settings import EXTRACT, literal, shown
from . import shards as tar_shards

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
LIST_SUFFIXES = (".csv", ".parquet", ".pq")
LIST_CHUNK = 65536  # Parquet rows read at a time


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


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if _is_image(f) and not f.startswith(".")]
    return sorted(found, key=lambda p: p.as_posix())


def _from_folder(root: Path) -> SampleList:
    entries = sorted((e for e in os.scandir(root) if not e.name.startswith(".")), key=lambda e: e.name)
    class_dirs = [e for e in entries if e.is_dir()]
    top_images = [e for e in entries if e.is_file() and _is_image(e.name)]
    if class_dirs and top_images:
        raise UsageError(
            f"input folder {str(root)!r} mixes images ({top_images[0].name}, ...) with subfolders "
            f"({class_dirs[0].name}, ...); use class subfolders only, or a flat folder, or a CSV list"
        )
    if not class_dirs:
        paths = [p.relative_to(root).as_posix() for p in _walk_images(root)]
        return SampleList(root, tuple(paths), np.full(len(paths), -1, np.int64), ())
    paths, labels, classes = [], [], []
    for entry in class_dirs:
        images = _walk_images(Path(entry.path))
        if not images:
            continue  # an empty class folder is no class
        classes.append(entry.name)
        paths += [p.relative_to(root).as_posix() for p in images]
        labels += [len(classes) - 1] * len(images)
    return SampleList(root, tuple(paths), np.asarray(labels, np.int64), tuple(classes))


def _from_remote_folder(url: str, options: Mapping[str, Any]) -> SampleList:
    """A folder at a URL, laid out like a local one; one recursive listing gives names, sizes and versions."""
    fs, base = remote.filesystem(url, options)
    try:
        fs.invalidate_cache(base)  # fsspec keeps listings per process: a rerun must see what changed since
        found = fs.find(base, detail=True)
    except OSError as exc:
        raise remote.access_error(url, exc, options) from None
    base = base.rstrip("/")
    root = remote.clean_url(url).rstrip("/")
    entries = []  # (relative path, info)
    for name, info in found.items():
        rel = name[len(base) + 1:] if name.startswith(base + "/") else None
        if not rel or any(part.startswith(".") for part in rel.split("/")) or not _is_image(rel):
            continue
        entries.append((rel, info))
    top = sorted(rel for rel, _ in entries if "/" not in rel)
    nested = sorted({rel.split("/", 1)[0] for rel, _ in entries if "/" in rel})
    if top and nested:
        raise UsageError(
            f"input folder {root!r} mixes images ({top[0]}, ...) with subfolders ({nested[0]}, ...); "
            "use class subfolders only, or a flat folder, or a CSV list"
        )
    info_of = dict(entries)
    if nested:  # classes in name order, images sorted within each, as for a local folder
        order = sorted(entries, key=lambda e: (e[0].split("/", 1)[0], e[0]))
        classes = tuple(nested)
        index = {c: i for i, c in enumerate(classes)}
        labels = np.asarray([index[rel.split("/", 1)[0]] for rel, _ in order], np.int64)
    else:
        order, classes = sorted(entries, key=lambda e: e[0]), ()
        labels = np.full(len(order), -1, np.int64)
    paths = tuple(rel for rel, _ in order)
    ids = [remote.identity_of(info_of[p]) for p in paths]
    known = {"size": np.asarray([i[0] for i in ids], np.int64), "mtime": np.asarray([i[1] for i in ids], np.int64),
             "version": np.asarray([i[2] for i in ids], dtype=object)}
    return SampleList(root, paths, labels, classes, known=known, storage_options=options)


def _list_path(cell: str, root: Path | str) -> tuple[str, str | None]:
    """A list's path cell as stored (relative to the list's folder where inside it; URLs without query),
    and where to read it when that differs."""
    text = remote.local_path(cell.strip())
    if remote.is_url(text):
        clean = remote.clean_url(text)
        return clean, (text if clean != text else None)
    if isinstance(root, str):  # a list at a URL: relative paths are inside its folder
        if os.path.isabs(text):
            return text, None
        return posixpath.normpath(text), None
    p = Path(text)
    if p.is_absolute():
        try:
            p = p.relative_to(root)
        except ValueError:
            pass  # stays absolute: outside the list's folder
    return p.as_posix(), None


def _list_root(location: str) -> Path | str:
    if remote.is_url(location):
        return remote.clean_url(location).rsplit("/", 1)[0]
    return Path(remote.local_path(location)).resolve().parent


def _csv_rows(location: str, options: Mapping[str, Any]):
    """(line number, header or row) of a CSV, local or remote, streamed."""
    try:
        raw = remote.open_file(location, options)
    except OSError as exc:
        raise remote.access_error(location, exc, options) from None
    with raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
        yield from enumerate(csv.reader(f), start=1)


def _from_csv(location: str, options: Mapping[str, Any]) -> SampleList:
    shown = remote.clean_url(location)
    root = _list_root(location)
    rows = _csv_rows(location, options)
    first = next(rows, None)
    if first is None:
        raise UsageError(f"CSV {shown!r} is empty; give a header 'path[,label]' and one row per image")
    header = [h.strip().lower() for h in first[1]]
    if "path" not in header:
        raise UsageError(f"CSV {shown!r} has columns {first[1]}, needs a 'path' column (and optionally 'label')")
    ip = header.index("path")
    il = header.index("label") if "label" in header else None
    paths, names, reads = [], [], {}
    for lineno, row in rows:
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) <= ip:
            raise UsageError(f"CSV {shown!r} line {lineno} has no path: {row}")
        path, read = _list_path(row[ip], root)
        if read is not None:
            reads[len(paths)] = read
        paths.append(path)
        names.append(row[il].strip() if il is not None and il < len(row) else "")  # no label: -1
    return _labelled(root, paths, names, reads, options)


def _from_parquet(location: str, options: Mapping[str, Any]) -> SampleList:
    """A Parquet list, read LIST_CHUNK rows at a time (lists of millions of images)."""
    shown = remote.clean_url(location)
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UsageError(f"reading the Parquet list {shown!r} needs pyarrow: pip install '{remote.CLOUD_EXTRA}'") \
            from None
    root = _list_root(location)
    try:
        raw = remote.open_file(location, options)
    except OSError as exc:
        raise remote.access_error(location, exc, options) from None
    paths, names, reads = [], [], {}
    with raw:
        try:
            pf = pq.ParquetFile(raw)
        except Exception as exc:  # noqa: BLE001 - pyarrow's errors for a file that is not Parquet vary
            raise UsageError(f"{shown!r} is not a Parquet file ({remote.describe_error(exc, options)})") from None
        columns = {name.lower(): name for name in pf.schema_arrow.names}
        if "path" not in columns:
            raise UsageError(f"Parquet list {shown!r} has columns {pf.schema_arrow.names}, needs a 'path' column "
                             "(and optionally 'label')")
        wanted = [columns["path"]] + ([columns["label"]] if "label" in columns else [])
        for batch in pf.iter_batches(batch_size=LIST_CHUNK, columns=wanted):
            cells = batch.column(0).to_pylist()
            labels = batch.column(1).to_pylist() if len(wanted) > 1 else [None] * len(cells)
            for cell, label in zip(cells, labels, strict=True):
                if cell is None or not str(cell).strip():
                    continue
                path, read = _list_path(str(cell), root)
                if read is not None:
                    reads[len(paths)] = read
                paths.append(path)
                names.append("" if label is None else str(label).strip())
    return _labelled(root, paths, names, reads, options)


def _labelled(root: Path | str, paths: list[str], names: list[str], reads: dict, options: Mapping[str, Any],
              **extra) -> SampleList:
    """A SampleList from label names ('' for none): classes sorted, numerically when all are integers."""
    classes = tuple(_label_order({n for n in names if n}))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index.get(n, -1) for n in names], np.int64)
    return SampleList(root, tuple(paths), labels, classes, reads=reads, storage_options=options, **extra)


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
    return _labelled(root_out, paths, names, {}, options, shards=tuple(locations),
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


def _label_order(names: set[str]) -> list[str]:
    """Class names sorted; numerically when all are integers (so '10' follows '9')."""
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def _kind(location: str) -> str:
    name = remote.clean_url(location).lower()
    if name.endswith(LIST_SUFFIXES):
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
            return _from_remote_folder(source, options)
        if kind == "csv":
            return _from_csv(source, options)
        if kind == "parquet":
            return _from_parquet(source, options)
        raise UsageError(f"input {remote.clean_url(source)!r} is neither a folder nor a .csv, .parquet or .tar file; "
                         "give an image folder, a list, or tar shards")
    path = Path(remote.local_path(source)).expanduser()
    if not path.exists():
        raise UsageError(f"input {str(path)!r} does not exist; give an image folder or a CSV list")
    if path.is_dir():
        return _from_folder(path.resolve())
    if kind == "csv":
        return _from_csv(str(path), options)
    if kind == "parquet":
        return _from_parquet(str(path), options)
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
            f"input {remote.clean_url(text)!r} holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return samples
