"""Comparing classifiers on the training rows only: each fitted on part of them and scored on a validation
split (or by cross-validation, or a random search), one kept by a stated rule (:func:`choose`)."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from ..errors import FeatpipeError, UsageError
from .config import FitConfig
from .estimators import SIMPLICITY, STREAMING, CannotFit, make_classifier
from .fitter import Fitter
from .metrics import evaluate_rows
from .rows import Rows
from .search import SearchProgress, cross_validate, random_search
from .split import validation_split

log = logging.getLogger(__name__)

# Two classifiers whose selection accuracies differ by less than this are tied; the simpler one wins.
TIE = 0.005


@dataclass
class FitRow:
    classifier: str
    metrics: dict | None  # on the test rows; None for a classifier that was compared but not refitted
    fit_seconds: float
    path: Path | None = None
    cv: tuple[float, float] | None = None  # mean, std of CV accuracy on the training rows
    tried: list[dict] | None = None  # random-search trials, best first
    validation: dict | None = None  # metrics on the validation rows (no --cv)
    reason: str | None = None  # why this classifier was skipped

    @property
    def score(self) -> float | None:
        """What the classifiers are compared on: CV accuracy, else validation accuracy."""
        if self.cv is not None:
            return self.cv[0]
        return self.validation["accuracy"] if self.validation is not None else None


def _smallest_class(y: np.ndarray, folds: int | None) -> int:
    """Rows of the smallest class in every set a classifier is fitted on (a CV fold's training part, when folds)."""
    n = int(np.bincount(y)[np.unique(y)].min())
    return n - math.ceil(n / folds) if folds else n


def _reason(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if isinstance(exc, CannotFit) else f"{type(exc).__name__}: {text[0] if text else ''}"


def choose(rows: list[FitRow], by: str) -> tuple[str, str]:
    """The classifier to keep, and the rule that chose it, in words.

    Rule: the highest score (``by`` names it); classifiers within TIE of it are tied,
    and the simplest of them (SIMPLICITY order) wins.
    """
    scores = {r.classifier: r.score for r in rows if r.reason is None and r.score is not None}
    top = max(scores.values())
    tied = [name for name, score in scores.items() if score >= top - TIE]
    best = min(tied, key=lambda n: SIMPLICITY.index(n) if n in SIMPLICITY else len(SIMPLICITY))
    rule = (f"highest {by}; within {100 * TIE:.1f} points counts as a tie, won by the simpler model "
            f"({' < '.join(n for n in SIMPLICITY)})")
    return best, rule


@dataclass
class Comparison:
    """Each classifier's row, its settings unfitted (to refit on all training rows), the one kept and why."""

    rows: list[FitRow]
    models: dict[str, Pipeline]
    best: str
    rule: str
    n_validation: int  # training rows held out for the comparison (0 with CV, or one classifier)


def compare(config: FitConfig, classes: list[str], train: Rows, folds: int | None, fitter: Fitter,
            plus_views: Callable[[Rows], Rows], head: dict, progress: SearchProgress | None) -> Comparison:
    """Fit and score every classifier of ``config`` on the training rows ``train`` (by CV with ``folds``, else on
    a validation split of them; one classifier alone is not scored), and choose one. A classifier that cannot run
    on these rows is kept with its reason; ``plus_views`` adds augmented views to rows it fits on.

    Raises:
        UsageError: no classifier could run.
    """
    several = len(config.classifiers) > 1
    if folds:
        fit_rows, val = train, None
        by = f"{folds}-fold CV accuracy on the training rows"
    elif several:
        fit_rows, val = validation_split(train, config.validation_size, config.seed)
        by = f"validation accuracy ({len(val)} of the {len(train)} training rows, held out)"
    else:  # one classifier: nothing to choose between, so no rows are held out
        fit_rows, val, by = train, None, ""
    smallest = _smallest_class(fit_rows.labels, folds)
    rows: list[FitRow] = []
    models: dict[str, Pipeline] = {}  # unfitted: the settings to refit on all training rows
    for name in config.classifiers:
        t0 = time.perf_counter()
        row = FitRow(name, None, 0.0)
        try:
            model = make_classifier(name, seed=config.seed, smallest_class=smallest,
                                    **(head if name in STREAMING else {}))
            models[name] = model
            if config.search:
                models[name], row.tried = random_search(
                    name, model, fitter.X(train), train.labels, config.search, folds, config.seed,
                    fixed=head if name in STREAMING else None, progress=progress, smallest_class=smallest)
                row.cv = (row.tried[0]["cv_accuracy"], row.tried[0]["cv_std"])
            elif folds:
                row.cv = cross_validate(model, fitter.X(train), train.labels, folds, config.seed)
            elif val is not None:
                row.validation = evaluate_rows(fitter(name, clone(model), plus_views(fit_rows)), val, classes)
        except FeatpipeError as exc:
            if not isinstance(exc, CannotFit):
                raise
            row.reason = _reason(exc)
        except (ValueError, ArithmeticError, np.linalg.LinAlgError) as exc:  # this model on these rows
            row.reason = _reason(exc)
        row.fit_seconds = time.perf_counter() - t0
        if row.reason:
            log.info("%s skipped: %s", name, row.reason)  # the table shows it
        rows.append(row)
    if all(r.reason for r in rows):
        raise UsageError("no classifier could run on these rows: "
                         + "; ".join(f"{r.classifier}: {r.reason}" for r in rows))
    best, rule = choose(rows, by) if several or folds else (rows[0].classifier, "the only classifier")
    return Comparison(rows, models, best, rule, len(val) if val is not None else 0)
