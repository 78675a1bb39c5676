"""Fit: train one or several classifiers on a feature file, choose one honestly, save it.

The test rows are touched once, to report. Classifiers are compared on a
validation split of the training rows (or by cross-validation within them,
with --cv or --search); the winner is chosen by a stated rule, refitted on all
training rows, and only then evaluated on the test rows.
"""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline

from .._util import available_memory, pyplot
from ..errors import FeatpipeError, UsageError
from ..files import classifier as modelfile
from ..settings import FIT, HEAD, literal, shown
from ..store import FeatureSet, load
from .classes import rows_for_model
from .estimators import SIMPLICITY, STREAMING, CannotFit, make_classifier
from .metrics import evaluate_rows, plot_confusion
from .rows import FileRows, Rows, labelled_file_rows, with_views
from .search import SearchProgress, check_folds, cross_validate, random_search

log = logging.getLogger(__name__)

# Two classifiers whose selection accuracies differ by less than this are tied; the simpler one wins.
TIE = 0.005


@dataclass(frozen=True)
class HeadSettings:
    """Training settings of the PyTorch heads (`linear`, `mlp`); None keeps each head's default."""

    lr: float | None = None
    optimizer: str | None = None  # settings.OPTIMIZERS
    schedule: str | None = None  # settings.SCHEDULES
    epochs: int | None = None
    batch_size: int | None = None
    weight_decay: float | None = None

    def params(self) -> dict:
        """The set values, as head parameters."""
        names = {"epochs": "max_epochs"}
        return {names.get(k, k): v for k, v in vars(self).items() if v is not None}

    def check(self) -> None:
        """Raises SettingError naming the field (``HeadSettings.lr``), its allowed values and the value given."""
        HEAD.check(self)


@dataclass(frozen=True)
class FitConfig:
    """Settings of `featpipe fit`."""

    features: Path
    output: Path | None
    classifiers: tuple[str, ...] = ("logreg",)
    layer: str | None = None
    test_size: float = 0.2
    test: Path | None = None  # a second feature file as the test set, instead of a split
    seed: int = 0
    keep_all: bool = False
    report: Path | None = None
    cv: int | None = None  # compare by stratified K-fold CV accuracy on the training rows
    search: int | None = None  # random-search trials (with --cv folds, default 5), best refitted on all training rows
    # The PyTorch heads read mini-batches from the file (memory bounded by the batch size). None:
    # only when the features would not fit in memory.
    stream: bool | None = None
    validation_size: float = 0.2  # without --cv: fraction of the training rows the classifiers are compared on
    head: HeadSettings = HeadSettings()
    # Train on the training images' augmented views too (extract --augment); validation and test rows stay
    # originals, and the split is by image, so no view of a held-out image is trained on.
    use_augmented: bool = False


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


def _no_rows(fs: FeatureSet, skipped: int, role: str) -> UsageError:
    return UsageError(f"{fs.path.name} has no valid, labelled rows for {role} ({skipped} of {len(fs)} rows are "
                      f"invalid or unlabelled); see `featpipe info {fs.path} --errors`")


def _labelled(config: FitConfig, fs: FeatureSet, layer: str) -> tuple[FileRows, FileRows | None, int]:
    """The training file's labelled rows, the --test file's (labels renumbered by class name into the
    training file's classes) or None, and how many rows were skipped."""
    rows, skipped = labelled_file_rows(fs, layer, "training")
    if not len(rows):
        raise _no_rows(fs, skipped, "training")
    y = rows.labels
    if len(np.unique(y)) < 2:
        raise UsageError(f"{fs.path.name} has one class only ({fs.classes[int(y[0])]!r}); a classifier needs two or more")
    if config.test is None:
        return rows, None, skipped
    test_fs = load(config.test)
    modelfile.check_same_extractor(modelfile.features_identity(fs, layer), test_fs, f"the training file {fs.path.name}")
    test, skipped_te = rows_for_model(test_fs, layer, fs.classes, "test", f"the training file {fs.path.name}")
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
    y = rows.labels  # (config's values are checked by check_config)
    counts = np.bincount(y)
    small = [fs.classes[i] for i in np.flatnonzero((counts > 0) & (counts < 2))]
    if small:
        raise UsageError(
            f"class {small[0]!r} has a single sample; a stratified split needs 2 or more per class: "
            "add images or remove the class"
        )
    train, test = split_positions(y, config.test_size, config.seed)
    return rows.subset(train), rows.subset(test)


def split_positions(y: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and the test rows among labelled rows ``y``: fit's stratified split, which
    the model file records (``test_size``, ``seed``) so that `featpipe report` finds the same rows again."""
    # Split positions, not features: the same stratified partition as splitting X itself.
    return train_test_split(np.arange(len(y)), test_size=test_size, stratify=y, random_state=seed)


def validation_split(rows: Rows, size: float, seed: int) -> tuple[Rows, Rows]:
    """(rows to fit on, rows to compare on): ``size`` of every class held out, at least one row of each
    class that has two or more, none of a class with a single row (it stays in the fitting part)."""
    FIT.check_value("validation_size", size)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(rows.labels):
        idx = rng.permutation(np.flatnonzero(rows.labels == c))
        held.extend(idx[: min(max(int(round(size * len(idx))), 1), len(idx) - 1)])
    held = np.sort(np.asarray(held, dtype=np.int64))
    keep = np.setdiff1d(np.arange(len(rows)), held)
    return rows.subset(keep), rows.subset(held)


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


def _augmented_views(config: FitConfig, fs: FeatureSet, layer: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The file's augmented views of ``layer`` and their source rows, with --use-augmented; else None."""
    if not config.use_augmented:
        return None
    if layer not in fs.augmented_layers:
        raise FIT.refuse(f"{{use_augmented}}: {literal(fs.path.name)} has no augmented views of {shown(layer)}; "
                         "extract with --augment K (for example --augment 4)")
    if config.cv or config.search:
        raise FIT.refuse("{use_augmented} compares classifiers on a validation split of the training images; "
                         "drop {cv} and {search}")
    if config.stream:
        raise FIT.refuse("{use_augmented} holds the training rows and their views in memory; drop {stream}")
    return fs.augmented(layer)


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
    if isinstance(config.head, dict):  # a notebook may give the heads' settings as a dict
        as_path["head"] = HeadSettings(**config.head)
    return replace(config, **as_path)


def check_config(config: FitConfig) -> None:
    """The settings' own values, checked before any file is read: each field against its constraint
    (settings.FIT, and settings.HEAD for ``config.head``), then whether the head settings apply.

    Raises:
        SettingError: an unknown classifier, a size outside (0, 1), cv below 2, search below 1, bad head settings;
            named ``FitConfig.<field>`` or ``HeadSettings.<field>``.
        UsageError: head settings without a head to train.
    """
    FIT.check(config, skip=("test_size",) if config.test is not None else ())  # a test file replaces the split
    _head_params(config)


def _head_params(config: FitConfig) -> dict:
    """The heads' settings from ``config.head``, checked; refused when no head is fitted."""
    config.head.check()
    params = config.head.params()
    if params and not any(name in STREAMING for name in config.classifiers):
        given = ", ".join(k for k, v in vars(config.head).items() if v is not None)
        raise FIT.refuse(f"{{classifiers}} {shown(','.join(config.classifiers))} has no linear or mlp head for the "
                         f"heads' settings ({given}) to train; add linear or mlp, or drop those settings")
    return params


class _Fitter:
    """Fits one classifier on some rows: streamed from the file or in memory (each set read once)."""

    def __init__(self, stream: bool):
        self.stream = stream
        self._read: dict[int, tuple[Rows, np.ndarray]] = {}

    def X(self, rows: Rows) -> np.ndarray:
        if id(rows) not in self._read:
            self._read[id(rows)] = (rows, rows.read())  # the rows too: their id stays theirs
        return self._read[id(rows)][1]

    def __call__(self, name: str, model: Pipeline, rows: Rows) -> Pipeline:
        if self.stream and name in STREAMING:
            return fit_streaming(model, rows)
        return model.fit(self.X(rows), rows.labels)


def fit(config: FitConfig, fingerprint: str = "", progress: SearchProgress | None = None) -> FitResult:
    """Fit the classifiers of ``config`` on the training rows, choose one, refit it, report it on the test rows.

    Selection never sees the test rows: classifiers are compared on a
    validation split of the training rows (``validation_size``), or by CV
    within them (``cv``, ``search``); see :func:`choose` for the rule. The
    winner (and with ``keep_all`` every classifier) is refitted on all training
    rows and evaluated once on the test rows. A classifier that cannot run on
    these rows is skipped with its reason. ``progress`` follows a random search.

    Raises:
        UsageError: missing labels, no valid rows, one class, NaN features, a class too small to split,
            unknown classifier, bad head settings, no classifier that could run.
    """
    config = _with_paths(config)
    if config.output is None:
        raise UsageError("fit needs --output/-o, the model file to write (only --sanity runs without one)")
    check_config(config)
    head = config.head.params()
    fs = load(config.features)
    layer = fs.resolve_layer(config.layer)
    if not config.output.parent.is_dir():
        raise UsageError(f"output folder {str(config.output.parent)!r} does not exist; create it or choose another -o")
    labelled, test_file, skipped = _labelled(config, fs, layer)
    views = _augmented_views(config, fs, layer)
    stream = _decide_stream(config, labelled)
    if stream and views is not None:
        raise FIT.refuse("{use_augmented} holds the training rows and their views in memory, and these features "
                         "would not fit; fit without it, or on a machine with more memory")
    file_rows = labelled.rows  # positions of the labelled set -> feature-file rows (for the views)
    if not stream:  # one read of each file; the split then indexes memory
        labelled, test_file = labelled.load(), test_file.load() if test_file is not None else None
    train, test = _split(config, fs, labelled, test_file)
    n_train_images = len(train)

    def plus_views(rows: Rows) -> Rows:  # training rows only: never validation or test rows
        return rows if views is None else with_views(rows, file_rows, *views, fs.y)

    folds = config.cv or (5 if config.search else None)
    if folds is not None:
        check_folds(train.labels, folds, fs.classes)
    if not len(test):
        raise UsageError(f"no valid, labelled test rows in {(config.test or config.features).name}; "
                         "give a labelled --test file with valid images")
    trained = np.unique(train.labels)
    missing = [fs.classes[int(c)] for c in trained if not np.any(test.labels == c)]
    warnings = [f"{len(missing)} class(es) have no test rows: {', '.join(map(repr, missing[:5]))}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                + "; their precision and recall are not measured, and the macro averages leave them out"] if missing else []
    if config.test is not None:
        warnings += modelfile.same_images_warning(str(fs.meta.get("images_digest", "")), load(config.test), "test")
    for w in warnings:
        log.info(w)  # the caller shows FitResult.warnings
    compare = len(config.classifiers) > 1
    if folds:
        fit_rows, val = train, None
        by = f"{folds}-fold CV accuracy on the training rows"
    elif compare:
        fit_rows, val = validation_split(train, config.validation_size, config.seed)
        by = f"validation accuracy ({len(val)} of the {len(train)} training rows, held out)"
    else:  # one classifier: nothing to choose between, so no rows are held out
        fit_rows, val, by = train, None, ""
    smallest = _smallest_class(fit_rows.labels, folds)
    fitter = _Fitter(stream)
    loaded = [name for name in config.classifiers if name not in STREAMING] if stream else []
    rows: list[FitRow] = []
    chosen: dict[str, Pipeline] = {}  # unfitted: the settings to refit on all training rows
    for name in config.classifiers:
        t0 = time.perf_counter()
        row = FitRow(name, None, 0.0)
        try:
            model = make_classifier(name, seed=config.seed, smallest_class=smallest,
                                    **(head if name in STREAMING else {}))
            chosen[name] = model
            if config.search:
                chosen[name], row.tried = random_search(
                    name, model, fitter.X(train), train.labels, config.search, folds, config.seed,
                    fixed=head if name in STREAMING else None, progress=progress, smallest_class=smallest)
                row.cv = (row.tried[0]["cv_accuracy"], row.tried[0]["cv_std"])
            elif folds:
                row.cv = cross_validate(model, fitter.X(train), train.labels, folds, config.seed)
            elif val is not None:
                row.validation = evaluate_rows(fitter(name, clone(model), plus_views(fit_rows)), val, fs.classes)
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
    best, rule = choose(rows, by) if compare or folds else (rows[0].classifier, "the only classifier")
    train = plus_views(train)
    # Where the test rows came from, for `featpipe report`: a split of the training file, or another file.
    split = ({"test_file": config.test.name} if config.test is not None
             else {"test_size": config.test_size, "seed": config.seed})
    fitted = {}
    for row in rows:
        if row.reason or not (row.classifier == best or config.keep_all):
            continue
        t0 = time.perf_counter()
        model = fitter(row.classifier, chosen[row.classifier], train)
        row.fit_seconds += time.perf_counter() - t0
        row.metrics = evaluate_rows(model, test, fs.classes)  # the one look at the test rows
        fitted[row.classifier] = model
        row.path = config.output if row.classifier == best else config.output.with_name(
            f"{config.output.stem}.{row.classifier}{config.output.suffix}")
        modelfile.save(row.path, model, fs.classes, fs, layer, row.classifier, row.metrics, fingerprint,
                       split=split)
        log.info("%s: test accuracy %.4f%s", row.classifier, row.metrics["accuracy"],
                 " (streamed from the file)" if stream and row.classifier in STREAMING else "")
    if config.report is not None:
        write_report(config.report, rows, fs.classes, fitted)
    return FitResult(rows, best, n_train_images, len(test), skipped, config.output,
                     extra={"streamed": stream, "loaded": loaded, "augmented_rows": len(train) - n_train_images},
                     rule=rule,
                     n_validation=len(val) if val is not None else 0, warnings=warnings)


SANITY_SAMPLES = 20


def sanity_check(config: FitConfig) -> list[tuple[str, float, int]]:
    """The first check of any training recipe: can each classifier overfit a tiny subset?

    Returns (classifier, training accuracy, samples) per classifier; close to
    1.0 is expected. A model that cannot overfit 20 samples has a bug, bad
    features or labels, or far too much regularisation.
    """
    config = _with_paths(config)
    FIT.check_value("classifiers", config.classifiers)
    fs = load(config.features)
    layer = fs.resolve_layer(config.layer)
    head = _head_params(config)
    rows, skipped = labelled_file_rows(fs, layer, "training")
    if not len(rows):
        raise _no_rows(fs, skipped, "the sanity check")
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


def write_report(folder: Path, rows: list[FitRow], classes: list[str], fitted: dict | None = None) -> None:
    """metrics.json (validation or CV, test, skips), a confusion matrix per classifier (on the test rows
    where it was refitted, else on the validation rows), and training curves for the PyTorch heads."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.json").write_text(json.dumps(
        {r.classifier: {**(r.metrics or {}), "test": r.metrics, "validation": r.validation, "fit_seconds": r.fit_seconds,
                        "cv": r.cv, "search": r.tried, "skipped": r.reason} for r in rows},
        indent=1))
    for r in rows:
        if r.metrics is not None:
            plot_confusion(r.metrics, classes, folder / f"confusion_{r.classifier}.png", f"{r.classifier} (test)")
        elif r.validation is not None:
            plot_confusion(r.validation, classes, folder / f"confusion_{r.classifier}.png",
                           f"{r.classifier} (validation)")
        head = (fitted or {}).get(r.classifier)
        history = getattr(head[-1], "history_", None) if head is not None else None
        if history:
            plot_history(history, folder / f"curves_{r.classifier}.png", r.classifier)


def plot_history(history: dict, path: Path, title: str) -> None:
    plt = pyplot()

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
