"""Metrics on held-out rows (accuracy, log loss, calibration), and the confusion-matrix picture."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .._util import pyplot
from ..errors import UsageError
from .rows import Rows, predict_proba_rows


def evaluate(model, X: np.ndarray, y: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, log loss, macro F1 and per-class precision/recall of ``model`` on (X, y)."""
    return evaluate_proba(model.predict_proba(X), y, model.classes_, class_names)


def evaluate_rows(model, rows: Rows, class_names: list[str]) -> dict:
    """:func:`evaluate` over ``rows`` (in memory or in the file), a block at a time."""
    proba, y = predict_proba_rows(model, rows)
    return evaluate_proba(proba, y, model.classes_, class_names)


def evaluate_proba(proba: np.ndarray, y: np.ndarray, classes: np.ndarray, class_names: list[str]) -> dict:
    """The metrics of predicted probabilities ``proba`` (columns: sorted ``classes``) against labels ``y``.

    Everything comes from one confusion matrix (the same numbers as scikit-learn's
    metric functions, checked by a test, without their per-call validation, which
    costs more than the arithmetic).

    Raises:
        UsageError: ``y`` holds a class the model was never trained on.
    """
    classes = np.asarray(classes)
    y = np.asarray(y)
    true = np.searchsorted(classes, y).clip(max=len(classes) - 1)
    unknown = classes[true] != y
    if unknown.any():
        names = sorted({class_names[int(c)] for c in y[unknown]})
        raise UsageError(f"the model never saw class {names[0]!r} ({int(unknown.sum())} rows): evaluate on the "
                         "classes it was trained on, or fit again with images of every class")
    k = len(classes)
    pred = proba.argmax(axis=1)
    cm = np.bincount(true * k + pred, minlength=k * k).reshape(k, k)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=precision + recall > 0)
    eps = np.finfo(proba.dtype).eps
    p_true = np.clip(proba[np.arange(len(y)), true], eps, 1 - eps)
    # Macro averages over the classes that occur or are predicted (scikit-learn's default):
    # a class without rows here has no precision or recall to average, only a warning.
    scored = (support > 0) | (predicted > 0)
    return {
        "n": int(len(y)),
        "accuracy": float(tp.sum() / max(len(y), 1)),
        "balanced_accuracy": float(recall[support > 0].mean()) if support.any() else 0.0,
        "log_loss": float(-np.log(p_true).mean()) if len(y) else 0.0,
        "macro_f1": float(f1[scored].mean()) if scored.any() else 0.0,
        "ece": calibration_error(proba, true),
        "no_rows": [class_names[int(c)] for c in classes[support == 0]],
        "per_class": {
            class_names[int(c)]: {"precision": float(pi), "recall": float(ri), "support": int(si)}
            for c, pi, ri, si in zip(classes, precision, recall, support, strict=True)
        },
        "confusion_matrix": cm.tolist(),
    }


ECE_BINS = 15


def calibration_error(proba: np.ndarray, true: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: how far the top-class probability is from the accuracy it promises.

    Rows are binned by their top probability (``bins`` equal-width bins); ECE is
    the row-weighted mean of |accuracy - mean confidence| over the bins. 0 is
    perfectly calibrated; a model that says 1.0 and is right 90% of the time
    scores 0.1.
    """
    if not len(true):
        return 0.0
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == true
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    n = np.bincount(which, minlength=bins)
    gap = np.abs(np.bincount(which, correct, minlength=bins) - np.bincount(which, confidence, minlength=bins))
    return float(gap.sum() / len(true)) if n.any() else 0.0


# Past this many classes the plot shows only the most confused ones: a readable picture, not a wall.
PLOT_CLASSES = 25


def most_confused(cm: np.ndarray, keep: int = PLOT_CLASSES) -> np.ndarray:
    """Indices of the ``keep`` classes with the most errors (rows missed plus rows wrongly given), in
    their original order; every class when there are no more than ``keep``."""
    k = len(cm)
    if k <= keep:
        return np.arange(k)
    off = cm - np.diag(np.diag(cm))
    errors = off.sum(axis=0) + off.sum(axis=1)
    return np.sort(np.argsort(-errors, kind="stable")[:keep])


def plot_confusion(result: dict, class_names: list[str], path: Path, title: str) -> None:
    plt = pyplot()

    full = np.asarray(result["confusion_matrix"], dtype=float)
    # Rows are normalised by each class's full support, before any class is left out.
    norm = full / np.maximum(full.sum(axis=1, keepdims=True), 1)
    shown = most_confused(full)
    cm, norm = full[np.ix_(shown, shown)], norm[np.ix_(shown, shown)]
    everyone = list(result.get("per_class", {})) or class_names  # the matrix's own classes, in order
    names = [everyone[i] for i in shown]
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    part = f", the {len(shown)} most confused of {len(full)} classes" if len(shown) < len(full) else ""
    ax.set_title(f"{title}: accuracy {result['accuracy']:.3f}{part}")
    if len(names) <= 20:
        for i in range(len(cm)):
            for j in range(len(cm)):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                            color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
