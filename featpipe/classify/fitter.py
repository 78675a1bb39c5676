"""Fitting one classifier on some rows: in memory, or streamed from the feature file block by block (the
PyTorch heads), and whether to stream at all (as asked, or when the features would not fit in memory)."""
from __future__ import annotations

import numpy as np
from sklearn.pipeline import Pipeline

from .._util import available_memory
from ..settings import FIT
from .config import FitConfig
from .estimators import STREAMING
from .rows import FileRows, Rows


def decide_stream(config: FitConfig, rows: Rows) -> bool:
    """Whether the PyTorch heads stream from the file: as asked, or when the features would not fit."""
    needed = len(rows) * rows.n_features * 4
    budget = available_memory() // 2
    stream = config.stream if config.stream is not None else bool(budget and needed > budget)
    if not stream:
        return False
    in_memory = [name for name in config.classifiers if name not in STREAMING]
    if config.stream is None and in_memory:
        raise FIT.refuse(
            f"the training features need {needed / 2**30:.1f} GiB, more than half the available memory, and "
            f"{', '.join(in_memory)} must hold them in memory; use linear or mlp in {{classifiers}}, which stream "
            "from the file, or turn {stream} off to try anyway")
    if config.cv or config.search:
        raise FIT.refuse("{cv} and {search} hold the features in memory; drop them to stream, or turn {stream} off")
    return True


def fit_streaming(pipeline: Pipeline, rows: FileRows) -> Pipeline:
    """Fit ``pipeline`` (preprocessing steps, then a head) on rows read from the file block by block.

    Each preprocessing step is fitted with ``partial_fit`` in one pass (a
    scaler's mean and variance), then applied to every block the head reads.
    """
    *steps, (_, head) = pipeline.steps
    for _, step in steps:
        for x, _ in rows.blocks():
            step.partial_fit(x)
        rows = rows.map(step.transform)
    head.fit_rows(rows)
    return pipeline


class Fitter:
    """Fits one classifier on some rows: streamed from the file or in memory (each set read once)."""

    def __init__(self, stream: bool):
        self.stream = stream
        self._read: dict[int, tuple[Rows, np.ndarray]] = {}

    def X(self, rows: Rows) -> np.ndarray:
        if id(rows) not in self._read:
            self._read[id(rows)] = (rows, rows.read())  # the rows too: their id stays theirs
        return self._read[id(rows)][1]

    def __call__(self, name: str, model: Pipeline, rows: Rows) -> Pipeline:
        if self.stream and name in STREAMING:
            return fit_streaming(model, rows)
        return model.fit(self.X(rows), rows.labels)
