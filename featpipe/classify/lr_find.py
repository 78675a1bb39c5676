"""The learning-rate range test: raise the rate exponentially, watch the loss, pick a rate.

Train a head for one short run whose learning rate grows from ``start`` to
``end`` over ``steps`` mini-batches. The loss first stays flat (rate too
small), then falls, then explodes (rate too large). A good rate sits where it
falls fastest, about a tenth of the rate at the lowest loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn

from ..errors import UsageError
from .heads import OPTIMIZERS, LinearHead, MLPHead, _optimizer, lone_rows_train
from .rows import Rows


@dataclass
class LRFinding:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestion: float
    steepest: float
    stopped_early: bool


def lr_find(rows: Rows, head: str = "linear", optimizer: str = "adam", start: float = 1e-8, end: float = 1.0,
            steps: int = 200, batch_size: int = 64, seed: int = 0) -> LRFinding:
    """Run the range test on ``rows`` (in memory or streamed from the file) for a ``linear`` or ``mlp`` head.

    Raises:
        UsageError: bad range, step count, head or optimizer.
    """
    if head not in ("linear", "mlp"):
        raise UsageError(f"lr-find trains a PyTorch head: --classifier linear or mlp, got {head!r}")
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if not (0 < start < end) or steps < 10:
        raise UsageError(f"need 0 < start < end and at least 10 steps, got {start}, {end}, {steps}")
    classes, y_idx = np.unique(rows.labels, return_inverse=True)
    scaler = StandardScaler()  # standardised, as the fitted pipelines are
    for x, _ in rows.blocks():
        scaler.partial_fit(x)
    rows = rows.with_labels(y_idx.astype(np.int64)).map(scaler.transform)
    template = LinearHead() if head == "linear" else MLPHead()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = template._build(rows.n_features, len(classes))
        gen = torch.Generator().manual_seed(seed)
        opt = _optimizer(optimizer, net.parameters(), start, 0.0)
        loss_fn = nn.CrossEntropyLoss()
        bs = min(batch_size, len(rows))
        skip_lone = len(rows) > 1 and not lone_rows_train(net)
        if skip_lone and bs < 2:
            raise UsageError("--batch-size must be at least 2 for the mlp head (batch normalisation)")

        def endless():  # epoch after epoch, as many as the steps need
            while True:
                for xb, yb in rows.batches(bs, gen):
                    if not (skip_lone and len(yb) == 1):  # batch norm cannot train on a lone row
                        yield torch.from_numpy(xb), torch.from_numpy(yb)

        lrs, losses = [], []
        avg, best, stopped = 0.0, math.inf, False
        net.train()
        for i, (xb, yb) in zip(range(steps), endless(), strict=False):
            lr = start * (end / start) ** (i / (steps - 1))
            for group in opt.param_groups:
                group["lr"] = lr
            loss = loss_fn(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            avg = 0.98 * avg + 0.02 * float(loss.detach())
            smoothed = avg / (1 - 0.98 ** (i + 1))  # bias-corrected moving average
            if not math.isfinite(smoothed) or smoothed > 4 * best:
                stopped = True  # diverged: larger rates only get worse
                break
            best = min(best, smoothed)
            lrs.append(lr)
            losses.append(smoothed)
    lowest = int(np.argmin(losses))
    slope = np.gradient(np.asarray(losses), np.log10(lrs))
    skip = min(len(lrs) // 10, lowest)  # the moving average is still settling at first
    steepest = float(lrs[skip + int(np.argmin(slope[skip: lowest + 1]))])
    return LRFinding(lrs, losses, suggestion=float(lrs[lowest] / 10), steepest=steepest, stopped_early=stopped)


def plot_lr_find(finding: LRFinding, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(finding.lrs, finding.losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.axvline(finding.suggestion, color="tab:red", linestyle="--", label=f"suggested {finding.suggestion:.2g}")
    ax.axvline(finding.steepest, color="tab:green", linestyle=":", label=f"steepest descent {finding.steepest:.2g}")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
