"""featpipe: cache CNN features of an image folder to HDF5, and learn from them.

    >>> import featpipe
    >>> fs = featpipe.load("features.h5")
    >>> X, y = fs.X("pooled")[fs.valid], fs.y[fs.valid]
    >>> result = featpipe.fit(featpipe.FitConfig("features.h5", "model.skops", ("logreg", "linear")))
    >>> model = featpipe.load_classifier("model.skops")
    >>> advice = featpipe.guide(featpipe.GuideConfig("images/"))   # which layer, or fine-tune?
    >>> tuned = featpipe.finetune(featpipe.FinetuneConfig("images/", "ft.pt", model="resnet50"))

The public names are imported on first use: reading a feature file needs h5py
and NumPy, not torch, Dask or scikit-learn, and a notebook that only reads
starts in a fraction of a second.
"""
from __future__ import annotations

import importlib
import os
import sys
import types
import warnings
from typing import TYPE_CHECKING

from ._version import __version__
from .errors import FeatpipeError

# glibc gives PyTorch's CPU allocator its large buffers (all of 32 MB or more) from fresh mmaps, which the kernel
# zero-fills 4 KB page by page on every forward pass: millions of page faults per thousand images, a third of a
# CPU extraction's time spent in the kernel (bench/torch_cpu_memory.py). THP_MEM_ALLOC_ENABLE makes torch ask for
# transparent huge pages for buffers of 2 MB or more, 512 times fewer faults. torch reads it once, as it loads,
# so it is set here, before any featpipe module imports torch; THP_MEM_ALLOC_ENABLE=0 keeps torch's default
# (docs/extract.md, "On the CPU").
if sys.platform.startswith("linux"):
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

# public name -> the module that defines it
_LAZY = {
    "ExtractConfig": ".extraction.config",
    "ExtractSummary": ".extraction.config",
    "extract": ".extraction.steps",
    "FitConfig": ".classify",
    "FitResult": ".classify",
    "fit": ".classify",
    "load_classifier": ".classify",
    "GuideConfig": ".guide",
    "GuideResult": ".guide",
    "guide": ".guide",
    "FinetuneConfig": ".finetune",
    "FinetuneResult": ".finetune",
    "finetune": ".finetune",
    "Predictions": ".predict",
    "predict": ".predict",
    "FeatureSet": ".store",
    "load": ".store",
}

if TYPE_CHECKING:
    from .classify import FitConfig, FitResult, fit, load_classifier
    from .extraction.config import ExtractConfig, ExtractSummary
    from .extraction.steps import extract
    from .finetune import FinetuneConfig, FinetuneResult, finetune
    from .guide import GuideConfig, GuideResult, guide
    from .predict import Predictions, predict
    from .store import FeatureSet, load


def __getattr__(name: str):
    if name == "load_model":  # not cached, so that every use warns
        warnings.warn("featpipe.load_model is now featpipe.load_classifier (featpipe.models.load_model loads network "
                      "weights); the old name goes in the next release", DeprecationWarning, stacklevel=2)
        name = "load_classifier"
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'featpipe' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """``featpipe.guide``, ``featpipe.finetune`` and ``featpipe.predict`` are functions, named like the
    modules that define them; importing such a module must not rebind the public name to the module."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and name in ("guide", "finetune", "predict"):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


__all__ = [
    "ExtractConfig",
    "ExtractSummary",
    "FeatpipeError",
    "FeatureSet",
    "FinetuneConfig",
    "FinetuneResult",
    "FitConfig",
    "FitResult",
    "GuideConfig",
    "GuideResult",
    "Predictions",
    "__version__",
    "extract",
    "finetune",
    "fit",
    "guide",
    "load",
    "load_classifier",
    "predict",
]
