"""Models: names, weights, preprocessing and layer taps for timm and torchvision CNNs.

Names are imported on first use: ``featpipe.models.data_config`` (the module of DataConfig) and
``featpipe.models.registry`` need no torch, and the feature-file reader uses them.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .registry import CLASSIC_MODELS, ModelSpec, list_models, resolve

if TYPE_CHECKING:
    from torch import nn

    from .data_config import DataConfig, from_timm, from_torchvision
    from .pretrained import find_pretrained
    from .taps import BUILTIN_LAYERS, POOLS, Layer, TappedModel, layer_table, resolve_layers
    from .weights import WeightsInfo, create_architecture, load_model

# public name -> (module, its name there)
_LAZY = {
    "DataConfig": (".data_config", "DataConfig"),
    "from_timm": (".data_config", "from_timm"),
    "from_torchvision": (".data_config", "from_torchvision"),
    "BUILTIN_LAYERS": (".taps", "BUILTIN_LAYERS"),
    "POOLS": (".taps", "POOLS"),
    "Layer": (".taps", "Layer"),
    "TappedModel": (".taps", "TappedModel"),
    "layer_table": (".taps", "layer_table"),
    "resolve_layers": (".taps", "resolve_layers"),
    "WeightsInfo": (".weights", "WeightsInfo"),
    "create_architecture": (".weights", "create_architecture"),
    "find_pretrained": (".pretrained", "find_pretrained"),
    "load_model": (".weights", "load_model"),
}

__all__ = [
    "BUILTIN_LAYERS",
    "CLASSIC_MODELS",
    "POOLS",
    "DataConfig",
    "Layer",
    "ModelSpec",
    "TappedModel",
    "WeightsInfo",
    "create_architecture",
    "eval_config",
    "find_pretrained",
    "from_timm",
    "from_torchvision",
    "layer_table",
    "list_models",
    "load_model",
    "model_table",
    "resolve",
    "resolve_layers",
]


def __getattr__(name: str):
    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module, __name__), attr)
        globals()[name] = value
        return value
    if name in ("registry", "taps", "weights", "pretrained", "stages", "catalog", "data_config"):  # submodules, as attributes (models.registry.UsageError)
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'featpipe.models' has no attribute {name!r}")


def eval_config(model: nn.Module, spec: ModelSpec) -> DataConfig:
    """The model's own eval preprocessing."""
    from .data_config import from_timm, from_torchvision

    return from_timm(model) if spec.source == "timm" else from_torchvision(spec)


def _shapes(spec: ModelSpec) -> dict:
    import torch

    from .taps import layer_table
    from .weights import create_architecture

    with torch.device("meta"):
        model = create_architecture(spec).eval()
    cfg = eval_config(model, spec)
    rows = {name: dim for name, _, dim in layer_table(model, spec, cfg.crop)[:3]}
    return {"model": spec.name, "pooled_dim": rows["pooled"], "input": f"{cfg.crop[0]}x{cfg.crop[1]}"}


def _catalog_entry(spec: ModelSpec) -> dict:
    from .pretrained import weight_sources

    try:
        return {**_shapes(spec), "weights": weight_sources(spec)}
    except Exception as exc:  # noqa: BLE001 - one odd model must not hide the others
        return {"model": spec.name, "error": type(exc).__name__}


def model_table(pattern: str | None = None) -> list[dict]:
    """What `featpipe models` lists: for each model matching ``pattern`` (default: the classic CNNs),
    ``{model, pooled_dim, input, pretrained_offline}``, or ``{model, error}`` for one that cannot be built.

    Computed once per installation and cached (models/catalog.py), so it usually imports no torch;
    whether pretrained weights are on disk is checked each time.
    """
    from .catalog import describe_all
    from .pretrained import locate

    rows = []
    for entry in describe_all(list_models(pattern), _catalog_entry):
        if "error" in entry:
            rows.append(dict(entry))
            continue
        row = {k: v for k, v in entry.items() if k != "weights"}
        rows.append({**row, "pretrained_offline": locate(entry["weights"])[0] is not None})
    return rows

