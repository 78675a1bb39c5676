"""The guide's sample: a stratified subset of the labelled images, the same for every run with the same seed."""
from __future__ import annotations

import numpy as np

from ..errors import UsageError
from ..settings import GUIDE, shown


def class_counts(labels: np.ndarray, classes: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Labelled images per class name (classes with none are left out)."""
    counts = np.bincount(labels[labels >= 0], minlength=len(classes))
    return {name: int(k) for name, k in zip(classes, counts, strict=True) if k}


def check_labels(labels: np.ndarray, classes, folds: int, what: str) -> dict[str, int]:
    """The per-class counts of ``labels``, or a one-line error when the guide cannot cross-validate on them.

    Raises:
        UsageError: no labels, a single class, or a class with fewer images than ``folds``.
    """
    counts = class_counts(labels, classes)
    if not counts:
        raise UsageError(
            f"{what} has no labels; the guide compares layers by how well they predict labels: "
            "give an ImageFolder tree (one subfolder per class) or a CSV with a label column"
        )
    if len(counts) < 2:
        raise UsageError(
            f"{what} has one class ({next(iter(counts))!r}); the guide needs two or more classes to compare layers"
        )
    small = {name: k for name, k in counts.items() if k < folds}
    if small:
        name, k = min(small.items(), key=lambda item: item[1])
        raise GUIDE.refuse(f"class {shown(name)} has {k} image(s), fewer than the {folds} cross-validation folds "
                           f"({len(small)} class(es) this small); add images, remove the class, or lower {{cv}} "
                           "(at least 2)", folds)
    return counts


def stratified_sample(labels: np.ndarray, size: int, seed: int, min_per_class: int) -> np.ndarray:
    """Sorted row indices of ``size`` labelled rows (all of them if there are fewer).

    Every class first gets ``min_per_class`` rows (or all it has), so that
    cross-validation can stratify; the rest of the sample is shared among the
    classes in proportion to the rows each has left, largest remainders first.
    """
    rows = np.flatnonzero(labels >= 0)
    if size >= len(rows):
        return rows
    present, counts = np.unique(labels[rows], return_counts=True)
    take = np.minimum(counts, min_per_class)
    left = counts - take
    share = left * max(0, size - take.sum()) / max(1, left.sum())
    take += np.floor(share).astype(int)
    spare = size - take.sum()
    for i in np.argsort(-(share - np.floor(share)), kind="stable")[:max(0, spare)]:
        take[i] += 1
    rng = np.random.default_rng(seed)
    picked = [rng.choice(rows[labels[rows] == c], size=k, replace=False) for c, k in zip(present, take, strict=True)]
    return np.sort(np.concatenate(picked))
