"""Linear probes: cross-validated logistic regression on features, compared fold by fold.

Every feature set is scored on the same stratified folds, so two layers are
compared by their per-fold differences (paired), which cancels most of the
noise that comes from which images landed in which fold. The spread of those
differences uses Nadeau and Bengio's correction for the overlap of training
sets between folds (variance x (1/K + n_test/n_train) instead of 1/K): plain
K-fold standard errors are too small and would call noise a difference.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

LOGREG_C = 1.0  # scikit-learn's default L2 strength, on standardised features
MAX_ITER = 1000


@dataclass(frozen=True)
class Folds:
    """K stratified (train, test) splits of the sample's rows."""

    splits: tuple[tuple[np.ndarray, np.ndarray], ...]

    @classmethod
    def make(cls, y: np.ndarray, k: int, seed: int) -> Folds:
        cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        return cls(tuple(cv.split(np.zeros(len(y)), y)))

    @property
    def k(self) -> int:
        return len(self.splits)

    @property
    def test_over_train(self) -> float:
        n_test = np.mean([len(te) for _, te in self.splits])
        n_train = np.mean([len(tr) for tr, _ in self.splits])
        return float(n_test / n_train)


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std[std < 1e-12] = 1.0  # a constant feature says nothing; leave it at zero
    return (train - mean) / std, (test - mean) / std


def fold_accuracy(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Standardise on the training rows, fit logistic regression, score on the test rows."""
    X_train, X_test = _standardise(X[train].astype(np.float64), X[test].astype(np.float64))
    clf = LogisticRegression(C=LOGREG_C, max_iter=MAX_ITER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # accuracy settles long before the loss does
        clf.fit(X_train, y[train])
    return float((clf.predict(X_test) == y[test]).mean())


def cv_accuracies(X: np.ndarray, y: np.ndarray, folds: Folds) -> np.ndarray:
    """Accuracy on each fold's test rows."""
    return np.array([fold_accuracy(X, y, train, test) for train, test in folds.splits])


def paired_noise(a: np.ndarray, b: np.ndarray, folds: Folds) -> float:
    """Two corrected standard errors of mean(a - b): a difference smaller than this is noise."""
    d = np.asarray(a) - np.asarray(b)
    if len(d) < 2:
        return float("inf")
    var = d.var(ddof=1) * (1 / folds.k + folds.test_over_train)
    return float(2 * np.sqrt(var))


def _subset(train: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """``fraction`` of the training rows, stratified, at least one row per class."""
    picked = []
    for c in np.unique(y[train]):
        rows = train[y[train] == c]
        k = max(1, int(round(fraction * len(rows))))
        picked.append(rng.choice(rows, size=k, replace=False))
    return np.sort(np.concatenate(picked))


def learning_curve(X: np.ndarray, y: np.ndarray, folds: Folds, fractions: tuple[float, ...], seed: int,
                   full: np.ndarray | None = None) -> list[np.ndarray]:
    """Per-fold accuracies when each fold trains on ``fraction`` of its training rows (tested on all its test rows).

    ``full`` reuses already computed accuracies for fraction 1.
    """
    rng = np.random.default_rng(seed)
    curve = []
    for fraction in fractions:
        if fraction >= 1 and full is not None:
            curve.append(np.asarray(full))
            continue
        curve.append(np.array([
            fold_accuracy(X, y, _subset(train, y, fraction, rng), test) for train, test in folds.splits
        ]))
    return curve
