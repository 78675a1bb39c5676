"""Metrics on test rows, and the confusion-matrix picture."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from .rows import Rows, predict_proba_rows


def evaluate(model, X: np.ndarray, y: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, log loss, macro F1 and per-class precision/recall of ``model`` on (X, y)."""
    return evaluate_proba(model.predict_proba(X), y, model.classes_, class_names)


def evaluate_rows(model, rows: Rows, class_names: list[str]) -> dict:
    """:func:`evaluate` over ``rows`` (in memory or in the file), a block at a time."""
    proba, y = predict_proba_rows(model, rows)
    return evaluate_proba(proba, y, model.classes_, class_names)


def evaluate_proba(proba: np.ndarray, y: np.ndarray, classes: np.ndarray, class_names: list[str]) -> dict:
    """The metrics of predicted probabilities ``proba`` (columns: ``classes``) against labels ``y``."""
    pred = np.asarray(classes)[proba.argmax(axis=1)]
    labels = list(classes)
    p, r, _, support = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    return {
        "n": int(len(y)),
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y, pred)),
        "log_loss": float(skm.log_loss(y, proba, labels=labels)),
        "macro_f1": float(skm.f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
        "per_class": {
            class_names[int(c)]: {"precision": float(pi), "recall": float(ri), "support": int(si)}
            for c, pi, ri, si in zip(labels, p, r, support)
        },
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
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
