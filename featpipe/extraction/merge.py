"""Merge: assemble the final feature file from finished shards, then rename it into place.

Only one process merges (the one holding the output's lock), and the final
name appears only when the whole file is written, so readers see the old file
or the new one, never a broken one. Memory stays at one shard at a time.
"""
from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from .. import store
from .sources import SampleList
from .writer import atomic_replace


def merge_shards(
    shards: list[Path],
    output: Path,
    samples: SampleList,
    attrs: dict,
    layer_attrs: dict[str, dict],
    dtype: str,
) -> None:
    """Write ``output`` from ``shards`` (in partition order)."""
    n = len(samples)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    valid = np.zeros(n, dtype=bool)
    err_index: list[int] = []
    err_reason: list[str] = []
    try:
        with h5py.File(tmp, "w") as f:
            for key, value in attrs.items():
                f.attrs[key] = value
            feats = f.create_group("features")
            datasets: dict[str, h5py.Dataset] = {}
            for shard in shards:
                with h5py.File(shard, "r") as s:
                    start, rows = int(s.attrs["start"]), int(s.attrs["rows"])
                    for name, ds in s["features"].items():
                        if name not in datasets:
                            dim = ds.shape[1]
                            datasets[name] = feats.create_dataset(
                                name, shape=(n, dim), dtype=dtype,
                                chunks=store.row_chunks(n, dim, np.dtype(dtype).itemsize),
                            )
                            datasets[name].attrs.update({"dim": dim, **layer_attrs[name]})
                        datasets[name][start:start + rows] = ds[:]
                    valid[start:start + rows] = s["valid"][:]
                    err_index += s["error_index"][:].tolist()
                    err_reason += [r.decode() if isinstance(r, bytes) else r for r in s["error_reason"][:]]
            store.write_samples(f, samples.paths, samples.labels, valid, samples.classes)
            order = np.argsort(err_index, kind="stable")
            err_index = [err_index[i] for i in order]
            store.write_errors(
                f, err_index, [samples.paths[i] for i in err_index], [err_reason[i] for i in order]
            )
        atomic_replace(tmp, output)
    finally:
        if tmp.exists():
            tmp.unlink()
