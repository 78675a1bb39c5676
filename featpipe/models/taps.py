"""Layer taps: which activations become features, all from one forward pass.

``pooled`` goes through each library's public contract (timm's
``forward_head(pre_logits=True)``; for torchvision the input of the final
classifier), ``fc7`` is AlexNet's and VGG's second fully connected layer after
its ReLU, ``logits`` is the classifier output, ``pixels`` is the network's input
crop itself downscaled to 32x32 (a raw-pixel baseline: what a classifier gets
without the network), and any other name is a module
of the network whose output is reduced to a vector by global average or max
pooling. Hooks copy what they capture, so in-place operations later in the
network cannot change it.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..settings import EXTRACT, POOLS, literal, shown  # noqa: F401 - POOLS: public here too (featpipe.models.POOLS)
from .registry import ModelSpec
from .weights import classifier_name

BUILTIN_LAYERS = ("pooled", "fc7", "logits", "pixels")
# The raw-pixel baseline: the preprocessed crop, area-averaged to this size (3 x 32 x 32 = 3072 values).
PIXELS_HW = (32, 32)


@dataclass(frozen=True)
class Layer:
    """One feature dataset: its name in the file, the module it taps, its pooling."""

    name: str
    node: str  # module name; "" where the library's own API provides it
    pool: str  # "avg", "max", or "none" for vectors that need no pooling


def reduce_to_vector(t: Tensor, pool: str) -> Tensor:
    """(B, C, H, W) or (B, tokens, C) -> (B, C) by global pooling; (B, D) is copied."""
    if t.ndim == 4:
        return t.mean(dim=(2, 3)) if pool != "max" else t.amax(dim=(2, 3))
    if t.ndim == 3:
        return t.mean(dim=1) if pool != "max" else t.amax(dim=1)
    return t.flatten(1).clone()


def _fc7_node(model: nn.Module, spec: ModelSpec) -> str | None:
    """The ReLU after the second-to-last Linear of an AlexNet/VGG classifier."""
    if spec.source == "timm":
        return "pre_logits" if spec.arch.startswith("vgg") else None
    classifier = getattr(model, "classifier", None)
    if not isinstance(classifier, nn.Sequential):
        return None
    children = list(classifier.named_children())
    linear_at = [i for i, (_, m) in enumerate(children) if isinstance(m, nn.Linear)]
    if len(linear_at) < 3:  # fc6, fc7, fc8
        return None
    i = linear_at[-2] + 1
    if i < len(children) and isinstance(children[i][1], nn.ReLU):
        return f"classifier.{children[i][0]}"
    return None


def resolve_layers(
    model: nn.Module, spec: ModelSpec, names: Sequence[str], pool: str = "avg"
) -> tuple[Layer, ...]:
    """Check ``names`` against ``model`` and say how each one is tapped.

    Raises:
        UsageError: an unknown layer, a duplicate, or ``fc7`` on a model without one.
    """
    EXTRACT.check_value("pool", pool)
    if not names:
        raise EXTRACT.refuse("no {layers} given; use 'pooled' for the penultimate features")
    if len(set(names)) != len(names):
        raise EXTRACT.refuse(f"{{layers}} names a layer twice: {shown(', '.join(names))}")
    modules = dict(model.named_modules())
    layers = []
    for name in names:
        if name in ("pooled", "logits", "pixels"):
            layers.append(Layer(name, "", "none"))
        elif name == "fc7":
            node = _fc7_node(model, spec)
            if node is None:
                raise EXTRACT.refuse(f"{{layers}}: 'fc7' exists only for AlexNet and VGG, not {literal(str(spec))}; "
                                     "name pooled for its penultimate features")
            layers.append(Layer(name, node, "none"))
        elif name in modules and name != "":
            layers.append(Layer(name, name, pool))
        else:
            raise UsageError(
                f"unknown layer {name!r} for {spec}; run `featpipe layers {spec}` to list layers"
            )
    return tuple(layers)


class TappedModel(nn.Module):
    """Wraps a network; ``forward(x)`` returns ``{layer name: (B, D) tensor}``."""

    def __init__(self, model: nn.Module, spec: ModelSpec, layers: Sequence[Layer]):
        super().__init__()
        self.model = model
        self.spec = spec
        self.layers = tuple(layers)
        # Per thread: several CPU streams may run this network at once.
        self._local = threading.local()
        self._handles = []
        names = {layer.name for layer in self.layers}
        head = classifier_name(model, spec)
        # timm's pooled features stop before the classifier: run it when logits or
        # one of its own modules are asked for.
        self._want_logits = "logits" in names or any(
            head and layer.node and (layer.node == head or layer.node.startswith(head + "."))
            for layer in self.layers
        )
        self._want_pixels = "pixels" in names
        for layer in self.layers:
            if layer.node and not (spec.source == "timm" and layer.name == "fc7"):
                self._hook_output(layer.node, layer.name, layer.pool)
        if spec.source == "tv" and "pooled" in names:
            head = classifier_name(model, spec)
            if spec.arch.startswith("squeezenet"):
                # SqueezeNet has no linear head: its pooled features are the
                # global average of the last feature map, as for any CNN.
                self._hook_output("features", "pooled", "avg")
            else:
                self._hook_input(head, "pooled")

    def _store(self, name: str) -> Callable[[Tensor, str], None]:
        def store(t: Tensor, pool: str) -> None:
            self._local.captured[name] = reduce_to_vector(t, pool)

        return store

    def _hook_output(self, node: str, name: str, pool: str) -> None:
        store = self._store(name)
        module = self.model.get_submodule(node)
        self._handles.append(module.register_forward_hook(lambda m, i, o: store(o, pool)))

    def _hook_input(self, node: str, name: str) -> None:
        store = self._store(name)
        module = self.model.get_submodule(node)
        self._handles.append(module.register_forward_pre_hook(lambda m, i: store(i[0], "none")))

    def remove_hooks(self) -> None:
        """Leave the wrapped network as it was found."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        captured = self._local.captured = {}
        if self._want_pixels:
            # Normalised pixels: a per-channel affine map of the 8-bit ones, which a
            # standardised linear classifier cannot tell apart from them.
            captured["pixels"] = nn.functional.adaptive_avg_pool2d(x.float(), PIXELS_HW).flatten(1)
        if self.spec.source == "timm":
            pooled = self.model.forward_head(self.model.forward_features(x), pre_logits=True)
            captured["pooled"] = pooled
            if "fc7" in {layer.name for layer in self.layers}:
                captured["fc7"] = pooled  # timm's VGG: pre-logits is fc7 after its ReLU
            if self._want_logits:
                captured["logits"] = self.model.get_classifier()(pooled)
        else:
            logits = self.model(x)
            if self._want_logits:
                captured["logits"] = logits
        self._local.captured = {}
        missing = [layer.name for layer in self.layers if layer.name not in captured]
        if missing:
            raise UsageError(
                f"layer {missing[0]!r} of {self.spec} does not run when features are extracted; "
                f"pick another from `featpipe layers {self.spec}`"
            )
        return {layer.name: captured[layer.name] for layer in self.layers}


def layer_table(model: nn.Module, spec: ModelSpec, input_hw: tuple[int, int]) -> list[tuple[str, tuple, int]]:
    """Every selectable layer: (name, output shape for one image, feature dim).

    Runs one forward pass on the meta device when possible, so listing the
    layers of a large model costs no compute.
    """
    shapes: dict[str, tuple] = {}

    def record(name: str, output: object) -> None:  # a hook that returns None keeps the output
        # A module that runs more than once in a forward pass (a ReLU shared inside a ResNet block)
        # is tapped at its last run, as TappedModel does: list what extraction will give.
        if isinstance(output, Tensor):
            shapes[name] = tuple(output.shape)

    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: record(name, o))
        for name, module in model.named_modules()
        if name
    ]
    names = ["pooled", "logits", "pixels"] + (["fc7"] if _fc7_node(model, spec) else [])
    tapped = TappedModel(model, spec, resolve_layers(model, spec, names))
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            out = tapped(torch.zeros(1, 3, *input_hw, device=device))
    finally:
        tapped.remove_hooks()
        for h in handles:
            h.remove()
    rows = [(n, tuple(out[n].shape), int(out[n].shape[-1])) for n in ("pooled", "fc7", "logits", "pixels") if n in out]
    for name, shape in shapes.items():
        dim = shape[1] if len(shape) == 4 else shape[-1]
        rows.append((name, shape, int(dim)))
    return rows
