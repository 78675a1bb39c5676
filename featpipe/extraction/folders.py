"""Image folders as samples, local or at an fsspec URL: an ImageFolder tree (class subfolders give labels, in
name order) or a flat folder of unlabelled images, each sorted, hidden names skipped."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .. import remote
from ..errors import UsageError
from .samples import SampleList

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk_images(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in filenames if is_image(f) and not f.startswith(".")]
    return sorted(found, key=lambda p: p.as_posix())


def from_folder(root: Path) -> SampleList:
    entries = sorted((e for e in os.scandir(root) if not e.name.startswith(".")), key=lambda e: e.name)
    class_dirs = [e for e in entries if e.is_dir()]
    top_images = [e for e in entries if e.is_file() and is_image(e.name)]
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


def from_remote_folder(url: str, options: Mapping[str, Any]) -> SampleList:
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
        if not rel or any(part.startswith(".") for part in rel.split("/")) or not is_image(rel):
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
