"""Fit: train one or several classifiers on a feature file, choose one honestly, save it.

The test rows are touched once, to report. Classifiers are compared on a
validation split of the training rows (or by cross-validation within them,
with --cv or --search: compare.py); the winner is chosen by a stated rule,
refitted on all training rows, and only then evaluated on the test rows.
The settings are config.py's, the rows split.py's, fitting one classifier
fitter.py's, and ``--report``'s files fit_report.py's.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.pipeline import Pipeline

from ..errors import UsageError
from ..files import classifier as modelfile
from ..settings import FIT, literal
from ..store import FeatureSet, load
from .compare import Comparison, FitRow, compare
from .config import FitConfig, HeadSettings, check_config, head_params
from .estimators import STREAMING, make_classifier
from .fit_report import write_report
from .fitter import Fitter, decide_stream
from .metrics import evaluate_rows
from .rows import Rows, labelled_file_rows, with_views
from .search import SearchProgress, check_folds
from .split import augmented_views, labelled_rows, no_rows, test_split

# FitRow, HeadSettings, check_config and write_report live in the modules above; the command line and the
# pipeline import them from here too.
__all__ = ["FitConfig", "FitResult", "FitRow", "HeadSettings", "check_config", "fit", "sanity_check", "write_report"]

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    rows: list[FitRow]
    best: str
    n_train: int
    n_test: int
    skipped_invalid: int
    output: Path
    extra: dict = field(default_factory=dict)
    rule: str = ""  # how the best was chosen
    n_validation: int = 0  # training rows held out for the comparison (0 with --cv, or one classifier)
    warnings: list[str] = field(default_factory=list)


def fit(config: FitConfig, fingerprint: str = "", progress: SearchProgress | None = None) -> FitResult:
    """Fit the classifiers of ``config`` on the training rows, choose one, refit it, report it on the test rows.

    Selection never sees the test rows: classifiers are compared on a
    validation split of the training rows (``validation_size``), or by CV
    within them (``cv``, ``search``); see :func:`compare.choose` for the rule. The
    winner (and with ``keep_all`` every classifier) is refitted on all training
    rows and evaluated once on the test rows. A classifier that cannot run on
    these rows is skipped with its reason. ``progress`` follows a random search.

    Raises:
        UsageError: missing labels, no valid rows, one class, NaN features, a class too small to split,
            no classifier that could run (the settings themselves were checked when ``config`` was made).
    """
    if config.output is None:
        raise FIT.refuse("{output} is missing: the model file to write (only the sanity check runs without one)")
    fs = load(config.features)
    layer = fs.resolve_layer(config.layer)
    if not config.output.parent.is_dir():
        raise UsageError(f"output folder {str(config.output.parent)!r} does not exist; create it or choose another -o")
    train, test, plus_views, stream, skipped = _rows(config, fs, layer)
    folds = config.cv or (5 if config.search else None)
    if folds is not None:
        check_folds(train.labels, folds, fs.classes)
    if not len(test):
        raise FIT.refuse(f"no valid, labelled test rows in {literal((config.test or config.features).name)}; "
                         "give a labelled {test} file with valid images")
    warnings = _test_warnings(config, fs, train, test)
    for w in warnings:
        log.info(w)  # the caller shows FitResult.warnings
    fitter = Fitter(stream)
    chosen = compare(config, fs.classes, train, folds, fitter, plus_views, config.head.params(), progress)
    n_train_images = len(train)
    train = plus_views(train)
    fitted = _refit_and_save(config, fs, layer, chosen, fitter, train, test, fingerprint, stream)
    if config.report is not None:
        write_report(config.report, chosen.rows, fs.classes, fitted)
    loaded = [name for name in config.classifiers if name not in STREAMING] if stream else []
    return FitResult(chosen.rows, chosen.best, n_train_images, len(test), skipped, config.output,
                     extra={"streamed": stream, "loaded": loaded, "augmented_rows": len(train) - n_train_images},
                     rule=chosen.rule, n_validation=chosen.n_validation, warnings=warnings)


def _rows(config: FitConfig, fs: FeatureSet, layer: str) -> tuple[Rows, Rows, Callable[[Rows], Rows], bool, int]:
    """The training and the test rows (read into memory unless streamed), what adds the training images'
    augmented views to rows to fit on, whether the heads stream, and how many rows were skipped."""
    labelled, test_file, skipped = labelled_rows(config, fs, layer)
    views = augmented_views(config, fs, layer)
    stream = decide_stream(config, labelled)
    if stream and views is not None:
        raise FIT.refuse("{use_augmented} holds the training rows and their views in memory, and these features "
                         "would not fit; fit without it, or on a machine with more memory")
    file_rows = labelled.rows  # positions of the labelled set -> feature-file rows (for the views)
    if not stream:  # one read of each file; the split then indexes memory
        labelled, test_file = labelled.load(), test_file.load() if test_file is not None else None
    train, test = test_split(config, fs, labelled, test_file)

    def plus_views(rows: Rows) -> Rows:  # training rows only: never validation or test rows
        return rows if views is None else with_views(rows, file_rows, *views, fs.y)

    return train, test, plus_views, stream, skipped


def _test_warnings(config: FitConfig, fs: FeatureSet, train: Rows, test: Rows) -> list[str]:
    """What the test rows cannot tell: classes without test rows, and a test file of the training images."""
    trained = np.unique(train.labels)
    missing = [fs.classes[int(c)] for c in trained if not np.any(test.labels == c)]
    warnings = [f"{len(missing)} class(es) have no test rows: {', '.join(map(repr, missing[:5]))}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                + "; their precision and recall are not measured, and the macro averages leave them out"] if missing else []
    if config.test is not None:
        warnings += modelfile.same_images_warning(str(fs.meta.get("images_digest", "")), load(config.test), "test")
    return warnings


def _refit_and_save(config: FitConfig, fs: FeatureSet, layer: str, chosen: Comparison, fitter: Fitter, train: Rows,
                    test: Rows, fingerprint: str, stream: bool) -> dict[str, Pipeline]:
    """The chosen classifier (every one with ``keep_all``) refitted on all training rows, evaluated once on the
    test rows and saved; the fitted models by name."""
    # Where the test rows came from, for `featpipe report`: a split of the training file, or another file.
    split = ({"test_file": config.test.name} if config.test is not None
             else {"test_size": config.test_size, "seed": config.seed})
    fitted = {}
    for row in chosen.rows:
        if row.reason or not (row.classifier == chosen.best or config.keep_all):
            continue
        t0 = time.perf_counter()
        model = fitter(row.classifier, chosen.models[row.classifier], train)
        row.fit_seconds += time.perf_counter() - t0
        row.metrics = evaluate_rows(model, test, fs.classes)  # the one look at the test rows
        fitted[row.classifier] = model
        row.path = config.output if row.classifier == chosen.best else config.output.with_name(
            f"{config.output.stem}.{row.classifier}{config.output.suffix}")
        modelfile.save(row.path, model, fs.classes, fs, layer, row.classifier, row.metrics, fingerprint,
                       split=split)
        log.info("%s: test accuracy %.4f%s", row.classifier, row.metrics["accuracy"],
                 " (streamed from the file)" if stream and row.classifier in STREAMING else "")
    return fitted


SANITY_SAMPLES = 20


def sanity_check(config: FitConfig) -> list[tuple[str, float, int]]:
    """The first check of any training recipe: can each classifier overfit a tiny subset?

    Returns (classifier, training accuracy, samples) per classifier; close to
    1.0 is expected. A model that cannot overfit 20 samples has a bug, bad
    features or labels, or far too much regularisation.
    """
    fs = load(config.features)
    layer = fs.resolve_layer(config.layer)
    head = head_params(config)
    rows, skipped = labelled_file_rows(fs, layer, "training")
    if not len(rows):
        raise no_rows(fs, skipped, "the sanity check")
    y = rows.labels
    rng = np.random.default_rng(config.seed)
    # A few samples of every class, round robin, up to SANITY_SAMPLES.
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    take = [idx[i] for i in range(SANITY_SAMPLES) for idx in per_class if i < len(idx)][:SANITY_SAMPLES]
    subset = rows.subset(np.asarray(take, dtype=np.int64))  # only these rows are read
    Xs, ys = subset.read(), subset.labels
    if len(np.unique(ys)) < 2:
        raise UsageError(f"{fs.path.name} has one class only; a classifier needs two or more")
    results = []
    for name in config.classifiers:
        model = make_classifier(name, seed=config.seed)
        if name in STREAMING:  # no held-out rows to stop on: this is about fitting
            model.set_params(clf__early_stopping=False, clf__max_epochs=200, clf__batch_size=SANITY_SAMPLES,
                             **{f"clf__{k}": v for k, v in head.items()})
        if name in ("svm", "nb"):  # calibrating on 2 samples a class is meaningless; the model itself is the question
            model.set_params(clf=model.named_steps["clf"].estimator)
        results.append((name, float(model.fit(Xs, ys).score(Xs, ys)), len(ys)))
    return results
