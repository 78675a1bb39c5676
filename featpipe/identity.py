"""Identity: one definition of "these feature rows are the same".

Resume, "already complete" and incremental updates all ask whether rows were
made the same way from the same images. The answer is defined here, and only here:

* the **extractor**: model, weights source and sha256, layers (name, node,
  pooling), preprocessing (data config), precision and storage dtype. Its JSON is
  the feature file's ``config`` attribute; ``config_hash`` is its sha256. Features
  of two extractors never mix.
* the **request**: what the user asked for (model, weights, seed, layers, pool,
  precision, dtype, resampler, decode) plus the versions of the libraries that turn a
  request into an extractor. Equal requests give equal extractors, so a finished
  run is recognised from the request alone, without building the network (the
  feature file's ``request`` attribute).
* the **images**: each image's path, size, modification time and version (a remote
  file's ETag; a tar member's shard identity), and with ``--verify-content`` the
  sha256 of its bytes (:func:`row_keys`). A row whose key
  is unchanged keeps its features; the others are computed again. Labels are not
  part of it: a relabelled image keeps its features.

See ARCHITECTURE.md, "Identity".
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from . import remote
from ._util import installed_version, sha256_file
from ._version import __version__

# The fields of an extractor identity, in words, for messages.
FIELD_NAMES = {
    "model": "model",
    "weights_source": "weights source",
    "weights_sha256": "weights (sha256)",
    "layers": "layers",
    "data_config": "preprocessing (data_config)",
    "precision": "precision",
    "dtype": "dtype",
    "views": "views (--tta, --augment-views)",
}


def extractor(model: str, weights_source: str, weights_sha256: str, layers: Sequence, data_config: dict,
              precision: str, dtype: str, views: dict | None = None) -> dict:
    """The extractor identity: everything that changes the features. ``layers`` are (name, node, pool);
    ``views`` the TTA and augmented views (extraction/views.py), absent when there are none."""
    return {**({"views": views} if views else {}),
        "model": model,
        "weights_source": weights_source,
        "weights_sha256": weights_sha256,
        "layers": [[name, node, pool] for name, node, pool in layers],
        "data_config": data_config,
        "precision": precision,
        "dtype": dtype,
    }


def features_identity(identity: dict) -> dict:
    """The part of an extractor identity that makes ``/features/`` rows what they are: all of it but how the
    augmented views were drawn, which only concerns ``/augmented/`` (a classifier trained on a file with views
    applies to features of the same extractor without them)."""
    views = {k: v for k, v in (identity.get("views") or {}).items() if k != "augment"}
    out = {k: v for k, v in identity.items() if k != "views"}
    return {**out, "views": views} if views else out


def config_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def _short(value) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a sha256
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dict_changes(old: dict, new: dict) -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"{key} {_short(old.get(key))} -> {_short(new.get(key))}")
    return out


def differences(old: dict, new: dict) -> str:
    """The fields in which two extractor identities differ, in words: 'dtype float32 -> float16'."""
    parts = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a == b:
            continue
        name = FIELD_NAMES.get(key, key)
        if key == "layers" and isinstance(a, list) and isinstance(b, list):
            old_by, new_by = {x[0]: list(x) for x in a}, {x[0]: list(x) for x in b}
            gone = [x for x in old_by if x not in new_by]
            added = [x for x in new_by if x not in old_by]
            # The same layer name, tapped at another node or pooled another way.
            changed = [f"layer {x} {what} {old_by[x][i]} -> {new_by[x][i]}" for x in old_by if x in new_by
                       for i, what in ((1, "node"), (2, "pooling")) if old_by[x][i] != new_by[x][i]]
            words = ([f"without {', '.join(gone)}"] if gone else []) + ([f"with {', '.join(added)}"] if added else [])
            if words or not changed:
                parts.append(f"layers {'; '.join(words) or 'in another order'}")
            parts.extend(changed)
        elif isinstance(a, dict) and isinstance(b, dict):
            parts.append(f"{name}: {', '.join(_dict_changes(a, b))}")
        else:
            parts.append(f"{name} {_short(a)} -> {_short(b)}")
    return "; ".join(parts)


def of_layer(meta: dict, layer: str, layer_attrs: dict) -> dict:
    """The extractor identity of one layer of a feature file (its ``meta`` and the layer's attributes):
    what a classifier trained on that layer depends on. A file that stores no identity (features made
    elsewhere, ``store.write_arrays``) gets one built from its attributes, the same way every time."""
    config = meta.get("config")
    if isinstance(config, dict) and config.get("layers"):
        layers = [list(x) for x in config["layers"] if x[0] == layer]
        return features_identity({**config, "layers": layers})
    return extractor(
        str(meta.get("model", "")), str(meta.get("weights_source", "")).split(" ")[0],
        str(meta.get("weights_sha256", "")), [(layer, str(layer_attrs.get("node", "")),
                                               str(layer_attrs.get("pool", "")))],
        meta.get("data_config") if isinstance(meta.get("data_config"), dict) else {},
        str(meta.get("precision", "")), str(meta.get("dtype", "")))


def extractor_differences(expected: dict, got: dict) -> str:
    """Whether features were made by the same extractor: '' when they were, else the fields that differ in
    words. The one answer for `fit --test`, `evaluate` and `predict` (identities from :func:`of_layer`)."""
    return "" if expected == got else differences(expected, got)


# --- the request -------------------------------------------------------------------


def _weights_file(model: str, weights: str) -> Path | None:
    """The file the weights come from (pretrained or checkpoint), found without building anything; None for random."""
    if weights == "random":
        return None
    if weights != "pretrained":
        return Path(weights)
    from .models import registry
    from .models.catalog import cached
    from .models.pretrained import locate, weight_sources

    spec = registry.resolve(model)
    return locate(cached(f"weights:{spec.name}", lambda: weight_sources(spec)))[0]


def request(model: str, weights: str, seed: int, layers: Sequence[str], pool: str, precision: str, dtype: str,
            resampler: str, decode: str, views: dict | None = None) -> dict:
    """What was asked for, with the digest of the weights file and the versions that build the extractor.

    ``model`` is a resolved name (``timm:resnet18``); ``weights`` 'pretrained', 'random' or an absolute path.
    Cheap: it reads the weights file but builds no network.
    """
    path = _weights_file(model, weights)
    return {**({"views": views} if views else {}),
        "model": model,
        "weights": weights,
        "weights_sha256": sha256_file(path) if path is not None and path.is_file() else None,
        "seed": seed if weights == "random" else None,
        "layers": list(layers),
        "pool": pool,
        "precision": precision,
        "dtype": dtype,
        "resampler": resampler,
        "decode": decode,
        "versions": {"featpipe": __version__, **{d: installed_version(d) for d in ("torch", "timm", "torchvision")}},
    }


# --- images --------------------------------------------------------------------------


def _stat_local(location: str) -> tuple[int, int, str]:
    st = os.stat(location)
    return st.st_size, st.st_mtime_ns, ""


def _sha256_location(location: str, storage_options) -> str:
    if not remote.is_url(location):
        return sha256_file(Path(remote.local_path(location)))
    return hashlib.sha256(remote.read_bytes(location, storage_options)).hexdigest()


def image_stats(root: Path | str, paths: Sequence[str], verify_content: bool = False, known: dict | None = None,
                locations: Callable[[int], str] | None = None, storage_options=None) -> dict[str, np.ndarray]:
    """What identifies each image: its size, modification time (ns) and version (a remote file's ETag or
    generation; for a tar member its shard's identity; '' for local files), and with ``verify_content`` the
    sha256 of its bytes. ``known`` holds what a listing already gave (remote folders, tar shards);
    ``locations(i)`` says where row i is read (default ``root / paths[i]``). Remote files are asked with
    fsspec ``info()``, a few at a time. A file that cannot be read gets size -1 (decoding will record why).

    Raises:
        UsageError: a remote file refused access (credentials), which no image row can fix.
    """
    n = len(paths)
    where = locations or (lambda i: str(Path(root) / paths[i]) if not remote.is_url(str(root))
                          else remote.join(str(root), paths[i]))
    sha = np.full(n, "", dtype=object)
    if known is not None:
        size, mtime = known["size"].copy(), known["mtime"].copy()
        version = known["version"].copy()
        if verify_content and "sha256" in known:
            return {"size": size, "mtime": mtime, "version": version, "sha256": known["sha256"].copy()}
    else:
        size, mtime = np.full(n, -1, np.int64), np.zeros(n, np.int64)
        version = np.full(n, "", dtype=object)

    def one(i: int) -> None:
        location = where(i)
        try:
            if known is None:
                size[i], mtime[i], version[i] = (remote.stat(location, storage_options) if remote.is_url(location)
                                                 else _stat_local(remote.local_path(location)))
            if verify_content and size[i] >= 0:
                sha[i] = _sha256_location(location, storage_options)
        except PermissionError as exc:
            raise remote.access_error(location, exc, storage_options) from None
        except OSError:
            size[i] = -1

    remote_rows = [i for i in range(n) if remote.is_url(where(i))] if (known is None or verify_content) else []
    if remote_rows:  # each a round trip: a few in flight hide the latency
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(one, remote_rows))
    if known is None or verify_content:
        remote_set = set(remote_rows)
        for i in range(n):
            if i not in remote_set:
                one(i)
    return {"size": size, "mtime": mtime, "version": version, "sha256": sha}


def _versions(stats: dict[str, np.ndarray]) -> list[str]:
    """Each row's version ('' where none: local files)."""
    return [str(v) for v in stats["version"]]


def row_keys(paths: Sequence[str], stats: dict[str, np.ndarray], verify_content: bool) -> list[tuple]:
    """One key per image: rows with equal keys hold the same features (of the same extractor).
    Without ``verify_content`` a file is the same when its path, size, modification time and version are."""
    size, mtime = stats["size"].tolist(), stats["mtime"].tolist()
    version = _versions(stats)
    if verify_content:
        sha = [str(s) for s in stats["sha256"]]
        return list(zip(paths, size, mtime, version, sha, strict=True))
    return list(zip(paths, size, mtime, version, strict=True))


def images_digest(paths: Sequence[str], labels: np.ndarray, classes: Sequence[str],
                  stats: dict[str, np.ndarray]) -> str:
    """Identifies the images of a run: paths, labels, classes, sizes, modification times, versions (and
    content digests). A row without a version hashes as before versions were recorded."""
    h = hashlib.sha256()
    for path, label, size, mtime, sha, version in zip(paths, labels.tolist(), stats["size"].tolist(),
                                                      stats["mtime"].tolist(), stats["sha256"],
                                                      _versions(stats), strict=True):
        tail = f"\0{version}" if version else ""
        h.update(f"{path}\0{label}\0{size}\0{mtime}\0{sha}{tail}\n".encode())
    h.update("\0".join(classes).encode())
    return h.hexdigest()


def describe_changes(counts: dict[str, int]) -> str:
    """'1,797 unchanged, 30 added, 2 changed, 1 removed'."""
    return ", ".join(f"{counts.get(k, 0):,} {k}" for k in ("unchanged", "added", "changed", "removed"))


def features_fingerprint(meta: dict) -> str:
    """Identifies the rows of a feature file (its ``meta``): the extractor and the images, labels included.
    Anything learned from the file (a fitted classifier, a pipeline's fit stage) is stale when it changes."""
    parts = [meta.get("config_hash", ""), meta.get("images_digest", "")]  # none in a file made from arrays
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()
