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
from .heads import OPTIMIZERS, LinearHead, MLPHead, _optimizer


@dataclass
class LRFinding:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestion: float
    steepest: float
    stopped_early: bool


def lr_find(X: np.ndarray, y: np.ndarray, head: str = "linear", optimizer: str = "adam", start: float = 1e-8,
            end: float = 1.0, steps: int = 200, batch_size: int = 64, seed: int = 0) -> LRFinding:
    """Run the range test on (X, y) for a ``linear`` or ``mlp`` head.

    Raises:
        UsageError: bad range, step count, head or optimizer.
    """
    if head not in ("linear", "mlp"):
        raise UsageError(f"lr-find trains a PyTorch head: --classifier linear or mlp, got {head!r}")
    if optimizer not in OPTIMIZERS:
        raise UsageError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if not (0 < start < end) or steps < 10:
        raise UsageError(f"need 0 < start < end and at least 10 steps, got {start}, {end}, {steps}")
    classes, y_idx = np.unique(y, return_inverse=True)
    X = StandardScaler().fit_transform(X).astype(np.float32)  # as the fitted pipelines do
    template = LinearHead() if head == "linear" else MLPHead()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = template._build(X.shape[1], len(classes))
        gen = torch.Generator().manual_seed(seed)
        opt = _optimizer(optimizer, net.parameters(), start, 0.0)
        Xt, yt = torch.from_numpy(X), torch.from_numpy(y_idx.astype(np.int64))
        loss_fn = nn.CrossEntropyLoss()
        bs = min(batch_size, len(X))
        order = torch.randperm(len(X), generator=gen)
        lrs, losses = [], []
        avg, best, stopped = 0.0, math.inf, False
        net.train()
        for i in range(steps):
            lr = start * (end / start) ** (i / (steps - 1))
            for group in opt.param_groups:
                group["lr"] = lr
            j = (i * bs) % len(X)
            if j + bs > len(X):
                order = torch.randperm(len(X), generator=gen)
                j = 0
            idx = order[j:j + bs]
            loss = loss_fn(net(Xt[idx]), yt[idx])
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
