"""Model names: which library builds a model, and the list of known names.

A name is a timm model (``resnet50``, ``resnet50.a1_in1k``) or a torchvision
classification model (``alexnet``). Where both libraries know a name, timm
wins; ``tv:`` or ``timm:`` picks one explicitly.
"""
from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass
from typing import Literal

from ..errors import UsageError

Source = Literal["timm", "tv"]

# The classic CNN lineage, listed by `featpipe models` without a pattern.
CLASSIC_MODELS = (
    "tv:alexnet",
    "vgg16",
    "tv:vgg16",
    "tv:googlenet",
    "resnet18",
    "resnet50",
    "densenet121",
    "tv:squeezenet1_1",
    "seresnet50",
    "mobilenetv2_100",
    "mnasnet_100",
    "efficientnet_b0",
    "tf_efficientnet_lite0",
)


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model name: the library that builds it and its name there."""

    source: Source
    arch: str

    @property
    def name(self) -> str:
        return f"{self.source}:{self.arch}"

    def __str__(self) -> str:
        return self.name


@functools.lru_cache(maxsize=1)
def _live_names() -> dict[str, frozenset[str]]:
    import timm
    import torchvision.models

    return {"timm": frozenset(timm.list_models()),
            "tv": frozenset(torchvision.models.list_models(module=torchvision.models))}


@functools.lru_cache(maxsize=1)
def _cached_names() -> dict[str, frozenset[str]]:
    from .catalog import cached

    stored = cached("names", lambda: {k: sorted(v) for k, v in _live_names().items()})
    return {k: frozenset(v) for k, v in stored.items()}


def _names(live: bool = False) -> dict[str, frozenset[str]]:
    """Model names of timm and torchvision: their own lists when they are imported (or ``live``), else the
    cached copy (models/catalog.py), which spares importing them."""
    from .catalog import libraries_loaded

    return _live_names() if live or libraries_loaded() else _cached_names()


def _timm_names(live: bool = False) -> frozenset[str]:
    return _names(live)["timm"]


def _torchvision_names(live: bool = False) -> frozenset[str]:
    return _names(live)["tv"]


def _is_timm(arch: str, live: bool = False) -> bool:
    # timm accepts "arch.pretrained_tag"; the architecture is what it registers.
    return arch.split(".", 1)[0] in _timm_names(live)


def _known(prefix: str, arch: str, live: bool) -> bool:
    return _is_timm(arch, live) if prefix == "timm" else arch in _torchvision_names(live)


def resolve(name: str) -> ModelSpec:
    """Resolve a model name to a :class:`ModelSpec`.

    Raises:
        UsageError: the name is unknown to timm and torchvision.
    """
    prefix, _, rest = name.partition(":")
    if rest:
        if prefix not in ("timm", "tv"):
            raise UsageError(
                f"unknown model prefix {prefix!r} in {name!r}; use 'timm:' or 'tv:'"
            )
        # A name missing from the cached list is looked up in the libraries themselves before it is refused.
        if not (_known(prefix, rest, live=False) or _known(prefix, rest, live=True)):
            raise UsageError(_unknown_message(name))
        return ModelSpec(prefix, rest)  # type: ignore[arg-type]
    for live in (False, True):
        if _is_timm(name, live):
            return ModelSpec("timm", name)
        if name in _torchvision_names(live):
            return ModelSpec("tv", name)
    raise UsageError(_unknown_message(name))


def _unknown_message(name: str) -> str:
    import difflib

    stem = name.split(":")[-1].split(".")[0]
    close = difflib.get_close_matches(stem, sorted(_timm_names() | _torchvision_names()), n=4, cutoff=0.75)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return (
        f"unknown model {name!r}{hint}; run `featpipe models '{stem[:4]}*'` "
        "to list timm and torchvision models"
    )


def list_models(pattern: str | None = None) -> list[ModelSpec]:
    """Models whose name matches ``pattern`` (shell wildcards), or the classic CNNs.

    ``pattern`` may carry a ``timm:`` or ``tv:`` prefix to search one library.
    """
    if pattern is None:
        return [resolve(n) for n in CLASSIC_MODELS]
    prefix, _, rest = pattern.partition(":")
    if not rest:
        prefix, rest = "", pattern
    found: list[ModelSpec] = []
    if prefix in ("", "timm"):
        found += [ModelSpec("timm", n) for n in sorted(_timm_names()) if fnmatch.fnmatch(n, rest)]
    if prefix in ("", "tv"):
        found += [
            ModelSpec("tv", n) for n in sorted(_torchvision_names()) if fnmatch.fnmatch(n, rest)
        ]
    return found
