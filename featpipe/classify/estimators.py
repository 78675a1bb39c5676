"""The classifier factory: a name -> a scikit-learn pipeline, standardised where the model needs it.

Standardisation sits inside the pipeline, so it is fitted on training rows
only and travels with the model file. Settings that depend on the number of
rows per class (knn's k, the calibration folds of svm and nb) are capped by
the smallest class the classifier will be fitted on; a classifier that cannot
run on so few rows raises :class:`CannotFit`, so that the others still run.
"""
from __future__ import annotations

from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from ..errors import UsageError
from ..settings import CLASSIFIERS, HEADS
from .heads import LinearHead, MLPHead

# Classifiers that can train from rows streamed out of the feature file: the PyTorch heads.
STREAMING = HEADS
# From the simplest model to the most flexible: model selection breaks ties towards the front.
# Linear models first (logistic regression is convex and calibrated), then naive Bayes (quadratic
# boundaries), then the ones that memorise (knn) or grow capacity with the data (rf, mlp).
SIMPLICITY = ("logreg", "linear", "svm", "nb", "knn", "rf", "mlp")
KNN_K = 10
CALIBRATION_FOLDS = 3


class CannotFit(UsageError):
    """This classifier cannot run on these rows (for example too few per class); the others can."""


def _calibration_folds(name: str, smallest_class: int | None) -> int:
    folds = CALIBRATION_FOLDS if smallest_class is None else min(CALIBRATION_FOLDS, smallest_class)
    if folds < 2:
        raise CannotFit(f"{name} calibrates its probabilities by cross-validation, which needs 2 or more rows per "
                        f"class; the smallest class has {smallest_class}")
    return folds


def make_classifier(name: str, seed: int = 0, smallest_class: int | None = None, **params) -> Pipeline:
    """A fresh, unfitted pipeline for ``name``; ``params`` go to the final estimator.

    ``smallest_class``: rows of the smallest class it will be fitted on; caps
    knn's k and the calibration folds of svm and nb.

    Raises:
        UsageError: unknown classifier name.
        CannotFit: the smallest class is too small for this classifier.
    """
    if name == "logreg":
        est, scale = LogisticRegression(C=1.0, max_iter=1000, random_state=seed), True
    elif name == "rf":
        est, scale = RandomForestClassifier(n_estimators=300, n_jobs=-1, random_state=seed), False
    elif name == "nb":
        # Naive Bayes multiplies per-feature likelihoods as if independent: on CNN features its raw
        # probabilities are 0 or 1. Platt scaling on held-out folds makes them mean something.
        est = CalibratedClassifierCV(GaussianNB(), cv=_calibration_folds(name, smallest_class), method="sigmoid")
        scale = False
    elif name == "svm":
        est = CalibratedClassifierCV(LinearSVC(C=0.1, random_state=seed), cv=_calibration_folds(name, smallest_class))
        scale = True
    elif name == "knn":
        k = KNN_K if smallest_class is None else max(1, min(KNN_K, smallest_class))
        est, scale = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance"), False
    elif name == "linear":
        est, scale = LinearHead(random_state=seed), True
    elif name == "mlp":
        est, scale = MLPHead(random_state=seed), True
    else:
        raise UsageError(f"unknown classifier {name!r}; choose from {', '.join(CLASSIFIERS)}")
    if params:
        est.set_params(**params)
    steps = ([("scale", StandardScaler())] if scale else []) + [("clf", est)]
    return Pipeline(steps)
