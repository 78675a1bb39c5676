"""The classifier factory: a name -> a scikit-learn pipeline, standardised where the model needs it.

Standardisation sits inside the pipeline, so it is fitted on training rows
only and travels with the model file.
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
from .heads import LinearHead, MLPHead

CLASSIFIERS = {
    "logreg": "multinomial logistic regression, L2 (lbfgs)",
    "rf": "random forest",
    "nb": "Gaussian naive Bayes",
    "svm": "linear SVM with calibrated probabilities",
    "knn": "k nearest neighbours, cosine distance",
    "linear": "PyTorch linear softmax head (the new last layer)",
    "mlp": "PyTorch MLP head: one hidden layer, batch norm or SELU, dropout",
}

# Classifiers that can train from rows streamed out of the feature file.
STREAMING = ("linear", "mlp")


def make_classifier(name: str, seed: int = 0, **params) -> Pipeline:
    """A fresh, unfitted pipeline for ``name``; ``params`` go to the final estimator.

    Raises:
        UsageError: unknown classifier name.
    """
    if name == "logreg":
        est, scale = LogisticRegression(C=1.0, max_iter=1000, random_state=seed), True
    elif name == "rf":
        est, scale = RandomForestClassifier(n_estimators=300, n_jobs=-1, random_state=seed), False
    elif name == "nb":
        est, scale = GaussianNB(), False
    elif name == "svm":
        est = CalibratedClassifierCV(LinearSVC(C=0.1, random_state=seed), cv=3)
        scale = True
    elif name == "knn":
        est, scale = KNeighborsClassifier(n_neighbors=10, metric="cosine", weights="distance"), False
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
