"""The rows a fit learns from and is judged on: the labelled rows of the training file (and of a test file),
the stratified test split that the model file records, the validation split the classifiers are compared on,
and the training images' augmented views."""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from ..errors import UsageError
from ..files import classifier as modelfile
from ..settings import FIT, literal, shown
from ..store import FeatureSet, load
from .classes import rows_for_model
from .config import FitConfig
from .rows import FileRows, Rows, labelled_file_rows


def no_rows(fs: FeatureSet, skipped: int, role: str) -> UsageError:
    return UsageError(f"{fs.path.name} has no valid, labelled rows for {role} ({skipped} of {len(fs)} rows are "
                      f"invalid or unlabelled); see `featpipe info {fs.path} --errors`")


def labelled_rows(config: FitConfig, fs: FeatureSet, layer: str) -> tuple[FileRows, FileRows | None, int]:
    """The training file's labelled rows, the --test file's (labels renumbered by class name into the
    training file's classes) or None, and how many rows were skipped."""
    rows, skipped = labelled_file_rows(fs, layer, "training")
    if not len(rows):
        raise no_rows(fs, skipped, "training")
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


def test_split(config: FitConfig, fs: FeatureSet, rows: Rows, test: Rows | None) -> tuple[Rows, Rows]:
    """Training and test rows: the --test file's, or a stratified split of ``rows``."""
    if test is not None:
        return rows, test
    y = rows.labels  # (config's values were checked when it was made)
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


def augmented_views(config: FitConfig, fs: FeatureSet, layer: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The file's augmented views of ``layer`` and their source rows, with --use-augmented; else None."""
    if not config.use_augmented:
        return None
    if layer not in fs.augmented_layers:
        raise FIT.refuse(f"{{use_augmented}}: {literal(fs.path.name)} has no augmented views of {shown(layer)}; "
                         "extract with --augment-views K (for example --augment-views 4)")
    if config.cv or config.search:
        raise FIT.refuse("{use_augmented} compares classifiers on a validation split of the training images; "
                         "drop {cv} and {search}")
    if config.stream:
        raise FIT.refuse("{use_augmented} holds the training rows and their views in memory; drop {stream}")
    return fs.augmented(layer)
