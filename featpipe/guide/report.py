"""The guide's report folder: the layer-sweep plot, the learning curve, and guide.json."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .._util import pyplot
from ..errors import UsageError
from .result import GuideResult


def write_report(result: GuideResult, folder: Path) -> list[Path]:
    """Write ``sweep.png``, ``learning_curve.png`` and ``guide.json`` into ``folder``; return their paths.

    Raises:
        UsageError: ``folder``'s parent does not exist.
    """
    folder = Path(folder)
    if not folder.parent.is_dir():
        raise UsageError(f"report folder's parent {str(folder.parent)!r} does not exist; create it or choose another --report")
    folder.mkdir(exist_ok=True)
    plt = pyplot()
    written = [_sweep_plot(result, folder / "sweep.png", plt), _curve_plot(result, folder / "learning_curve.png", plt)]
    path = folder / "guide.json"
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    written.append(path)
    return written


def _sweep_plot(result: GuideResult, path: Path, plt) -> Path:
    """CV accuracy (with its spread over folds) and LogME against depth, one line per model; pixels as a line."""
    fig, (ax_acc, ax_logme) = plt.subplots(1, 2, figsize=(11, 4.2))
    # Depth as a fraction of each network, so that models with different numbers of stages share the axis.
    for report in result.models:
        x = np.linspace(0, 1, len(report.layers))
        means = [s.mean for s in report.layers]
        stds = [s.std for s in report.layers]
        line = ax_acc.errorbar(x, means, yerr=stds, marker="o", capsize=3, label=report.model)
        ax_logme.plot(x, [s.logme for s in report.layers], marker="o", color=line[0].get_color(), label=report.model)
        if report.pixels is not None:
            ax_acc.axhline(report.pixels.mean, ls="--", color=line[0].get_color(), alpha=0.7,
                           label=f"raw pixels ({report.model})")
            ax_logme.axhline(report.pixels.logme, ls="--", color=line[0].get_color(), alpha=0.7)
    labels = [s.name for s in result.chosen.layers]
    ticks = np.linspace(0, 1, len(labels))
    for ax in (ax_acc, ax_logme):
        ax.set_xticks(ticks, labels, rotation=30, ha="right")
        ax.set_xlabel(f"depth ({result.chosen.model}'s layers)")
        ax.grid(alpha=0.3)
    best = result.decision.recommended_layer
    if best in labels:
        ax_acc.axvline(ticks[labels.index(best)], color="grey", lw=8, alpha=0.2, label=f"recommended: {best}")
    ax_acc.set_ylabel(f"{result.cv}-fold CV accuracy (logistic regression)")
    ax_logme.set_ylabel("LogME")
    ax_logme.set_title("LogME: labels read off the features (higher: easier)", fontsize=9)
    ax_acc.set_title("linear probe: what a classifier gets from each layer", fontsize=9)
    ax_acc.legend(fontsize=8)
    fig.suptitle(f"{result.decision.quadrant}: {result.decision.strategy}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curve_plot(result: GuideResult, path: Path, plt) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    rows = result.learning_curve
    ax.errorbar([r["train_images"] for r in rows], [r["cv_mean"] for r in rows], yerr=[r["cv_std"] for r in rows],
                marker="o", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("training images per fold")
    ax.set_ylabel("CV accuracy")
    ax.set_title(f"learning curve: {result.chosen.best.name} of {result.chosen.model} ({result.decision.curve})",
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
