"""Metrics on test rows, and the confusion-matrix picture."""
from __future__ import annotations

from pathlib import Path

import numpy as np

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
    return {
        "n": int(len(y)),
        "accuracy": float(tp.sum() / max(len(y), 1)),
        "balanced_accuracy": float(recall[support > 0].mean()) if support.any() else 0.0,
        "log_loss": float(-np.log(p_true).mean()) if len(y) else 0.0,
        "macro_f1": float(f1.mean()),
        "per_class": {
            class_names[int(c)]: {"precision": float(pi), "recall": float(ri), "support": int(si)}
            for c, pi, ri, si in zip(classes, precision, recall, support, strict=True)
        },
        "confusion_matrix": cm.tolist(),
    }


def plot_confusion(result: dict, class_names: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(result["confusion_matrix"], dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.45 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(class_names)), class_names, rotation=90)
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}: accuracy {result['accuracy']:.3f}")
    if len(class_names) <= 20:
        for i in range(len(cm)):
            for j in range(len(cm)):
                if cm[i, j]:
                    ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                            color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
