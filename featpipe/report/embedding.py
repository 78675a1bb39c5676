"""The map: a 2-D t-SNE of the cached features, coloured by class, mistakes marked; a static PNG.

t-SNE costs grow with the rows, so past ``MAX_POINTS`` the map shows a random sample of them (every
mistake included) and says so. The features go through PCA to at most 50 dimensions first, the usual
preparation for t-SNE (less noise, much faster neighbour search). Fewer iterations and a coarser Barnes-Hut
angle than scikit-learn's defaults draw the same clusters to the eye at a fraction of the time, so that the
report costs a small share of the fit (timings: docs/benchmarks.md, "The HTML report").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAX_POINTS = 800
PCA_DIMS = 50
FILE_NAME = "map.png"
# Classes past this many share grey: a legend of hundreds of colours says nothing.
LEGEND_CLASSES = 20


@dataclass
class MapResult:
    file: str  # relative to the report folder
    size: tuple[int, int]  # width, height in pixels
    points: int  # rows on the map
    of: int  # rows there were
    marked: int  # mistakes marked


def choose_points(n: int, must: np.ndarray, seed: int, limit: int = MAX_POINTS) -> np.ndarray:
    """Sorted positions of the rows to draw: all of them up to ``limit``, else ``must`` plus a random rest."""
    if n <= limit:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    must = np.unique(must)[:limit]
    rest = np.setdiff1d(np.arange(n), must)
    return np.sort(np.concatenate([must, rng.choice(rest, limit - len(must), replace=False)]))


def embed(X: np.ndarray, seed: int) -> np.ndarray:
    """(rows, 2) t-SNE coordinates of ``X`` (after PCA to at most PCA_DIMS dimensions)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    X = np.asarray(X, dtype=np.float32)
    X = (X - X.mean(axis=0)) / np.maximum(X.std(axis=0), 1e-6)
    with threadpool_limits(1):
        if X.shape[1] > PCA_DIMS and len(X) > PCA_DIMS:
            X = PCA(PCA_DIMS, random_state=seed, svd_solver="randomized").fit_transform(X)
        perplexity = float(min(30, max(2, (len(X) - 1) / 3)))
        return TSNE(2, perplexity=perplexity, init="pca", random_state=seed, max_iter=400,
                    angle=0.8).fit_transform(X)


def draw(folder: Path, xy: np.ndarray, labels: np.ndarray, classes: list[str], wrong: np.ndarray,
         title: str) -> tuple[str, tuple[int, int]]:
    """Write the map PNG; ``wrong`` marks the points a classifier got wrong. Returns its name and size."""
    from .._util import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.6, 6.4))
    cmap = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    present = np.unique(labels)
    legend = len(present) <= LEGEND_CLASSES
    for k, c in enumerate(present):
        at = labels == c
        colour = cmap(k % cmap.N) if legend else cmap(int(c) % cmap.N)
        ax.scatter(xy[at, 0], xy[at, 1], s=9, color=colour, alpha=0.75, linewidths=0,
                   label=classes[int(c)] if legend else None)
    if wrong.any():
        ax.scatter(xy[wrong, 0], xy[wrong, 1], s=46, facecolors="none", edgecolors="black", linewidths=1.1,
                   label="misclassified")
    if legend or wrong.any():
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False, markerscale=1.5)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ("top", "right", "bottom", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title, fontsize=10)
    return FILE_NAME, save_png(fig, folder / FILE_NAME)


def save_png(fig, path: Path, dpi: int = 110) -> tuple[int, int]:
    """Write a matplotlib figure to ``path`` and close it; its (width, height) in pixels, for the page's
    ``<img>`` (an image with its size laid out before it loads does not move the page)."""
    from .._util import pyplot

    plt = pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    size = (int(round(fig.get_figwidth() * dpi)), int(round(fig.get_figheight() * dpi)))
    plt.close(fig)
    return size


def make_map(folder: Path, xy: np.ndarray, shown: np.ndarray, n: int, labels: np.ndarray, classes: list[str],
             wrong: np.ndarray, what: str) -> MapResult:
    """The map PNG in ``folder``: the rows ``shown`` (of ``n``; :func:`choose_points`) at their t-SNE
    coordinates ``xy`` (:func:`embed`), coloured by ``labels``, the rows in ``wrong`` (positions) circled."""
    is_wrong = np.isin(shown, wrong)
    part = (f"a random {len(shown)} of {n} images (every mistake included)" if len(shown) < n
            else f"{n} images")
    name, size = draw(folder, xy, labels[shown], classes, is_wrong, f"t-SNE of the {what}: {part}")
    return MapResult(name, size, len(shown), n, int(is_wrong.sum()))
