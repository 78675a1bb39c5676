"""Fit: train one or several classifiers on a feature file, compare them, save the best."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from ..errors import UsageError
from ..store import FeatureSet, load
from . import modelfile
from .estimators import STREAMING, make_classifier
from .metrics import evaluate_rows, plot_confusion
from .rows import FileRows, Rows, labelled_file_rows
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
    # The PyTorch heads read mini-batches from the file (memory bounded by the
    # batch size). None: only when the features would not fit in memory.
    stream: bool | None = None


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


def _labelled(config: FitConfig, fs: FeatureSet, layer: str) -> tuple[FileRows, FileRows | None, int]:
    """The training file's labelled rows, the --test file's (or None), and how many rows were skipped."""
    rows, skipped = labelled_file_rows(fs, layer, "training")
    y = rows.labels
    if len(np.unique(y)) < 2:
        raise UsageError(f"{fs.path.name} has one class only ({fs.classes[int(y[0])]!r}); a classifier needs two or more")
    if config.test is None:
        return rows, None, skipped
    test_fs = load(config.test)
    if test_fs.classes != fs.classes:
        raise UsageError(f"{test_fs.path.name} has classes {test_fs.classes[:5]}..., not those of {fs.path.name}")
    modelfile.check_same_extractor(modelfile.extractor_config(fs, layer), test_fs)
    test, skipped_te = labelled_file_rows(test_fs, layer, "test")
    unseen = sorted(set(test.labels.tolist()) - set(y.tolist()))
    if unseen:
        raise UsageError(
            f"test classes {[fs.classes[i] for i in unseen][:5]} never occur in training; "
            "add training images of them or drop them from the test set"
        )
    return rows, test, skipped + skipped_te


def _split(config: FitConfig, fs: FeatureSet, rows: Rows, test: Rows | None) -> tuple[Rows, Rows]:
    """Training and test rows: the --test file's, or a stratified split of ``rows``."""
    if test is not None:
        return rows, test
    if not 0 < config.test_size < 1:
        raise UsageError(f"--test-size must be between 0 and 1, got {config.test_size}")
    y = rows.labels
    counts = np.bincount(y)
    small = [fs.classes[i] for i in np.flatnonzero((counts > 0) & (counts < 2))]
    if small:
        raise UsageError(
            f"class {small[0]!r} has a single sample; a stratified split needs 2 or more per class: "
            "add images or remove the class"
        )
    # Split positions, not features: the same stratified partition as splitting X itself.
    train, test = train_test_split(np.arange(len(rows)), test_size=config.test_size, stratify=y,
                                   random_state=config.seed)
    return rows.subset(train), rows.subset(test)


def available_memory() -> int:
    """Bytes this process can still allocate: the system's available memory, capped by a cgroup
    (container) limit."""
    import psutil

    free = int(psutil.virtual_memory().available)
    try:  # cgroup v2: "max", or a limit in bytes
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            free = min(free, max(0, int(limit) - used))
    except (OSError, ValueError):
        pass
    return free


def _decide_stream(config: FitConfig, rows: Rows) -> bool:
    """Whether the PyTorch heads stream from the file: as asked, or when the features would not fit."""
    needed = len(rows) * rows.n_features * 4
    budget = available_memory() // 2
    stream = config.stream if config.stream is not None else bool(budget and needed > budget)
    if not stream:
        return False
    in_memory = [name for name in config.classifiers if name not in STREAMING]
    if config.stream is None and in_memory:
        raise UsageError(
            f"the training features need {needed / 2**30:.1f} GiB, more than half the available memory, and "
            f"{', '.join(in_memory)} must hold them in memory; use --classifier linear or mlp, which stream "
            "from the file, or --in-memory (stream = false in a pipeline) to try anyway"
        )
    if config.cv or config.search:
        raise UsageError("--cv and --search hold the features in memory; drop them to stream, or use --in-memory "
                         "(stream = false in a pipeline)")
    return True


def fit_streaming(pipeline: Pipeline, rows: FileRows) -> Pipeline:
    """Fit ``pipeline`` (preprocessing steps, then a head) on rows read from the file block by block.

    Each preprocessing step is fitted with ``partial_fit`` in one pass (a
    scaler's mean and variance), then applied to every block the head reads.
    """
    *steps, (_, head) = pipeline.steps
    for _, step in steps:
        for x, _ in rows.blocks():
            step.partial_fit(x)
        rows = rows.map(step.transform)
    head.fit_rows(rows)
    return pipeline


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
    labelled, test_file, skipped = _labelled(config, fs, layer)
    stream = _decide_stream(config, labelled)
    if not stream:  # one read of each file; the split then indexes memory
        labelled, test_file = labelled.load(), test_file.load() if test_file is not None else None
    train, test = _split(config, fs, labelled, test_file)
    folds = config.cv or (5 if config.search else None)
    if folds is not None:
        if folds < 2:
            raise UsageError(f"--cv must be at least 2, got {folds}")
        check_folds(train.labels, folds, fs.classes)
    if not len(test):
        raise UsageError(f"no valid, labelled test rows in {(config.test or config.features).name}; "
                         "give a labelled --test file with valid images")
    y_tr = train.labels
    loaded = [name for name in config.classifiers if name not in STREAMING] if stream else []
    if not stream or loaded:
        X_tr = train.read()
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
        elif stream and name in STREAMING:
            fit_streaming(model, train)
        else:
            if folds:
                cv = cross_validate(model, X_tr, y_tr, folds, config.seed)
            model.fit(X_tr, y_tr)
        seconds = time.perf_counter() - t0
        metrics = evaluate_rows(model, test, fs.classes)
        rows.append(FitRow(name, metrics, seconds, cv=cv, tried=tried))
        fitted[name] = model
        log.info("%s: accuracy %.4f in %.1f s%s", name, metrics["accuracy"], seconds,
                 " (streamed from the file)" if stream and name in STREAMING else "")
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
    return FitResult(rows, best, len(train), len(test), skipped, config.output, extra={"streamed": stream, "loaded": loaded})


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
    rows, _ = labelled_file_rows(fs, layer, "training")
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
