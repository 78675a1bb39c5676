"""Merge: assemble the final feature file, then rename it into place.

Each row comes from where its features already are: the previous feature file
(rows whose image is unchanged, for the layers it has) or a shard (rows computed
by this run or an interrupted one). Only one process merges (the one holding the
output's lock), and the final name appears only when the whole file is written,
so readers see the old file or the new one, never a broken one. Memory stays at
one shard, or one block of copied rows, at a time.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .. import store
from .._util import atomic_write
from .sources import SampleList
from .writer import Shard

COPY_BYTES = 64 << 20  # rows copied from the previous file at a time


@dataclass
class Sources:
    """Where each output row's features are.

    ``old_rows[i]`` is row i's row in ``old_file`` (-1: none), used for the layers in ``old_layers``;
    ``shards`` lists (shard, rows in it, output rows); every other layer of a row comes from its shard.
    """

    n: int
    old_file: Path | None = None
    old_rows: np.ndarray | None = None
    old_layers: tuple[str, ...] = ()
    shards: list[tuple[Shard, np.ndarray, np.ndarray]] = field(default_factory=list)


class ViewRows:
    """A /augmented/<layer> dataset (rows = images x K) addressed by image row: image row r is rows
    r*K .. r*K+K-1, read and written as one (K*D)-wide row, the layout shards hold them in."""

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
    n = sources.n
    valid = np.ones(n, dtype=bool)
    reasons: dict[int, str] = {}
    covered = np.zeros(n, dtype=bool)
    old = h5py.File(sources.old_file, "r") if sources.old_file is not None else None
    try:
        # The previous file is read while the new one is written; it is replaced only when complete.
        with atomic_write(output) as tmp, h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            feats = f.create_group("features")
            if old is not None:
                has_old = np.flatnonzero(sources.old_rows >= 0)
                src = sources.old_rows[has_old]
                valid[has_old] &= old["samples/valid"][:][src]
                old_reason = dict(zip(old["errors/index"][:].tolist(), store.decode_strings(old["errors/reason"][:]),
                                      strict=True))
                for row, j in zip(has_old.tolist(), src.tolist(), strict=True):
                    if j in old_reason:
                        reasons[row] = old_reason[j]
                covered[has_old] = True
            datasets = {}

            def dataset(name: str, dim: int) -> h5py.Dataset | ViewRows:
                if name not in datasets:
                    views = layers[name].get("views")
                    if views:  # augmented views: (images x K, D) at the file's root, see ViewRows
                        d = dim // views
                        ds = f.create_dataset(name, shape=(n * views, d), dtype=dtype, fillvalue=np.nan,
                                              chunks=store.row_chunks(n * views, d, np.dtype(dtype).itemsize))
                        ds.attrs.update({"dim": d, **layers[name]})
                        datasets[name] = ViewRows(ds, views)
                    else:
                        datasets[name] = feats.create_dataset(
                            name, shape=(n, dim), dtype=dtype, fillvalue=np.nan,
                            chunks=store.row_chunks(n, dim, np.dtype(dtype).itemsize),
                        )
                        datasets[name].attrs.update({"dim": dim, **layers[name]})
                return datasets[name]

            def old_dataset(name: str) -> h5py.Dataset | ViewRows:
                views = layers[name].get("views")
                return ViewRows(old[name], views) if views else old["features"][name]

            for name in layers:  # the file's datasets in the order asked for
                if old is not None and name in sources.old_layers:
                    ds_old = old_dataset(name)
                    ds = dataset(name, ds_old.shape[1])
                    block = max(1, COPY_BYTES // max(1, ds_old.shape[1] * ds_old.dtype.itemsize))
                    for d, s, k in runs(has_old, src):
                        for o in range(0, k, block):
                            m = min(block, k - o)
                            ds[d + o:d + o + m] = ds_old[s + o:s + o + m]
            for shard, in_shard, out_rows in sources.shards:
                with shard.open() as s:
                    v = s["valid"][:][in_shard]
                    valid[out_rows] &= v
                    covered[out_rows] = True
                    errors = dict(zip(s["error_index"][:].tolist(), store.decode_strings(s["error_reason"][:]),
                                      strict=True))
                    for row, j in zip(out_rows.tolist(), in_shard.tolist(), strict=True):
                        if j in errors:
                            reasons[row] = errors[j]
                    for name in layers:
                        if name not in s["features"]:
                            continue
                        ds_s = s["features"][name]
                        values = ds_s[:][in_shard]
                        ds = dataset(name, ds_s.shape[1])
                        from_old = (sources.old_rows[out_rows] >= 0) if old is not None and name in sources.old_layers \
                            else np.zeros(len(out_rows), bool)
                        take = np.flatnonzero(~from_old)
                        for d, s_, k in runs(out_rows[take], take):
                            ds[d:d + k] = values[s_:s_ + k]
            if not covered.all():
                raise RuntimeError(f"merge: {int((~covered).sum())} rows have no source")  # a bug, not a user error
            missing = [name for name in layers if name not in datasets]
            if missing:
                raise RuntimeError(f"merge: no rows for layers {missing}")
            # A row that failed in any source fails in every layer: NaN throughout.
            bad = np.flatnonzero(~valid)
            for ds in datasets.values():
                for d, _, k in runs(bad, bad):
                    ds[d:d + k] = np.nan
            views = {layers[name]["views"] for name in layers if layers[name].get("views")}
            if views:  # which image each augmented row is a view of
                f.create_dataset(f"{store.AUGMENTED}/source_index", data=np.repeat(np.arange(n, dtype=np.int64),
                                                                                    views.pop()))
            store.write_samples(f, samples.paths, samples.labels, valid, samples.classes)
            store.write_images(f, images)
            err_index = bad.tolist()
            store.write_errors(f, err_index, [samples.paths[i] for i in err_index],
                               [reasons.get(i, "failed") for i in err_index])
    finally:
        if old is not None:
            old.close()
    return valid, bad.tolist(), [reasons.get(i, "failed") for i in bad.tolist()]
