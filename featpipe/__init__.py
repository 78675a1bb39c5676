"""featpipe: cache CNN features of an image folder to HDF5, and learn from them.

    >>> import featpipe
    >>> fs = featpipe.load("features.h5")
    >>> X, y = fs.X("pooled")[fs.valid], fs.y[fs.valid]
    >>> result = featpipe.fit(featpipe.FitConfig("features.h5", "model.skops", ("logreg", "linear")))
    >>> model = featpipe.load_model("model.skops")
    >>> advice = featpipe.guide(featpipe.GuideConfig("images/"))   # which layer, or fine-tune?
"""
from ._version import __version__
from .classify import FitConfig, FitResult, fit, load_model
from .errors import FeatpipeError
from .extraction import ExtractConfig, ExtractSummary, extract
from .guide import GuideConfig, GuideResult, guide
from .predict import Predictions, predict
from .store import FeatureSet, load

__all__ = [
    "ExtractConfig",
    "ExtractSummary",
    "FeatpipeError",
    "FeatureSet",
    "FitConfig",
    "FitResult",
    "GuideConfig",
    "GuideResult",
    "Predictions",
    "__version__",
    "extract",
    "fit",
    "guide",
    "load",
    "load_model",
    "predict",
]
