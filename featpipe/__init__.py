"""featpipe: cache CNN features of an image folder to HDF5, and learn from them.

    >>> import featpipe
    >>> fs = featpipe.load("features.h5")
    >>> X, y = fs.X("pooled")[fs.valid], fs.y[fs.valid]
"""
from ._version import __version__
from .errors import FeatpipeError
from .extraction import ExtractConfig, ExtractSummary, extract
from .store import FeatureSet, load

__all__ = ["ExtractConfig", "ExtractSummary", "FeatpipeError", "FeatureSet", "__version__", "extract", "load"]
