"""LogME against a brute-force maximisation of the same evidence, and its ranking of features."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize

from featpipe.guide.logme import logme


def dense_evidence(F: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | F, alpha, beta) / n, straight from the definition: no SVD, no shortcuts."""
    n, d = F.shape
    A = alpha * np.eye(d) + beta * F.T @ F
    m = beta * np.linalg.solve(A, F.T @ y)
    _, logdet = np.linalg.slogdet(A)
    value = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi)
             - beta / 2 * np.sum((F @ m - y) ** 2) - alpha / 2 * m @ m - logdet / 2)
    return value / n


def brute_force_logme(F: np.ndarray, labels: np.ndarray) -> float:
    scores = []
    for c in np.unique(labels):
        y = (labels == c).astype(float)
        best = -np.inf
        for start in [(0, 0), (-3, 2), (3, -2), (-6, 4), (2, 3)]:  # several starts: no reliance on one basin
            res = minimize(lambda p, y=y: -dense_evidence(F, y, np.exp(p[0]), np.exp(p[1])), start,
                           method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 20000})
            best = max(best, -res.fun)
        scores.append(best)
    return float(np.mean(scores))


@pytest.mark.parametrize("n,d,classes,seed", [(40, 5, 2, 0), (30, 12, 3, 1), (12, 20, 3, 2), (50, 3, 4, 3)])
def test_logme_is_the_maximum_evidence(n, d, classes, seed):
    """Both n > D and n < D (rank-deficient F): the fixed point lands on the maximum, within 1e-6."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    F = rng.normal(size=(n, d)) + 0.8 * labels[:, None] * rng.normal(size=d)
    assert logme(F, labels) == pytest.approx(brute_force_logme(F, labels), abs=1e-6)


def test_separable_features_rank_above_random_ones():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    random = rng.normal(size=(200, 32))
    separable = random.copy()
    separable[:, :4] += 4 * np.eye(4)[labels]
    assert logme(separable, labels) > logme(random, labels) + 0.1


def test_logme_does_not_depend_on_the_order_of_rows():
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 20)
    F = rng.normal(size=(60, 10)) + labels[:, None]
    order = rng.permutation(60)
    assert logme(F[order], labels[order]) == pytest.approx(logme(F, labels), abs=1e-9)


def test_features_that_say_nothing_still_get_a_finite_score():
    """All-zero features (a dead ReLU layer of random weights): a low score, never NaN or -inf (JSON has neither)."""
    labels = np.repeat([0, 1], 10)
    with np.errstate(divide="raise", invalid="raise"):
        nothing = logme(np.zeros((20, 3)), labels)
    assert np.isfinite(nothing) and nothing < logme(np.eye(2)[labels] + 0.01, labels)
