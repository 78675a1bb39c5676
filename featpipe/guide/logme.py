"""LogME: how well features explain labels, without training a classifier (You et al., ICML 2021).

For each class, the one-hot column y is modelled as a Bayesian linear regression
on the features F (n x D): y = F w + noise, w ~ N(0, I/alpha), noise ~ N(0, 1/beta).
The log marginal evidence log p(y | F, alpha, beta) is maximised over the two
precisions by the paper's fixed-point iteration (MacKay's updates), which after
one SVD of F costs O(rank) per step. LogME is that maximum divided by n,
averaged over classes: higher means the labels are easier to read off the features.

The evidence, with A = alpha I + beta F^T F and m = beta A^-1 F^T y the posterior mean:

    L = D/2 log alpha + n/2 log beta - n/2 log 2 pi - beta/2 |F m - y|^2 - alpha/2 |m|^2 - 1/2 log det A

Directions of w outside F's row space change nothing but the prior, and their
terms cancel: with sigma_i the r non-zero squared singular values,
D/2 log alpha - 1/2 log det A = r/2 log alpha - 1/2 sum_i log(alpha + beta sigma_i).
"""
from __future__ import annotations

import numpy as np

MAX_ITER = 100
TOL = 1e-10  # relative change of alpha / beta between steps
TINY = 1e-300


def _evidence_per_column(z: np.ndarray, yy: float, s2: np.ndarray, n: int, alpha: float, beta: float) -> float:
    """Evidence / n for one target column, from its projection z = U^T y onto F's left singular vectors."""
    shrink = alpha / (alpha + beta * s2)
    residual = max(yy - (z @ z), 0.0) + ((shrink * z) ** 2).sum()  # |F m - y|^2
    m_norm = ((beta * np.sqrt(s2) / (alpha + beta * s2) * z) ** 2).sum()  # |m|^2
    r = len(s2)
    evidence = (
        r / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * residual
        - alpha / 2 * m_norm
        - 0.5 * np.log(alpha + beta * s2).sum()
    )
    return float(evidence / n)


def _maximise(z: np.ndarray, yy: float, s2: np.ndarray, n: int) -> tuple[float, float, float]:
    """MacKay's fixed point: alpha = gamma / |m|^2, beta = (n - gamma) / |F m - y|^2."""
    alpha, beta = 1.0, 1.0
    for _ in range(MAX_ITER):
        gamma = (beta * s2 / (alpha + beta * s2)).sum()
        m_norm = ((beta * np.sqrt(s2) / (alpha + beta * s2) * z) ** 2).sum()
        residual = max(yy - (z @ z), 0.0) + ((alpha / (alpha + beta * s2) * z) ** 2).sum()
        # Guards for degenerate columns (a target F fits exactly, or one F says nothing about):
        # the precisions stay positive, so the evidence stays finite.
        new_alpha = max(gamma / max(m_norm, 1e-300), TINY)
        new_beta = max((n - gamma) / max(residual, 1e-300), TINY)
        done = abs(new_alpha / new_beta - alpha / beta) <= TOL * (alpha / beta)
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return _evidence_per_column(z, yy, s2, n, alpha, beta), alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME of ``features`` (n, D) for integer ``labels`` (n,): mean over classes of max evidence / n.

    Features are used as given (the paper does not standardise them); rows must be finite.
    """
    F = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(F)
    U, s, _ = np.linalg.svd(F, full_matrices=False)
    keep = s > s.max(initial=0.0) * max(F.shape) * np.finfo(np.float64).eps
    U, s2 = U[:, keep], s[keep] ** 2
    scores = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        scores.append(_maximise(U.T @ y, float(y @ y), s2, n)[0])
    return float(np.mean(scores))
