"""Likely label errors: cleanlab's confident learning on out-of-fold probabilities of cached features.

Every labelled row gets class probabilities from a logistic regression that never saw it
(stratified K-fold), and cleanlab's ``find_label_issues`` (Northcutt et al., "Confident Learning",
JAIR 2021) picks the rows whose given label the other rows contradict, ranked by their label
quality (the probability of the given label: self-confidence), worst first.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError

FOLDS = 5
CSV_NAME = "label_issues.csv"


@dataclass
class LabelIssues:
    rows: np.ndarray  # positions in the labelled rows, worst first
    given: np.ndarray  # class index per issue
    suggested: np.ndarray  # class index per issue: the most probable class out of fold
    score: np.ndarray  # label quality in [0, 1]: the out-of-fold probability of the given label (low: suspect)
    checked: int  # rows that were checked (those of classes with at least two rows)
    folds: int


def out_of_fold_proba(X: np.ndarray, y: np.ndarray, n_classes: int, seed: int = 0, folds: int = FOLDS) -> np.ndarray:
    """(rows, n_classes) probabilities of each row from a logistic regression trained on the other folds.

    Raises:
        UsageError: fewer than two classes with two rows or more.
    """
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold
    from threadpoolctl import threadpool_limits

    from ..classify.estimators import make_classifier

    counts = np.bincount(y, minlength=n_classes)
    if (counts >= 2).sum() < 2:
        raise UsageError("likely label errors need two classes with two labelled rows or more")
    k = int(min(folds, counts[counts >= 2].min()))
    model = make_classifier("logreg", seed=seed)
    proba = np.zeros((len(y), n_classes))
    # Folds over the classes with two rows or more; a class's single row is predicted by a model of all those.
    pooled, single = np.flatnonzero(counts[y] >= 2), np.flatnonzero(counts[y] < 2)
    # One BLAS thread per fit: small matrices, and threads on a busy machine cost more than they give.
    with threadpool_limits(1):
        splits = [(pooled[a], pooled[b]) for a, b in
                  StratifiedKFold(k, shuffle=True, random_state=seed).split(X[pooled], y[pooled])]
        for train, test in splits + ([(pooled, single)] if len(single) else []):
            fitted = clone(model).fit(X[train], y[train])
            proba[np.ix_(test, fitted.classes_)] = fitted.predict_proba(X[test])
    return proba


def find(y: np.ndarray, proba: np.ndarray, folds: int = FOLDS) -> LabelIssues:
    """The likely label errors among rows with labels ``y`` and out-of-fold probabilities ``proba``.

    Classes with a single row cannot be checked (there is nothing to compare them with): their rows
    are left out.
    """
    from cleanlab.filter import find_label_issues

    counts = np.bincount(y, minlength=proba.shape[1])
    checked = np.flatnonzero(counts[y] >= 2)
    present = np.flatnonzero(counts >= 2)
    # cleanlab wants labels 0..K-1 with every class present: renumber the checked classes.
    renumber = np.full(proba.shape[1], -1)
    renumber[present] = np.arange(len(present))
    labels = renumber[y[checked]]
    p = proba[np.ix_(checked, present)]
    p = p / np.clip(p.sum(axis=1, keepdims=True), 1e-12, None)
    # n_jobs=1: cleanlab's default starts a process per physical core, which costs far more than the ranking
    # itself on a report's few thousand rows (its results are the same whatever n_jobs, as its docs say); and a
    # fork of a process that holds torch and threads is best avoided.
    ranked = find_label_issues(labels, p, return_indices_ranked_by="self_confidence", n_jobs=1)
    ranked = np.asarray(ranked, dtype=np.int64)
    rows = checked[ranked]
    return LabelIssues(rows=rows, given=y[rows], suggested=present[p[ranked].argmax(axis=1)],
                       score=p[ranked, labels[ranked]], checked=len(checked), folds=folds)


def write_csv(path: Path, issues: LabelIssues, paths: list[str], classes: list[str]) -> None:
    """label_issues.csv: path, given, suggested, score (label quality: lower is more suspect), worst first."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "given", "suggested", "score"])
        for i, g, s, q in zip(issues.rows.tolist(), issues.given.tolist(), issues.suggested.tolist(),
                              issues.score.tolist(), strict=True):
            w.writerow([paths[i], classes[g], classes[s], f"{q:.4f}"])
