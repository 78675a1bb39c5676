"""The learning-rate range test: raise the rate exponentially, watch the loss, pick a rate.

Train a head for one short run whose learning rate grows exponentially from
``start``, by a factor of 10 every ``steps / log10(1 / start)`` mini-batches,
until the loss diverges. The loss first stays flat (rate too small), then
falls, then explodes (rate too large). The rule: suggest a tenth of the rate
at the lowest smoothed loss, which sits on the falling slope, safely below
divergence. That one rate can be passed to `featpipe fit --lr`.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.preprocessing import StandardScaler
from torch import nn

from .._util import pyplot
from ..errors import UsageError
from ..settings import LR_FIND
from .heads import LinearHead, MLPHead, lone_rows_train, make_optimizer
from .rows import Rows

RULE = "a tenth of the rate at the lowest smoothed loss"
DIVERGED = 4.0  # the smoothed loss is this many times its lowest: larger rates only get worse
MAX_LR = 100.0  # a safety stop: on separable classes Adam's loss may never diverge


@dataclass
class LRFinding:
    lrs: list[float]
    losses: list[float]  # smoothed
    suggestion: float  # RULE applied
    lowest: float  # the rate at the lowest smoothed loss
    diverged_at: float | None  # the first rate at which the loss diverged; None if it never did up to MAX_LR

    @property
    def stopped_early(self) -> bool:
        return self.diverged_at is not None

    def describe(self) -> str:
        """The suggestion with its rule, in one line."""
        where = (f"the loss diverged at {self.diverged_at:.2g}" if self.diverged_at is not None
                 else f"the loss did not diverge up to {self.lrs[-1]:.2g}")
        return (f"suggested learning rate: {self.suggestion:.2g} ({RULE}, {self.lowest:.2g}; {where}); "
                f"use it with `featpipe fit --lr {self.suggestion:.2g}`")


def lr_find(rows: Rows, head: str = "linear", optimizer: str = "adam", start: float = 1e-8, end: float = 1.0,
            steps: int = 200, batch_size: int = 64, seed: int = 0, max_lr: float = MAX_LR) -> LRFinding:
    """Run the range test on ``rows`` (in memory or streamed from the file) for a ``linear`` or ``mlp`` head.

    The rate grows from ``start`` at the pace that takes ``steps`` mini-batches to reach ``end``, and
    keeps growing past ``end`` until the loss diverges (or ``max_lr``).

    Raises:
        UsageError: bad range, step count, head or optimizer.
    """
    LR_FIND.check(head=head, optimizer=optimizer, steps=steps, batch_size=batch_size)
    if not 0 < start < end:
        raise UsageError(f"lr_find needs 0 < start < end, got start={start}, end={end}")
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
        opt = make_optimizer(optimizer, net.parameters(), start, 0.0)
        loss_fn = nn.CrossEntropyLoss()
        bs = min(batch_size, len(rows))
        skip_lone = len(rows) > 1 and not lone_rows_train(net)
        if skip_lone and bs < 2:
            raise LR_FIND.refuse(f"{{batch_size}} must be at least 2 for the mlp head (batch normalisation), got {bs}")

        def endless():  # epoch after epoch, as many as the steps need
            while True:
                for xb, yb in rows.batches(bs, gen):
                    if not (skip_lone and len(yb) == 1):  # batch norm cannot train on a lone row
                        yield torch.from_numpy(xb), torch.from_numpy(yb)

        net.train()
        batches = endless()

        def step(lr: float) -> float:
            xb, yb = next(batches)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = loss_fn(net(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return float(loss.detach())

        return range_test(step, start, end, steps, max_lr)


def range_test(step: Callable[[float], float], start: float, end: float, steps: int,
               max_lr: float = MAX_LR) -> LRFinding:
    """The range test around any training step: ``step(lr)`` trains one mini-batch at ``lr`` and returns its loss.

    The rate grows from ``start`` by the factor that reaches ``end`` in ``steps`` calls, and on past ``end``
    until the smoothed loss diverges (or ``max_lr``); then RULE picks the rate. `featpipe lr-find` and
    `featpipe finetune --lr auto` both decide here.
    """
    lrs, losses = [], []
    avg, best, diverged = 0.0, math.inf, None
    growth = (end / start) ** (1 / (steps - 1))
    total = int(math.ceil(math.log(max_lr / start) / math.log(growth))) + 1
    for i in range(total):
        lr = start * growth ** i
        avg = 0.98 * avg + 0.02 * step(lr)
        smoothed = avg / (1 - 0.98 ** (i + 1))  # bias-corrected moving average
        if not math.isfinite(smoothed) or smoothed > DIVERGED * best:
            diverged = lr
            break
        best = min(best, smoothed)
        lrs.append(lr)
        losses.append(smoothed)
    if not lrs:
        raise UsageError(f"the learning-rate range test diverged at its first rate ({start:.2g}): the loss was "
                         "not finite; check the labels and the input")
    lowest = float(lrs[int(np.argmin(losses))])
    return LRFinding(lrs, losses, suggestion=lowest / 10, lowest=lowest, diverged_at=diverged)


def plot_lr_find(finding: LRFinding, path: Path, title: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(finding.lrs, finding.losses)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss (smoothed)")
    ax.axvline(finding.suggestion, color="tab:red", linestyle="--", label=f"suggested {finding.suggestion:.2g}")
    ax.axvline(finding.lowest, color="tab:green", linestyle=":", label=f"lowest loss {finding.lowest:.2g}")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
