"""Classify: scikit-learn classifiers and PyTorch heads trained on cached features."""
from ..files.classifier import ModelFile
from ..files.classifier import load as load_classifier
from .config import FitConfig, HeadSettings
from .estimators import CLASSIFIERS, make_classifier
from .fit import FitResult, fit
from .heads import LinearHead, MLPHead

load_model = load_classifier  # the name before load_classifier, kept for one release (featpipe.load_model warns)

__all__ = ["CLASSIFIERS", "FitConfig", "FitResult", "HeadSettings", "LinearHead", "MLPHead", "ModelFile", "fit", "load_classifier", "load_model",
           "make_classifier"]
