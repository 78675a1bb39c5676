"""The fine-tuning checkpoint (`featpipe finetune`'s output), as a file: written whole, and its metadata read back
with its version checked. Building the network from it is finetune/checkpoint.py's; loading any state dict
safely (weights_only) is models/weights.py's.

Layout: ``{"state_dict": {name: tensor}, "featpipe": {"format": FORMAT, "format_version": FORMAT_VERSION,
"model", "data_config", "classes", ...}}``: the metadata says how to build and feed the network.
"""
from __future__ import annotations

from pathlib import Path

from .._util import atomic_write
from ..errors import WeightsError

FORMAT = "featpipe-finetune"
FORMAT_VERSION = 1  # the metadata's layout: a reader refuses any other


def save(obj, path: Path) -> None:
    """``torch.save`` under a temporary name, then renamed: a reader sees the previous file or this one."""
    import torch

    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def write(path: Path, state_dict: dict, meta: dict) -> None:
    """The checkpoint: ``state_dict`` (moved to the CPU) with featpipe's metadata (``meta``, this format's tag and
    version added), which :func:`read_meta` reads back."""
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, **meta}
    save({"state_dict": {k: v.cpu() for k, v in state_dict.items()}, "featpipe": meta}, path)


def read_meta(obj, path: str | Path) -> dict | None:
    """The featpipe metadata of a loaded checkpoint object (read from ``path``); None for any other checkpoint.

    Raises:
        WeightsError: a `featpipe finetune` checkpoint of a format version this featpipe does not read.
    """
    meta = obj.get("featpipe") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return None
    if meta.get("format_version") != FORMAT_VERSION:
        raise WeightsError(f"{str(path)!r} is a `featpipe finetune` checkpoint of format_version "
                           f"{meta.get('format_version')!r}; this featpipe reads version {FORMAT_VERSION}: "
                           "fine-tune again with this featpipe, or use the featpipe that wrote it")
    return meta
