"""Fit: train one or several classifiers on a feature file, compare them, save the best."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from ..errors import UsageError
from ..store import FeatureSet, load
from . import modelfile
from .estimators import make_classifier
from .metrics import evaluate, plot_confusion
from .search import check_folds, cross_validate, random_search

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FitConfig:
    """Settings of `featpipe fit`."""

    features: Path
    output: Path
    classifiers: tuple[str, ...] = ("logreg",)
    layer: str | None = None
    test_size: float = 0.2
    test: Path | None = None  # a second feature file as the test set, instead of a split
    seed: int = 0
    keep_all: bool = False
    report: Path | None = None
    cv: int | None = None  # stratified K-fold CV accuracy on the training rows
    search: int | None = None  # random-search trials (with --cv folds, default 5), best refitted on all training rows


@dataclass
class FitRow:
    classifier: str
    metrics: dict
    fit_seconds: float
    path: Path | None = None
    cv: tuple[float, float] | None = None  # mean, std
    tried: list[dict] | None = None  # random-search trials, best first


@dataclass
class FitResult:
    rows: list[FitRow]
    best: str
    n_train: int
    n_test: int
    skipped_invalid: int
    output: Path
    extra: dict = field(default_factory=dict)


def labelled_rows(fs: FeatureSet, layer: str, role: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Valid, labelled rows of ``layer`` as (X, y); checks that they can be learned from."""
    if not fs.classes or (fs.y < 0).all():
        raise UsageError(f"{fs.path.name} ({role}) has no labels; extract from class folders or a CSV with a label column")
    keep = fs.valid & (fs.y >= 0)
    X, y = fs.X(layer)[keep], fs.y[keep]
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        first = fs.paths[int(np.flatnonzero(keep)[np.flatnonzero(bad)[0]])]
        raise UsageError(
            f"{int(bad.sum())} valid rows of {fs.path.name} hold NaN or infinite features (first: {first!r}); "
            "extract again, or use --dtype float32 if float16 overflowed"
        )
    return X.astype(np.float32, copy=False), y, int((~keep).sum())


def _split(config: FitConfig, fs: FeatureSet, layer: str):
    X, y, skipped = labelled_rows(fs, layer, "training")
    if len(np.unique(y)) < 2:
        raise UsageError(f"{fs.path.name} has one class only ({fs.classes[int(y[0])]!r}); a classifier needs two or more")
    if config.test is not None:
        test_fs = load(config.test)
        if test_fs.classes != fs.classes:
            raise UsageError(f"{test_fs.path.name} has classes {test_fs.classes[:5]}..., not those of {fs.path.name}")
        modelfile.check_same_extractor(modelfile.extractor_config(fs, layer), test_fs)
        X_te, y_te, skipped_te = labelled_rows(test_fs, layer, "test")
        unseen = sorted(set(y_te.tolist()) - set(y.tolist()))
        if unseen:
            raise UsageError(
                f"test classes {[fs.classes[i] for i in unseen][:5]} never occur in training; "
                "add training images of them or drop them from the test set"
            )
        return X, y, X_te, y_te, skipped + skipped_te
    if not 0 < config.test_size < 1:
        raise UsageError(f"--test-size must be between 0 and 1, got {config.test_size}")
    counts = np.bincount(y)
    small = [fs.classes[i] for i in np.flatnonzero((counts > 0) & (counts < 2))]
    if small:
        raise UsageError(
            f"class {small[0]!r} has a single sample; a stratified split needs 2 or more per class: "
            "add images or remove the class"
        )
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=config.test_size, stratify=y, random_state=config.seed)
    return X_tr, y_tr, X_te, y_te, skipped


def _with_paths(config: FitConfig) -> FitConfig:
    """Strings are fine from a notebook: make every path a Path."""
    as_path = {k: Path(v) for k in ("features", "output", "test", "report") if (v := getattr(config, k)) is not None}
    return replace(config, **as_path)


def fit(config: FitConfig, fingerprint: str = "") -> FitResult:
    """Fit every classifier of ``config`` on the training rows, evaluate on the test rows, save the best.

    Raises:
        UsageError: missing labels, one class, NaN features, a class too small to split, unknown classifier.
    """
    config = _with_paths(config)
    fs = load(config.features)
    layer = fs.resolve_layer(config.layer)
    for name in config.classifiers:
        make_classifier(name)  # unknown names fail before any training
    if not config.output.parent.is_dir():
        raise UsageError(f"output folder {str(config.output.parent)!r} does not exist; create it or choose another -o")
    X_tr, y_tr, X_te, y_te, skipped = _split(config, fs, layer)
    folds = config.cv or (5 if config.search else None)
    if folds is not None:
        if folds < 2:
            raise UsageError(f"--cv must be at least 2, got {folds}")
        check_folds(y_tr, folds, fs.classes)
    extractor = modelfile.extractor_config(fs, layer)
    rows: list[FitRow] = []
    fitted = {}
    for name in config.classifiers:
        model = make_classifier(name, seed=config.seed)
        t0 = time.perf_counter()
        cv = tried = None
        if config.search:
            model, tried = random_search(name, model, X_tr, y_tr, config.search, folds, config.seed)
            cv = (tried[0]["cv_accuracy"], tried[0]["cv_std"])
        else:
            if folds:
                cv = cross_validate(model, X_tr, y_tr, folds, config.seed)
            model.fit(X_tr, y_tr)
        seconds = time.perf_counter() - t0
        metrics = evaluate(model, X_te, y_te, fs.classes)
        rows.append(FitRow(name, metrics, seconds, cv=cv, tried=tried))
        fitted[name] = model
        log.info("%s: accuracy %.4f in %.1f s", name, metrics["accuracy"], seconds)
    best = max(rows, key=lambda r: (r.metrics["accuracy"], -r.metrics["log_loss"])).classifier
    for row in rows:
        if row.classifier == best:
            row.path = config.output
        elif config.keep_all:
            row.path = config.output.with_name(f"{config.output.stem}.{row.classifier}{config.output.suffix}")
        if row.path is not None:
            modelfile.save(row.path, fitted[row.classifier], fs.classes, extractor, row.classifier, row.metrics,
                           fingerprint)
    if config.report is not None:
        write_report(config.report, rows, fs.classes, fitted)
    return FitResult(rows, best, len(y_tr), len(y_te), skipped, config.output)


SANITY_SAMPLES = 20


def sanity_check(config: FitConfig) -> list[tuple[str, float, int]]:
    """The first check of any training recipe: can each classifier overfit a tiny subset?

    Returns (classifier, training accuracy, samples) per classifier; close to
    1.0 is expected. A model that cannot overfit 20 samples has a bug, bad
    features or labels, or far too much regularisation.
    """
    config = _with_paths(config)
    fs = load(config.features)
    layer = fs.resolve_layer(config.layer)
    X, y, _ = labelled_rows(fs, layer, "training")
    rng = np.random.default_rng(config.seed)
    # A few samples of every class, round robin, up to SANITY_SAMPLES.
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)]
    take = [idx[i] for i in range(SANITY_SAMPLES) for idx in per_class if i < len(idx)][:SANITY_SAMPLES]
    Xs, ys = X[take], y[take]
    if len(np.unique(ys)) < 2:
        raise UsageError(f"{fs.path.name} has one class only; a classifier needs two or more")
    results = []
    for name in config.classifiers:
        model = make_classifier(name, seed=config.seed)
        if name in ("linear", "mlp"):  # no held-out rows to stop on: this is about fitting
            model.set_params(clf__early_stopping=False, clf__max_epochs=200, clf__batch_size=SANITY_SAMPLES)
        if name == "svm":  # calibrating on 2 samples a class is meaningless; the SVM itself is the question
            model.set_params(clf=model.named_steps["clf"].estimator)
        results.append((name, float(model.fit(Xs, ys).score(Xs, ys)), len(ys)))
    return results


def write_report(folder: Path, rows: list[FitRow], classes: list[str], fitted: dict | None = None) -> None:
    """metrics.json, a confusion matrix per classifier, and training curves for the PyTorch heads."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(
        {r.classifier: {**r.metrics, "fit_seconds": r.fit_seconds, "cv": r.cv, "search": r.tried} for r in rows},
        indent=1))
    for r in rows:
        plot_confusion(r.metrics, classes, folder / f"confusion_{r.classifier}.png", r.classifier)
        head = (fitted or {}).get(r.classifier)
        history = getattr(head[-1], "history_", None) if head is not None else None
        if history:
            plot_history(history, folder / f"curves_{r.classifier}.png", r.classifier)


def plot_history(history: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, ax in (("loss", a), ("accuracy", b)):
        ax.plot(history[f"train_{key}"], label="train")
        if history[f"val_{key}"]:
            ax.plot(history[f"val_{key}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
