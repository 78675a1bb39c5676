"""Random search (not grid) over log-uniform ranges, with stratified K-fold cross-validation.

Random search finds good settings in far fewer trials than a grid when only a
few of the parameters matter, which is the usual case.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import loguniform, randint, uniform
from sklearn.base import clone
from sklearn.model_selection import ParameterSampler, StratifiedKFold, cross_val_score

from ..settings import FIT, shown

# Ranges per classifier, for the final pipeline step ("clf").
SPACES = {
    "logreg": {"clf__C": loguniform(1e-4, 1e2)},
    "rf": {
        "clf__n_estimators": randint(50, 600),
        "clf__max_depth": [None, 8, 16, 32],
        "clf__max_features": ["sqrt", "log2", 0.2],
        "clf__min_samples_leaf": randint(1, 5),
    },
    "nb": {"clf__estimator__var_smoothing": loguniform(1e-12, 1e-2)},
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
        raise FIT.refuse(f"class {shown(class_names[c])} has {counts[c]} training samples, fewer than the {folds} CV "
                         "folds; lower {cv} or add images")


def cross_validate(model, X, y, folds: int, seed: int) -> tuple[float, float]:
    """Mean and standard deviation of accuracy over stratified folds."""
    scores = cross_val_score(model, X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed), n_jobs=1,
                             error_score="raise")
    return float(scores.mean()), float(scores.std())


# progress(classifier, trials done, trials in all, best mean CV accuracy so far)
SearchProgress = Callable[[str, int, int, float], None]


def random_search(name: str, model, X, y, trials: int, folds: int, seed: int, fixed: dict | None = None,
                  progress: SearchProgress | None = None, smallest_class: int | None = None):
    """Random search over ``SPACES[name]`` (less the parameters in ``fixed``, which stay as set), each
    configuration scored by stratified K-fold CV accuracy. knn's k is drawn no larger than
    ``smallest_class``, the rows of the smallest class in a fold's training part.

    Returns (the best configuration, unfitted, tried rows best first). ``progress`` is called after
    each trial.
    """
    FIT.check_value("search", trials)
    space = {k: v for k, v in SPACES[name].items() if k.removeprefix("clf__") not in (fixed or {})}
    if name == "knn" and smallest_class is not None:
        space["clf__n_neighbors"] = randint(1, max(1, min(50, smallest_class)) + 1)
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    tried = []
    best = -np.inf
    # With every parameter fixed there is nothing to draw: one trial of the model as set.
    candidates = list(ParameterSampler(space, n_iter=trials, random_state=seed)) if space else [{}]
    for i, params in enumerate(candidates):
        scores = cross_val_score(clone(model).set_params(**params), X, y, cv=cv, n_jobs=1, error_score="raise")
        tried.append({
            "params": {k.removeprefix("clf__").removeprefix("estimator__"): _plain(v) for k, v in params.items()},
            "cv_accuracy": float(scores.mean()),
            "cv_std": float(scores.std()),
            "_raw": params,
        })
        best = max(best, float(scores.mean()))
        if progress is not None:
            progress(name, i + 1, len(candidates), best)
    tried.sort(key=lambda t: -t["cv_accuracy"])  # stable: the earlier trial wins a tie
    winner = clone(model).set_params(**tried[0]["_raw"])
    for t in tried:
        del t["_raw"]
    return winner, tried


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v
