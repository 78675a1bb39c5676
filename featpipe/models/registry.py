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
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_models())


@functools.lru_cache(maxsize=1)
def _torchvision_names() -> frozenset[str]:
    import torchvision.models

    return frozenset(torchvision.models.list_models(module=torchvision.models))


def _is_timm(arch: str) -> bool:
    # timm accepts "arch.pretrained_tag"; the architecture is what it registers.
    return arch.split(".", 1)[0] in _timm_names()


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
        known = _is_timm(rest) if prefix == "timm" else rest in _torchvision_names()
        if not known:
            raise UsageError(_unknown_message(name))
        return ModelSpec(prefix, rest)  # type: ignore[arg-type]
    if _is_timm(name):
        return ModelSpec("timm", name)
    if name in _torchvision_names():
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
