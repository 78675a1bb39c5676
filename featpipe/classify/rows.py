"""Rows to learn from: in memory, or read from the feature file block by block.

The PyTorch heads, the learning-rate finder and evaluation take a
:class:`Rows`: labelled feature vectors that come in mini-batches (shuffled,
for training) or in blocks (in order, for statistics and predictions).

* :class:`ArrayRows` holds the features in memory.
* :class:`FileRows` reads them from the HDF5 file as it goes, so a feature file
  larger than memory trains with memory bounded by the batch size. An epoch
  visits small blocks of consecutive file rows in random order and shuffles
  rows within a buffer of ``buffer_batches`` batches: a shuffle buffer, as
  tf.data and WebDataset use, fed from many distant parts of the file at once.

Labels are kept in memory (one integer per row); features never are.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import torch

from ..errors import UsageError

Block = tuple[np.ndarray, np.ndarray]  # (features float32 (n, D), labels (n,))


class Rows:
    """Labelled rows; subclasses say where the features live."""

    labels: np.ndarray
    n_features: int

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, positions: np.ndarray) -> Rows:  # pragma: no cover - abstract
        """The rows at ``positions`` (indices into this set)."""
        raise NotImplementedError

    def with_labels(self, labels: np.ndarray) -> Rows:
        """The same rows with other labels (one per row, same order)."""
        return replace(self, labels=np.asarray(labels))

    def map(self, transform: Callable[[np.ndarray], np.ndarray]) -> Rows:  # pragma: no cover - abstract
        """These rows with ``transform`` applied to their features (a fitted scaler, for example)."""
        raise NotImplementedError

    def batches(self, batch_size: int, gen: torch.Generator) -> Iterator[Block]:  # pragma: no cover - abstract
        """One epoch of shuffled mini-batches; every row exactly once."""
        raise NotImplementedError

    def blocks(self) -> Iterator[Block]:  # pragma: no cover - abstract
        """Every row once, in a fixed order, a bounded block at a time."""
        raise NotImplementedError

    def read(self) -> np.ndarray:
        """All features in memory, in the order of :meth:`blocks` (and of ``labels``)."""
        return np.concatenate([x for x, _ in self.blocks()]) if len(self) else np.zeros((0, self.n_features), np.float32)


@dataclass(frozen=True, eq=False)
class ArrayRows(Rows):
    """Rows ``index`` of an in-memory matrix ``X``."""

    X: np.ndarray
    labels: np.ndarray
    index: np.ndarray | None = None  # None: every row of X, in order

    @property
    def n_features(self) -> int:
        return self.X.shape[1]

    def _index(self) -> np.ndarray:
        return np.arange(len(self.X)) if self.index is None else self.index

    def subset(self, positions: np.ndarray) -> ArrayRows:
        return ArrayRows(self.X, self.labels[positions], self._index()[positions])

    def map(self, transform: Callable[[np.ndarray], np.ndarray]) -> ArrayRows:
        return ArrayRows(np.asarray(transform(self.read()), dtype=np.float32), self.labels)

    def batches(self, batch_size: int, gen: torch.Generator) -> Iterator[Block]:
        perm = torch.randperm(len(self), generator=gen).numpy()
        index = self._index()
        for i in range(0, len(perm), batch_size):
            take = perm[i:i + batch_size]
            yield self.X[index[take]], self.labels[take]

    def blocks(self) -> Iterator[Block]:
        yield self.read(), self.labels

    def read(self) -> np.ndarray:
        return self.X if self.index is None else self.X[self.index]


@dataclass(frozen=True, eq=False)
class FileRows(Rows):
    """File rows ``rows`` (sorted) of dataset ``dataset`` in the HDF5 file ``path``.

    ``transform`` is applied to every block read (a fitted scaler, for
    example). A row with NaN or infinite features is a usage error that names
    its image.
    """

    path: Path
    dataset: str
    rows: np.ndarray
    labels: np.ndarray
    n_features: int
    block_rows: int = 1024
    buffer_batches: int = 8
    transform: Callable[[np.ndarray], np.ndarray] | None = None

    def subset(self, positions: np.ndarray) -> FileRows:
        order = np.argsort(self.rows[positions], kind="stable")
        take = np.asarray(positions)[order]
        return replace(self, rows=self.rows[take], labels=self.labels[take])

    def load(self) -> ArrayRows:
        """These rows in memory: one read when they fill most of the span they cover, else block by block."""
        if len(self.rows) and 2 * len(self.rows) >= self.rows[-1] - self.rows[0] + 1:
            with h5py.File(self.path, "r") as f:
                return ArrayRows(self._read(f[self.dataset], 0, len(self.rows)), self.labels)
        return ArrayRows(self.read(), self.labels)

    def map(self, transform: Callable[[np.ndarray], np.ndarray]) -> FileRows:
        """These rows, with ``transform`` applied after any earlier one."""
        before = self.transform
        return replace(self, transform=transform if before is None else (lambda x: transform(before(x))))

    def _read(self, ds: h5py.Dataset, lo: int, hi: int) -> np.ndarray:
        """Features of self.rows[lo:hi] (one contiguous read of the span they cover)."""
        rows = self.rows[lo:hi]
        x = ds[int(rows[0]): int(rows[-1]) + 1]
        # One contiguous read, then the rows: for a sparse subset (a validation
        # split) this reads more than needed, yet measured 5x faster than h5py's
        # point selection of the same rows.
        x = x[rows - rows[0]] if len(x) != len(rows) else x
        x = np.asarray(x, dtype=np.float32)
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            row = int(rows[np.flatnonzero(bad)[0]])
            where = repr(_decode_one(ds.file["samples/path"][row]))
            raise UsageError(
                f"{int(bad.sum())} valid rows of {self.path.name} hold NaN or infinite features (first: {where}); "
                "extract again, or use --dtype float32 if float16 overflowed"
            )
        return self.transform(x).astype(np.float32, copy=False) if self.transform is not None else x

    def _spans(self, block_rows: int) -> np.ndarray:
        """Boundaries (into self.rows) of runs of rows that share a block of ``block_rows`` file rows."""
        if not len(self.rows):
            return np.zeros(1, dtype=np.int64)
        block = self.rows // block_rows
        return np.concatenate([[0], np.flatnonzero(np.diff(block)) + 1, [len(self.rows)]])

    def blocks(self) -> Iterator[Block]:
        bounds = self._spans(self.block_rows)
        with h5py.File(self.path, "r") as f:
            ds = f[self.dataset]
            for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
                yield self._read(ds, lo, hi), self.labels[lo:hi]

    def batches(self, batch_size: int, gen: torch.Generator) -> Iterator[Block]:
        # Small blocks of consecutive file rows, drawn in random order, fill one
        # preallocated shuffle buffer of buffer_batches batches; when it is full,
        # whole batches leave it in random order and the remainder (less than a
        # batch) waits for the next fill. Blocks of batch_size / 8 rows put about
        # 8 * buffer_batches distant parts of the file in every buffer, so even a
        # file sorted by class (an ImageFolder) gives batches of many classes.
        block = max(16, batch_size // 8)
        bounds = self._spans(block)
        order = torch.randperm(len(bounds) - 1, generator=gen).numpy()
        capacity = self.buffer_batches * batch_size
        # Below capacity before a block arrives, so never more than capacity + block rows.
        buf_x = np.empty((capacity + block, self.n_features), np.float32)
        buf_y = np.empty(capacity + block, self.labels.dtype)
        held = 0
        with h5py.File(self.path, "r") as f:
            ds = f[self.dataset]
            for b in order:
                lo, hi = bounds[b], bounds[b + 1]
                buf_x[held:held + hi - lo] = self._read(ds, lo, hi)
                buf_y[held:held + hi - lo] = self.labels[lo:hi]
                held += hi - lo
                if held >= capacity:
                    perm = torch.randperm(held, generator=gen).numpy()
                    cut = held // batch_size * batch_size
                    for i in range(0, cut, batch_size):
                        take = perm[i:i + batch_size]
                        yield buf_x[take], buf_y[take]  # copies: the buffer is refilled below
                    rest = perm[cut:]
                    buf_x[:len(rest)], buf_y[:len(rest)] = buf_x[rest], buf_y[rest]
                    held = len(rest)
        perm = torch.randperm(held, generator=gen).numpy()
        for i in range(0, held, batch_size):
            take = perm[i:i + batch_size]
            yield buf_x[take], buf_y[take]


def _decode_one(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def labelled_file_rows(fs, layer: str, role: str = "training", **kw) -> tuple[FileRows, int]:
    """The valid, labelled rows of ``layer`` in ``fs`` (features left in the file), and how many were skipped.

    Raises:
        UsageError: the file has no labels.
    """
    if not fs.classes or (fs.y < 0).all():
        raise UsageError(f"{fs.path.name} ({role}) has no labels; extract from class folders or a CSV with a label column")
    keep = fs.valid & (fs.y >= 0)
    rows = np.flatnonzero(keep)
    return FileRows(fs.path, f"features/{layer}", rows, fs.y[rows], fs.dim(layer), **kw), int((~keep).sum())


def with_views(rows: ArrayRows, file_rows: np.ndarray, views: np.ndarray, source: np.ndarray,
               labels: np.ndarray) -> ArrayRows:
    """``rows`` plus the augmented views of their own images, and of no other image.

    ``file_rows[p]`` is the feature-file row of position ``p`` of the set ``rows`` was cut from (rows
    indexes that set); ``views`` are the file's augmented features and ``source`` each view's file row;
    ``labels`` the file's labels. The split was made by image, so a view joins its image's side of it:
    no view of a validation or test image is ever trained on.
    """
    own = file_rows[rows._index()]
    take = np.flatnonzero(np.isin(source, own))
    return ArrayRows(np.concatenate([rows.read(), np.asarray(views[take], dtype=np.float32)]),
                     np.concatenate([rows.labels, labels[source[take]]]))


def predict_proba_rows(model, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
    """``model.predict_proba`` over ``rows`` a block at a time: (probabilities, labels), in the same order."""
    probas, labels = [], []
    for x, y in rows.blocks():
        probas.append(model.predict_proba(x))
        labels.append(y)
    n_classes = len(model.classes_)
    if not probas:
        return np.zeros((0, n_classes)), np.zeros(0, dtype=np.int64)
    return np.concatenate(probas), np.concatenate(labels)
