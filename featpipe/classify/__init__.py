"""Classify: scikit-learn classifiers and PyTorch heads trained on cached features."""
from .estimators import CLASSIFIERS, make_classifier
from .fit import FitConfig, FitResult, HeadSettings, fit
from .heads import LinearHead, MLPHead
from .modelfile import ModelFile
from .modelfile import load as load_model

__all__ = ["CLASSIFIERS", "FitConfig", "FitResult", "HeadSettings", "LinearHead", "MLPHead", "ModelFile", "fit", "load_model",
           "make_classifier"]
