"""Read: turn the user's input into an ordered list of samples.

Three layouts: an ImageFolder tree (class subfolders give labels), a CSV with
``path[,label]`` columns, or a flat folder of unlabelled images. The order is
deterministic (sorted), so row i means the same image in every run.
"""
from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})


@dataclass(frozen=True, eq=False)
class SampleList:
    """The samples of one extraction; row i of the feature file is sample i."""

    root: Path
    paths: tuple[str, ...]  # POSIX paths relative to root (or absolute when outside it)
    labels: np.ndarray  # int64, -1 where unlabelled
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def digest(self) -> str:
        """Identifies the list: a resumed run must see the very same samples."""
        h = hashlib.sha256()
        for path, label in zip(self.paths, self.labels.tolist(), strict=True):
            h.update(f"{path}\0{label}\n".encode())
        h.update("\0".join(self.classes).encode())
        return h.hexdigest()


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


def _from_csv(csv_path: Path) -> SampleList:
    root = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise UsageError(f"CSV {str(csv_path)!r} is empty; give a header 'path[,label]' and one row per image")
    header = [h.strip().lower() for h in rows[0]]
    if "path" not in header:
        raise UsageError(
            f"CSV {str(csv_path)!r} has columns {rows[0]}, needs a 'path' column (and optionally 'label')"
        )
    ip = header.index("path")
    il = header.index("label") if "label" in header else None
    paths, names = [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) <= ip:
            raise UsageError(f"CSV {str(csv_path)!r} line {lineno} has no path: {row}")
        p = Path(row[ip].strip())
        if p.is_absolute():
            try:
                p = p.relative_to(root)
            except ValueError:
                pass  # stays absolute: outside the CSV's folder
        paths.append(p.as_posix())
        names.append(row[il].strip() if il is not None and il < len(row) else "")  # no label: -1
    classes = tuple(_label_order({n for n in names if n}))
    index = {c: i for i, c in enumerate(classes)}
    labels = np.asarray([index.get(n, -1) for n in names], np.int64)
    return SampleList(root, tuple(paths), labels, classes)


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


def discover(source: str | os.PathLike) -> SampleList:
    """List the samples of ``source``: an ImageFolder tree, a flat folder, or a CSV file.

    Raises:
        UsageError: the input is missing, of an unknown kind, or holds no image.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise UsageError(f"input {str(path)!r} does not exist; give an image folder or a CSV list")
    if path.is_dir():
        samples = _from_folder(path.resolve())
    elif path.suffix.lower() == ".csv":
        samples = _from_csv(path.resolve())
    else:
        raise UsageError(
            f"input {str(path)!r} is neither a folder nor a .csv file; give an image folder or a CSV list"
        )
    _check_names(samples)
    if not len(samples):
        raise UsageError(
            f"input {str(path)!r} holds no images (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return samples
