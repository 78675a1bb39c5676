"""The feature file, read: ``FeatureSet`` behind ``featpipe.load()``, and ``write_arrays`` for features made
elsewhere. Its format (constants, the version check, the writers) is files/features.py.

One HDF5 file per extraction; row i is sample i in every dataset, always. See
docs/feature-file.md for the layout. The reader opens the file for each read and closes
it again, so a notebook never holds a handle that blocks a later run.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .errors import FormatError, UsageError
from .files.features import (
    AUGMENTED,
    FORMAT,
    FORMAT_VERSION,
    augmented_name,
    check_format,
    decode_strings,
    row_chunks,
    write_errors,
    write_samples,
)


def write_arrays(path: str | os.PathLike, X: np.ndarray, y: np.ndarray, classes: list[str],
                 layer: str = "pooled", model: str = "external", block_rows: int = 65536) -> Path:
    """A feature file (format v1) around arrays: features made elsewhere, tests and benchmarks.

    ``X`` may be any array-like that slices by rows (an h5py dataset, a memmap): it is
    copied ``block_rows`` at a time. The extractor fields name ``model`` and no weights,
    so model files fitted on it refuse features of a real extractor.
    """
    path = Path(path)
    n, dim = X.shape
    with h5py.File(path, "w") as f:
        f.attrs.update({
            "format": FORMAT, "format_version": FORMAT_VERSION, "featpipe_version": "arrays", "created": "",
            "model": model, "weights_source": "none", "weights_sha256": "none", "data_config": "{}",
            "config_hash": "arrays", "precision": "fp32", "dtype": "float32", "torch_version": "n/a",
            "timm_version": "n/a", "image_root": "n/a", "config": "{}",
        })
        ds = f.create_dataset(f"features/{layer}", shape=(n, dim), dtype=np.float32, chunks=row_chunks(n, dim, 4))
        ds.attrs.update({"dim": dim, "pool": "none", "node": ""})
        for i in range(0, n, block_rows):
            ds[i:i + block_rows] = np.asarray(X[i:i + block_rows], dtype=np.float32)
        write_samples(f, [f"{i}" for i in range(n)], y, np.ones(n, bool), classes)
        write_errors(f, [], [], [])
    return path


class _LazyRows:
    """Array-like view of one dataset that opens the file per read (picklable, for Dask)."""

    def __init__(self, path: str, name: str, shape: tuple, dtype: np.dtype):
        self.path, self.name, self.shape, self.dtype = path, name, shape, dtype
        self.ndim = len(shape)

    def __getitem__(self, key):
        with h5py.File(self.path, "r") as f:
            return f[self.name][key]


class FeatureSet:
    """A feature file, read for analysis: ``X(layer)``, ``y``, ``classes``, ``paths``, ``valid``, ``meta``.

    Small columns are read once; feature matrices are read on request, whole
    (``X``) or lazily (``to_dask``).

    Raises:
        FormatError: not a featpipe feature file, or a format version this version does not read.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise UsageError(f"feature file {str(self.path)!r} does not exist; create it with `featpipe extract`")
        if not self.path.is_file():
            raise UsageError(f"{str(self.path)!r} is not a file; give a feature file written by `featpipe extract`")
        try:
            f = h5py.File(self.path, "r")
        except OSError as exc:
            raise FormatError(f"{str(self.path)!r} is not a readable HDF5 file ({exc}); give a featpipe feature file") from None
        with f:
            try:
                self._read(f)
            except KeyError as exc:
                raise FormatError(
                    f"{str(self.path)!r} is an incomplete featpipe feature file ({exc}); extract it again"
                ) from None

    def _read(self, f: h5py.File) -> None:
        attrs = dict(f.attrs)
        check_format(attrs, self.path)
        self.meta: dict[str, Any] = {
            k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()
        }
        for key in ("data_config", "config"):
            if isinstance(self.meta.get(key), str):
                self.meta[key] = json.loads(self.meta[key])
        self.layers: list[str] = list(f["features"].keys())
        self._layer_attrs = {k: dict(f["features"][k].attrs) for k in self.layers}
        self._shapes = {k: f["features"][k].shape for k in self.layers}
        self._dtypes = {k: f["features"][k].dtype for k in self.layers}
        aug = f.get(AUGMENTED)
        # Layers with augmented views (extract --augment-views), in the order of self.layers.
        self.augmented_layers: list[str] = [k for k in self.layers if aug is not None and k in aug]
        self.y: np.ndarray = f["samples/label"][:]
        self.valid: np.ndarray = f["samples/valid"][:]
        self.classes: list[str] = decode_strings(f["classes"][:])
        self.errors = {
            "index": f["errors/index"][:],
            "path": decode_strings(f["errors/path"][:]),
            "reason": decode_strings(f["errors/reason"][:]),
        }

    @functools.cached_property
    def paths(self) -> list[str]:
        """Image path of every row (relative to ``meta['image_root']``); read on first use."""
        with h5py.File(self.path, "r") as f:
            return decode_strings(f["samples/path"][:])

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        dims = ", ".join(f"{k}: {self._shapes[k][1]}" for k in self.layers)
        return (
            f"<FeatureSet {self.path.name}: {len(self)} samples ({int(self.valid.sum())} valid), "
            f"{len(self.classes)} classes, model {self.meta.get('model')}, layers {{{dims}}}"
            + (f", {self.augment['views']} augmented views per image" if self.augmented_layers else "")
            + (f", TTA {self.tta}" if self.tta != "none" else "") + ">"
        )

    def resolve_layer(self, layer: str | None) -> str:
        """``layer``, checked; None means 'pooled', or the only layer of the file."""
        if layer is None:
            if "pooled" in self.layers:
                return "pooled"
            if len(self.layers) == 1:
                return self.layers[0]
            raise UsageError(f"{self.path.name} has layers {self.layers}; name one with layer=")
        if layer not in self.layers:
            raise UsageError(f"layer {layer!r} is not in {self.path.name}; it has {', '.join(self.layers)}")
        return layer

    def dim(self, layer: str | None = None) -> int:
        return self._shapes[self.resolve_layer(layer)][1]

    def layer_info(self, layer: str | None = None) -> dict:
        return dict(self._layer_attrs[self.resolve_layer(layer)])

    def X(self, layer: str | None = None) -> np.ndarray:
        """The (N, D) features of ``layer`` (default: 'pooled', or the only layer); NaN rows where not valid."""
        name = self.resolve_layer(layer)
        with h5py.File(self.path, "r") as f:
            return f["features"][name][:]

    @property
    def tta(self) -> str:
        """The test-time augmentation the features are averaged over: 'none', 'flip' or 'crops'."""
        return ((self.meta.get("config") or {}).get("views") or {}).get("tta", "none")

    @property
    def augment(self) -> dict:
        """How the augmented views were made ({views, strength, flip, seed}); {} without them."""
        return dict(((self.meta.get("config") or {}).get("views") or {}).get("augment") or {})

    def augmented(self, layer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The augmented views of ``layer``: features (N x K, D), and for each view the row of its image
        (``source_index``). Views of an image that failed are NaN, like its row."""
        name = self.resolve_layer(layer)
        if name not in self.augmented_layers:
            raise UsageError(f"{self.path.name} has no augmented views of {name!r}; extract with --augment-views K")
        with h5py.File(self.path, "r") as f:
            return f[augmented_name(name)][:], f[f"{AUGMENTED}/source_index"][:]

    def to_dask(self, layer: str | None = None):
        """The features of ``layer`` as a lazy dask array, chunked as stored; for files larger than memory."""
        import dask.array as da
        from dask.base import tokenize

        name = self.resolve_layer(layer)
        with h5py.File(self.path, "r") as f:
            chunks = f["features"][name].chunks or self._shapes[name]
        path = str(self.path.resolve())
        stat = os.stat(path)
        lazy = _LazyRows(path, f"features/{name}", self._shapes[name], self._dtypes[name])
        # The name identifies the data: two files (or one file rewritten) never share cached chunks.
        token = tokenize(path, stat.st_mtime_ns, stat.st_size, name)
        return da.from_array(lazy, chunks=chunks, name=f"featpipe-{name}-{token}", asarray=True)

    def to_pandas(self, layer: str | None = None, features: bool = True):
        """One row per sample: path, label, class, valid, then ``<layer>_0 ... <layer>_{D-1}``."""
        import pandas as pd

        names = np.asarray(self.classes + [""], dtype=object)
        df = pd.DataFrame(
            {
                "path": self.paths,
                "label": self.y,
                "class": names[self.y],  # label -1 picks the trailing ""
                "valid": self.valid,
            }
        )
        if features:
            name = self.resolve_layer(layer)
            X = self.X(name)
            cols = pd.DataFrame(X, columns=[f"{name}_{j}" for j in range(X.shape[1])])
            df = pd.concat([df, cols], axis=1)
        return df


def load(path: str | os.PathLike) -> FeatureSet:
    """Open a feature file written by ``featpipe extract``."""
    return FeatureSet(path)
