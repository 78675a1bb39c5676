"""The feature file's format (version 1, docs/feature-file.md): its version constant and the reader's check,
its root attributes, and the writers of its datasets, the per-row image identity among them (parts.py writes and
reads that identity here too). ``featpipe.store`` reads feature files (``FeatureSet``); ``extraction/merge.py``
writes them.
"""
from __future__ import annotations

import datetime as dt
import json

import h5py
import numpy as np

from .. import identity
from .._version import __version__
from ..errors import FormatError

FORMAT = "featpipe-features"
FORMAT_VERSION = 1
STR = h5py.string_dtype("utf-8")
CHUNK_BYTES = 1 << 20  # ~1 MiB row chunks: fast whole reads, cheap row slices
AUGMENTED = "augmented"  # /augmented/<layer>: K augmented views per image, rows = images x K


def augmented_name(layer: str) -> str:
    """Where a layer's augmented views are: /augmented/<layer> in the file (in parts, a layer of their own)."""
    return f"{AUGMENTED}/{layer}"


def row_chunks(n: int, dim: int, itemsize: int) -> tuple[int, int]:
    return (max(1, min(n, CHUNK_BYTES // max(1, dim * itemsize))), dim)


def write_samples(f: h5py.File, paths, labels: np.ndarray, valid: np.ndarray, classes) -> None:
    g = f.create_group("samples")
    g.create_dataset("path", data=np.asarray(paths, dtype=object), dtype=STR)
    g.create_dataset("label", data=np.asarray(labels, dtype=np.int64))
    g.create_dataset("valid", data=np.asarray(valid, dtype=bool))
    f.create_dataset("classes", data=np.asarray(classes, dtype=object), dtype=STR, shape=(len(classes),))


def write_images(g: h5py.Group, images: dict) -> None:
    """Each row's image identity (featpipe/identity.py) into ``g`` (a feature file's /samples, a part's root):
    file size, modification time (ns), content sha256, and the version of remote files and tar members ('' for
    local files)."""
    g.create_dataset("size", data=np.asarray(images["size"], dtype=np.int64))
    g.create_dataset("mtime", data=np.asarray(images["mtime"], dtype=np.int64))
    n = len(images["size"])
    g.create_dataset("sha256", data=np.asarray(images["sha256"], dtype=object), dtype=STR, shape=(n,))
    g.create_dataset("version", data=np.asarray(images["version"], dtype=object), dtype=STR, shape=(n,))


def read_images(g: h5py.Group) -> dict:
    """Each row's image identity, as ``write_images`` wrote it into ``g``."""
    return {"size": g["size"][:], "mtime": g["mtime"][:],
            "sha256": np.asarray(decode_strings(g["sha256"][:]), dtype=object),
            "version": np.asarray(decode_strings(g["version"][:]), dtype=object)}


def decode_strings(values) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def write_errors(f: h5py.File, index, paths, reasons) -> None:
    g = f.create_group("errors")
    g.create_dataset("index", data=np.asarray(index, dtype=np.int64))
    g.create_dataset("path", data=np.asarray(paths, dtype=object), dtype=STR, shape=(len(paths),))
    g.create_dataset("reason", data=np.asarray(reasons, dtype=object), dtype=STR, shape=(len(reasons),))


def check_format(attrs, path) -> None:
    """The reader's check: ``attrs`` (a file's root attributes) are those of a feature file of FORMAT_VERSION.

    Raises:
        FormatError: another kind of file, or another format version.
    """
    if attrs.get("format") != FORMAT:
        raise FormatError(f"{str(path)!r} is not a featpipe feature file (no format={FORMAT!r} attribute)")
    version = int(attrs.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise FormatError(
            f"{str(path)!r} has format_version {version}; this featpipe reads version "
            f"{FORMAT_VERSION}: use the featpipe release that wrote it, or extract again"
        )


def root_attrs(*, config: dict, request: dict, images_digest: str, samples_digest: str, image_root: str,
               weights: str, weights_source: str, weights_sha256: str, data_config: str, precision: str, dtype: str,
               seed: int, graph: str, backend: str, versions: dict[str, str]) -> dict:
    """The root attributes of a feature file that `featpipe extract` writes (docs/feature-file.md): ``config``
    is the extractor identity, ``request`` what was asked for (featpipe/identity.py); ``versions`` torch's and
    timm's."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "featpipe_version": __version__,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": config["model"],
        "weights_source": weights_source,
        "weights_sha256": weights_sha256,
        "data_config": data_config,
        "config_hash": identity.config_hash(config),
        "config": json.dumps(config, sort_keys=True),
        "samples_digest": samples_digest,
        "torch_version": versions["torch"],
        "timm_version": versions["timm"],
        "image_root": image_root,
        "precision": precision,
        "dtype": dtype,
        "seed": seed,
        # The client's network: converted (--backend), traced and frozen (CPU fp32), or eager.
        "graph": graph,
        # Every backend whose rows the file holds, with its version (extraction/backends.file_backends).
        "backend": backend,
        # What --weights said, resolved: enough to extract the same way again (featpipe predict on images).
        "weights": weights,
        # What was asked for, with the versions that turned it into this extractor: a rerun
        # recognises a finished file from it without building the network.
        "request": json.dumps(request, sort_keys=True),
        "images_digest": images_digest,
    }
