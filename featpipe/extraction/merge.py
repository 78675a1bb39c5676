"""Merge: assemble the final feature file, then rename it into place.

Each row comes from where its features already are: the previous feature file
(rows whose image is unchanged, for the layers it has) or a part (rows computed
by this run or an interrupted one). Only one process merges (the one holding the
output's lock), and the final name appears only when the whole file is written,
so readers see the old file or the new one, never a broken one. Memory stays at
one part, or one block of copied rows, at a time.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .._util import atomic_write
from ..files import features as file_format
from .parts import Part
from .samples import SampleList

COPY_BYTES = 64 << 20  # rows copied from the previous file at a time


@dataclass
class Sources:
    """Where each output row's features are.

    ``old_rows[i]`` is row i's row in ``old_file`` (-1: none), used for the layers in ``old_layers``;
    ``parts`` lists (part, rows in it, output rows); every other layer of a row comes from its part.
    """

    n: int
    old_file: Path | None = None
    old_rows: np.ndarray | None = None
    old_layers: tuple[str, ...] = ()
    parts: list[tuple[Part, np.ndarray, np.ndarray]] = field(default_factory=list)


class ViewRows:
    """A /augmented/<layer> dataset (rows = images x K) addressed by image row: image row r is rows
    r*K .. r*K+K-1, read and written as one (K*D)-wide row, the layout parts hold them in."""

    def __init__(self, ds: h5py.Dataset, views: int):
        self.ds, self.views = ds, views
        self.shape = (ds.shape[0] // views, ds.shape[1] * views)
        self.dtype = ds.dtype

    def __getitem__(self, rows: slice) -> np.ndarray:
        return self.ds[rows.start * self.views:rows.stop * self.views].reshape(-1, self.shape[1])

    def __setitem__(self, rows: slice, values) -> None:
        lo, hi = rows.start * self.views, rows.stop * self.views
        self.ds[lo:hi] = values if np.isscalar(values) else np.asarray(values).reshape(hi - lo, -1)


def runs(dst: np.ndarray, src: np.ndarray) -> Iterator[tuple[int, int, int]]:
    """(dst_start, src_start, length) for each run where both index arrays advance by one."""
    if len(dst) == 0:
        return
    breaks = np.flatnonzero((np.diff(dst) != 1) | (np.diff(src) != 1)) + 1
    for a, b in zip(np.r_[0, breaks], np.r_[breaks, len(dst)], strict=True):
        yield int(dst[a]), int(src[a]), int(b - a)


def merge(output: Path, samples: SampleList, attrs: dict, layers: dict[str, dict], dtype: str, images: dict,
          sources: Sources) -> tuple[np.ndarray, list[int], list[str]]:
    """Write ``output`` for ``samples`` from ``sources``; ``layers`` maps each layer to its attributes (pool,
    node), in order. Returns valid, and the failed rows with their reasons."""
    old = h5py.File(sources.old_file, "r") if sources.old_file is not None else None
    try:
        # The previous file is read while the new one is written; it is replaced only when complete.
        with atomic_write(output) as tmp, h5py.File(tmp, "w") as f:
            f.attrs.update(attrs)
            out = _NewFile(f, sources, layers, dtype)
            if old is not None:
                out.copy_previous(old)
            for part, in_part, out_rows in sources.parts:
                with part.open() as s:
                    out.copy_part(s, in_part, out_rows)
            bad = out.finish(samples, images)
    finally:
        if old is not None:
            old.close()
    return out.valid, bad.tolist(), [out.reasons.get(i, "failed") for i in bad.tolist()]


class _NewFile:
    """The feature file being written: its datasets, made on first use in the order asked for, and what the
    sources said of each row (valid, why not, whether any source had it)."""

    def __init__(self, f: h5py.File, sources: Sources, layers: dict[str, dict], dtype: str):
        self.f, self.sources, self.layers, self.dtype = f, sources, layers, dtype
        self.n = sources.n
        self.feats = f.create_group("features")
        self.datasets: dict[str, h5py.Dataset | ViewRows] = {}
        self.valid = np.ones(self.n, dtype=bool)
        self.reasons: dict[int, str] = {}
        self.covered = np.zeros(self.n, dtype=bool)

    def dataset(self, name: str, dim: int) -> h5py.Dataset | ViewRows:
        if name not in self.datasets:
            n, dtype, attrs = self.n, self.dtype, self.layers[name]
            views = attrs.get("views")
            if views:  # augmented views: (images x K, D) at the file's root, see ViewRows
                d = dim // views
                ds = self.f.create_dataset(name, shape=(n * views, d), dtype=dtype, fillvalue=np.nan,
                                           chunks=file_format.row_chunks(n * views, d, np.dtype(dtype).itemsize))
                ds.attrs.update({"dim": d, **attrs})
                self.datasets[name] = ViewRows(ds, views)
            else:
                ds = self.feats.create_dataset(name, shape=(n, dim), dtype=dtype, fillvalue=np.nan,
                                               chunks=file_format.row_chunks(n, dim, np.dtype(dtype).itemsize))
                ds.attrs.update({"dim": dim, **attrs})
                self.datasets[name] = ds
        return self.datasets[name]

    def _keep(self, rows: np.ndarray, valid: np.ndarray, reasons: dict, source_rows: np.ndarray) -> None:
        """What a source says of ``rows`` (its ``source_rows``): valid or not, and why not."""
        self.valid[rows] &= valid
        self.covered[rows] = True
        for row, j in zip(rows.tolist(), source_rows.tolist(), strict=True):
            if j in reasons:
                self.reasons[row] = reasons[j]

    def copy_previous(self, old: h5py.File) -> None:
        """The previous file's rows of unchanged images, for the layers it has, in blocks of COPY_BYTES."""
        has_old = np.flatnonzero(self.sources.old_rows >= 0)
        src = self.sources.old_rows[has_old]
        self._keep(has_old, old["samples/valid"][:][src],
                   dict(zip(old["errors/index"][:].tolist(), file_format.decode_strings(old["errors/reason"][:]), strict=True)),
                   src)
        for name in self.layers:  # the file's datasets in the order asked for
            if name not in self.sources.old_layers:
                continue
            views = self.layers[name].get("views")
            ds_old = ViewRows(old[name], views) if views else old["features"][name]
            ds = self.dataset(name, ds_old.shape[1])
            block = max(1, COPY_BYTES // max(1, ds_old.shape[1] * ds_old.dtype.itemsize))
            for d, s, k in runs(has_old, src):
                for o in range(0, k, block):
                    m = min(block, k - o)
                    ds[d + o:d + o + m] = ds_old[s + o:s + o + m]

    def copy_part(self, s: h5py.File, in_part: np.ndarray, out_rows: np.ndarray) -> None:
        """A part's rows ``in_part`` as rows ``out_rows``, for every layer the previous file does not give them."""
        self._keep(out_rows, s["valid"][:][in_part],
                   dict(zip(s["error_index"][:].tolist(), file_format.decode_strings(s["error_reason"][:]), strict=True)),
                   in_part)
        sources = self.sources
        for name in self.layers:
            if name not in s["features"]:
                continue
            ds_s = s["features"][name]
            values = ds_s[:][in_part]
            ds = self.dataset(name, ds_s.shape[1])
            from_old = (sources.old_rows[out_rows] >= 0) if sources.old_file is not None \
                and name in sources.old_layers else np.zeros(len(out_rows), bool)
            take = np.flatnonzero(~from_old)
            for d, s_, k in runs(out_rows[take], take):
                ds[d:d + k] = values[s_:s_ + k]

    def finish(self, samples: SampleList, images: dict) -> np.ndarray:
        """Failed rows NaN in every layer, then the samples, the images' identity and the errors; the failed rows."""
        if not self.covered.all():  # a bug, not a user error
            raise RuntimeError(f"merge: {int((~self.covered).sum())} rows have no source")
        missing = [name for name in self.layers if name not in self.datasets]
        if missing:
            raise RuntimeError(f"merge: no rows for layers {missing}")
        # A row that failed in any source fails in every layer: NaN throughout.
        bad = np.flatnonzero(~self.valid)
        for ds in self.datasets.values():
            for d, _, k in runs(bad, bad):
                ds[d:d + k] = np.nan
        views = {attrs["views"] for attrs in self.layers.values() if attrs.get("views")}
        if views:  # which image each augmented row is a view of
            self.f.create_dataset(f"{file_format.AUGMENTED}/source_index",
                                  data=np.repeat(np.arange(self.n, dtype=np.int64), views.pop()))
        file_format.write_samples(self.f, samples.paths, samples.labels, self.valid, samples.classes)
        file_format.write_images(self.f["samples"], images)
        file_format.write_errors(self.f, bad.tolist(), [samples.paths[i] for i in bad.tolist()],
                           [self.reasons.get(i, "failed") for i in bad.tolist()])
        return bad
