"""Models: names, weights, preprocessing and layer taps for timm and torchvision CNNs."""
from __future__ import annotations

import torch
from torch import nn

from .data_config import DataConfig, from_timm, from_torchvision
from .data_config import upgrade as data_config_upgrade
from .registry import CLASSIC_MODELS, ModelSpec, list_models, resolve
from .taps import BUILTIN_LAYERS, POOLS, Layer, TappedModel, layer_table, resolve_layers
from .weights import WeightsInfo, create_architecture, find_pretrained, load_model, pretrained_available

__all__ = [
    "BUILTIN_LAYERS",
    "CLASSIC_MODELS",
    "POOLS",
    "DataConfig",
    "data_config_upgrade",
    "Layer",
    "ModelSpec",
    "TappedModel",
    "WeightsInfo",
    "data_config",
    "describe",
    "find_pretrained",
    "layer_table",
    "list_models",
    "load_model",
    "pretrained_available",
    "resolve",
    "resolve_layers",
]


def data_config(model: nn.Module, spec: ModelSpec) -> DataConfig:
    """The model's own eval preprocessing."""
    return from_timm(model) if spec.source == "timm" else from_torchvision(spec)


def describe(spec: ModelSpec) -> dict:
    """Feature dimension, input size and offline weights of ``spec``, without computing anything."""
    with torch.device("meta"):
        model = create_architecture(spec).eval()
    cfg = data_config(model, spec)
    rows = {name: dim for name, _, dim in layer_table(model, spec, cfg.crop)[:3]}
    return {
        "model": spec.name,
        "pooled_dim": rows["pooled"],
        "input": f"{cfg.crop[0]}x{cfg.crop[1]}",
        "pretrained_offline": pretrained_available(spec),
    }
