"""A network's stages: where its resolution drops, shallow to deep.

The guide compares the features at the end of each stage, and finetune unfreezes
the network stage by stage from the top: both ask this module.

timm models list their stages in ``feature_info`` (the modules where the
resolution drops). For other models the stages are found from the network
itself: one forward pass on the meta device (no compute) records each
top-level module's output size, and a stage ends where the resolution is
about to drop. Modules that run more than once in a forward pass are left
out: a hook on them sees several outputs, and none of them is "the" stage.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import UsageError
from .registry import ModelSpec

MOST_STAGES = 5  # with 'pooled': 4 to 6 depths, as many as a sweep needs to show a trend
# Containers whose children are the stages (torchvision: VGG, DenseNet, EfficientNet, MobileNet, MNASNet, ...).
STAGE_CONTAINERS = ("features", "layers", "trunk_output")
_POOLING = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _record(model: nn.Module, names: list[str], input_hw: tuple[int, int]) -> tuple[dict, dict, list[str]]:
    """One forward pass: each module's output shape, its number of calls, and the order they ran in."""
    shapes: dict[str, tuple] = {}
    calls: dict[str, int] = {}
    order: list[str] = []
    modules = dict(model.named_modules())

    def hook(name: str, output: object) -> None:
        calls[name] = calls.get(name, 0) + 1
        if name not in shapes:
            order.append(name)
            shapes[name] = tuple(output.shape) if isinstance(output, Tensor) else ()

    handles = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: hook(name, o)) for name in names
    ]
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, *input_hw, device=device))
    finally:
        for h in handles:
            h.remove()
    return shapes, calls, order


def _candidates(model: nn.Module) -> list[str]:
    names = []
    for name, child in model.named_children():
        if name in STAGE_CONTAINERS and isinstance(child, nn.Sequential):
            names += [f"{name}.{sub}" for sub, _ in child.named_children()]
        else:
            names.append(name)
    return names


def _stages_from_shapes(model: nn.Module, input_hw: tuple[int, int]) -> list[str]:
    """The last module at each spatial resolution, in the order the forward pass ran them."""
    modules = dict(model.named_modules())
    shapes, calls, order = _record(model, _candidates(model), input_hw)
    ends: list[str] = []
    size, in_stage = None, False
    for name in order:
        shape = shapes[name]
        if len(shape) != 4 or shape[2] * shape[3] <= 1 or calls[name] != 1:
            continue
        if isinstance(modules[name], _POOLING):  # a pool closes a stage; the module after it opens the next
            in_stage = False
            continue
        if in_stage and shape[2:] == size:
            ends[-1] = name
        else:
            ends.append(name)
        size, in_stage = shape[2:], True
    return ends


def _spread(names: list[str], most: int) -> list[str]:
    """At most ``most`` names, evenly spaced, always keeping the last."""
    if len(names) <= most:
        return names
    picks = sorted({round(i * (len(names) - 1) / (most - 1)) for i in range(most)})
    return [names[i] for i in picks]


def stage_layers(model: nn.Module, spec: ModelSpec, input_hw: tuple[int, int], most: int = MOST_STAGES) -> list[str]:
    """Module names that end the network's stages, shallow to deep (at most ``most``).

    ``model`` may live on the meta device: finding the stages computes nothing.

    Raises:
        UsageError: fewer than two stages could be found; the message says to name layers with --layer.
    """
    info = getattr(model, "feature_info", None) if spec.source == "timm" else None
    names = [d["module"] for d in info] if isinstance(info, list) and info else None
    if names:
        _, calls, _ = _record(model, names, input_hw)
        names = [n for n in names if calls.get(n) == 1]
    else:
        names = _stages_from_shapes(model, input_hw)
    if len(names) < 2:
        raise UsageError(
            f"cannot find the stages of {spec} to compare; name the layers yourself with "
            f"--layer NAME,NAME (run `featpipe layers {spec}` to list them)"
        )
    return _spread(names, most)
