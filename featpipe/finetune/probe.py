"""Phase 1 of LP-FT: the frozen network's pooled features, and the linear probe they give the new head.

The probe is fine-tuning's starting point and its yardstick: the head starts where logistic regression on the
frozen features ends, and the recipe's checks (input size, flips, augmentation) ask the probe what a setting does.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import models
from ..extraction.preprocess import Preprocessor
from .data import Images, data_config, make_loader

log = logging.getLogger(__name__)


def pooled(net: nn.Module, spec, loader, preprocess: Preprocessor, device,
            mirror: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features of the frozen network (the linear probe's input); of mirror images with ``mirror``."""
    tapped = models.TappedModel(net, spec, models.resolve_layers(net, spec, ["pooled"]))
    feats, labels = [], []
    net.eval()
    try:
        with torch.inference_mode():
            for pixels, y, _ in loader:
                if pixels is None:
                    continue
                if mirror:
                    pixels = torch.flip(pixels, dims=[2])  # (N, H, W, 3): W is dim 2
                x = preprocess.batch(pixels.to(device)).contiguous(memory_format=torch.channels_last)
                feats.append(tapped(x)["pooled"].float().cpu().numpy())
                labels.append(y.numpy())
    finally:
        tapped.remove_hooks()
    return np.concatenate(feats), np.concatenate(labels)


SPREAD_FLOOR_QUANTILE = 0.9  # see linear_probe


def linear_probe(head: nn.Linear, X: np.ndarray, y: np.ndarray, classes: int, C: float = 1.0) -> None:
    """Logistic regression on standardised features, folded into the head: w' = w / s, b' = b - w' . m.

    Each feature's spread is floored at the 90th percentile of the spreads, so the probe leans on the
    channels that vary most. A channel that barely varies on these images (ReLU6 channels of EfficientNet
    are often dead at a small input size) would otherwise get a weight of about 1/std, and the first
    fine-tuning step that moves it sends the logits far off; a lower floor still leaves weights large enough
    to cost accuracy in the first epoch (docs/finetune.md, "Behind the defaults", has the measurements)."""
    from sklearn.linear_model import LogisticRegression

    mean, std = X.mean(axis=0), X.std(axis=0)
    spread = std[std > 1e-12]
    std = np.maximum(std, np.quantile(spread, SPREAD_FLOOR_QUANTILE) if len(spread) else 1.0)
    clf = LogisticRegression(C=C, max_iter=1000).fit((X - mean) / std, y)
    W = np.zeros((classes, X.shape[1]))
    b = np.full(classes, -1e4)  # a class absent from the training rows is never predicted
    coef = clf.coef_ if len(clf.classes_) > 2 else np.vstack([-clf.coef_[0] / 2, clf.coef_[0] / 2])
    icpt = clf.intercept_ if len(clf.classes_) > 2 else np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
    W[clf.classes_] = coef / std
    b[clf.classes_] = icpt - (coef / std) @ mean
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(W))
        head.bias.copy_(torch.from_numpy(b))


PROBE_C = (0.001, 0.01, 0.1, 1.0)


@dataclass
class Probe:
    """The frozen network's pooled features at one input size, and the probe they give."""

    data_config: object
    preprocess: Preprocessor
    X: np.ndarray
    y: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    C: float
    loss: float  # held-out log-loss (validation rows, or cross-validated)


def probe_at(net, spec, size: int, crop_pct: float, paths, labels, train_rows, val_rows, config, device) -> Probe:
    config_at = data_config(net, spec, size, crop_pct)
    preprocess = Preprocessor(config_at)

    def rows_of(rows):
        return make_loader(Images([paths[i] for i in rows], labels[rows], preprocess), config.batch_size, False, 0)

    X, y = pooled(net, spec, rows_of(train_rows), preprocess, device)
    X_val, y_val = pooled(net, spec, rows_of(val_rows), preprocess, device) if len(val_rows) else (X[:0], y[:0])
    C, loss = probe_fit(X, y, X_val, y_val)
    return Probe(config_at, preprocess, X, y, X_val, y_val, C, loss)


def probe_strength(X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> float:
    return probe_fit(X, y, X_val, y_val)[0]


def probe_fit(X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> tuple[float, float]:
    """The probe's inverse L2 strength with the lowest validation log-loss, chosen on validation rows as
    `fit` chooses; without validation rows (--validation-size 0), by 3-fold cross-validation on the training rows
    (C=1 where a class has a single image and nothing can be held out). The probe is fine-tuning's starting
    point: one that memorises the training rows (often more features than images) is a worse start than one
    that generalises."""
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    classes = int(max(y.max(), y_val.max() if len(y_val) else 0)) + 1
    if len(y_val):
        folds = [(X, y, X_val, y_val)]
    else:
        smallest = int(np.bincount(y)[np.unique(y)].min())
        cv = StratifiedKFold(n_splits=min(3, smallest), shuffle=True, random_state=0) if smallest >= 2 else None
        folds = [(X[a], y[a], X[b], y[b]) for a, b in cv.split(X, y)] if cv else []
    # Held-out rows of a class the probe never saw say nothing about C.
    folds = [(X_fit, y_fit, X_held[keep], y_held[keep]) for X_fit, y_fit, X_held, y_held in folds
             if (keep := np.isin(y_held, np.unique(y_fit))).any()]
    if not folds:
        log.info("no held-out image of a class the probe saw: its strength is C=1, not chosen")
        return 1.0, math.nan
    losses = dict.fromkeys(PROBE_C, 0.0)
    for X_fit, y_fit, X_held, y_held in folds:
        for C in PROBE_C:
            head = nn.Linear(X.shape[1], classes)
            linear_probe(head, X_fit, y_fit, classes, C=C)
            with torch.no_grad():
                p = torch.softmax(head(torch.from_numpy(X_held).float()), 1).numpy()
            losses[C] += log_loss(y_held, p, labels=np.arange(classes)) * len(y_held)
    best = min(losses, key=losses.get)
    return best, losses[best] / sum(len(held) for _, _, _, held in folds)
