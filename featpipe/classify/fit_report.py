"""`fit --report`'s files: metrics.json, a confusion matrix per classifier, and the PyTorch heads' training
curves (the HTML page is featpipe/report/'s)."""
from __future__ import annotations

import json
from pathlib import Path

from .._util import pyplot
from .compare import FitRow
from .metrics import plot_confusion


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
