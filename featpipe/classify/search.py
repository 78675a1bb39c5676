"""Random search (not grid) over log-uniform ranges, with stratified K-fold cross-validation.

Random search finds good settings in far fewer trials than a grid when only a
few of the parameters matter, which is the usual case.
"""
from __future__ import annotations

import numpy as np
from scipy.stats import loguniform, randint, uniform
from sklearn.model_selection import RandomizedSearchCV, StratifiedKFold, cross_val_score

from ..errors import UsageError

# Ranges per classifier, for the final pipeline step ("clf").
SPACES = {
    "logreg": {"clf__C": loguniform(1e-4, 1e2)},
    "rf": {
        "clf__n_estimators": randint(50, 600),
        "clf__max_depth": [None, 8, 16, 32],
        "clf__max_features": ["sqrt", "log2", 0.2],
        "clf__min_samples_leaf": randint(1, 5),
    },
    "nb": {"clf__var_smoothing": loguniform(1e-12, 1e-2)},
    "svm": {"clf__estimator__C": loguniform(1e-4, 1e1)},
    "knn": {"clf__n_neighbors": randint(1, 51), "clf__weights": ["uniform", "distance"]},
    "linear": {
        "clf__lr": loguniform(1e-4, 1e-1),
        "clf__weight_decay": loguniform(1e-7, 1e-2),
        "clf__optimizer": ["adam", "nesterov", "rmsprop"],
    },
    "mlp": {
        "clf__lr": loguniform(1e-4, 1e-2),
        "clf__weight_decay": loguniform(1e-7, 1e-2),
        "clf__hidden": [128, 256, 512, 1024],
        "clf__dropout": uniform(0.0, 0.7),
        "clf__activation": ["bn", "selu"],
    },
}


def check_folds(y: np.ndarray, folds: int, class_names: list[str]) -> None:
    counts = np.bincount(y)
    small = np.flatnonzero((counts > 0) & (counts < folds))
    if len(small):
        c = int(small[0])
        raise UsageError(
            f"class {class_names[c]!r} has {counts[c]} training samples, fewer than the {folds} CV folds; "
            "lower --cv or add images"
        )


def cross_validate(model, X, y, folds: int, seed: int) -> tuple[float, float]:
    """Mean and standard deviation of accuracy over stratified folds."""
    scores = cross_val_score(model, X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=1)
    return float(scores.mean()), float(scores.std())


def random_search(name: str, model, X, y, trials: int, folds: int, seed: int):
    """Fit a RandomizedSearchCV over ``SPACES[name]``; returns (best refitted pipeline, tried rows best first)."""
    if trials < 1:
        raise UsageError(f"--search must be at least 1, got {trials}")
    search = RandomizedSearchCV(
        model, SPACES[name], n_iter=trials, scoring="accuracy", refit=True, random_state=seed,
        cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=1, error_score="raise",
    )
    search.fit(X, y)
    res = search.cv_results_
    order = np.argsort(res["rank_test_score"], kind="stable")
    tried = [
        {
            "params": {k.removeprefix("clf__"): _plain(v) for k, v in res["params"][i].items()},
            "cv_accuracy": float(res["mean_test_score"][i]),
            "cv_std": float(res["std_test_score"][i]),
        }
        for i in order
    ]
    return search.best_estimator_, tried


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v
