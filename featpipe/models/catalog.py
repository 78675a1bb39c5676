"""The model list behind `featpipe models`, cached so that listing needs no torch.

Knowing which models exist, their feature dimension and input size, and where
their pretrained weights would be takes timm and torchvision, and importing them
takes most of the 7-10 s such a listing used to cost. None of it changes unless
those libraries (or featpipe) change, so it is computed once and kept in
``$XDG_CACHE_HOME/featpipe/`` (``~/.cache/featpipe/``), in a file named after
their versions. Whether the weights are on disk is checked on every listing:
files come and go. Where timm or torchvision is already imported, their live
answer is used instead (a notebook may register models of its own).
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .._util import atomic_write, cache_dir, installed_version
from .._version import __version__

log = logging.getLogger(__name__)

CATALOG_VERSION = 1  # bump when what is cached, or how it is computed, changes


def cache_path() -> Path:
    """This installation's cache file: named after featpipe's, torch's, timm's and torchvision's versions."""
    versions = [CATALOG_VERSION, __version__] + [installed_version(d) for d in ("torch", "timm", "torchvision")]
    key = hashlib.sha256(json.dumps(versions).encode()).hexdigest()[:16]
    return cache_dir(f"models-{key}.json")


def _read() -> dict:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(data: dict) -> None:
    """Replace the cache file whole (a reader sees the old one or the new one); a cache that cannot
    be written only costs the next listing its time."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as tmp:
            tmp.write_text(json.dumps(data, sort_keys=True))
    except OSError as exc:
        log.info("cannot write the model cache %s (%s)", path, exc)


def libraries_loaded() -> bool:
    return "timm" in sys.modules and "torchvision" in sys.modules


def cached(key: str, compute: Callable[[], object]):
    """``compute()``, kept in the cache under ``key``."""
    data = _read()
    if key not in data:
        data[key] = compute()
        _write(data)
    return data[key]


def describe_all(specs: list, describe: Callable[[object], dict]) -> list[dict]:
    """``describe(spec)`` for each of ``specs`` (JSON-able dicts), from the cache where it has them."""
    data = _read()
    rows = data.setdefault("models", {})
    missing = [s for s in specs if s.name not in rows]
    for spec in missing:
        rows[spec.name] = describe(spec)
    if missing:
        _write(data)
    return [rows[s.name] for s in specs]
