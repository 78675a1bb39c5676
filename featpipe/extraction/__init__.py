"""Extraction: read -> preprocess -> forward -> write (parts) -> merge, on threads or a Dask cluster.

``ExtractConfig``, ``ExtractSummary`` and ``extract`` are imported on first use, so
that ``featpipe.extraction.sources`` (say) does not load torch.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import ExtractConfig, ExtractSummary
    from .steps import extract

# public name -> the module that defines it
_LAZY = {"ExtractConfig": ".config", "ExtractSummary": ".config", "extract": ".steps"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'featpipe.extraction' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


__all__ = ["ExtractConfig", "ExtractSummary", "extract"]
