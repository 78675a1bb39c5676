"""What the guide measured and advises: the scores of each layer and model, and the whole result as --json."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import decide as rules
from .tuning import FinetuneMeasurement


@dataclass
class LayerScore:
    """One compared feature set: its per-fold CV accuracies and its LogME."""

    name: str
    dim: int
    folds: np.ndarray
    logme: float

    @property
    def mean(self) -> float:
        return float(np.mean(self.folds))

    @property
    def std(self) -> float:
        return float(np.std(self.folds, ddof=1)) if len(self.folds) > 1 else 0.0

    def to_dict(self) -> dict:
        return {"layer": self.name, "dim": self.dim, "cv_mean": self.mean, "cv_std": self.std,
                "cv_folds": [float(a) for a in self.folds], "logme": self.logme}


@dataclass
class ModelReport:
    """The sweep of one model on the sample."""

    model: str
    weights: str
    layers: list[LayerScore]  # shallow to deep
    pixels: LayerScore | None
    concat: LayerScore | None  # the best two layers side by side
    head: dict | None  # the ImageNet head on the sample: mean top-1 probability and entropy
    features: Path  # the cached feature file of the sample

    @property
    def best(self) -> LayerScore:
        return max(self.layers, key=lambda s: s.mean)

    @property
    def last(self) -> LayerScore:
        return self.layers[-1]

    def to_dict(self) -> dict:
        return {
            "model": self.model, "weights": self.weights, "best_layer": self.best.name, "best_cv_mean": self.best.mean,
            "layers": [s.to_dict() for s in self.layers],
            "pixels": self.pixels.to_dict() if self.pixels else None,
            "concat": self.concat.to_dict() if self.concat else None,
            "head": self.head, "features": str(self.features),
        }


@dataclass
class GuideResult:
    """What the guide measured and what it advises; ``to_dict()`` is the --json output."""

    input: str
    data: dict
    models: list[ModelReport]  # ranked: best first
    decision: rules.Decision
    learning_curve: list[dict]
    commands: list[str]
    cv: int
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    finetune: FinetuneMeasurement | None = None

    @property
    def chosen(self) -> ModelReport:
        return self.models[0]

    def to_dict(self) -> dict:
        d = self.decision
        chosen = self.chosen
        return {
            "input": self.input,
            "model": chosen.model,
            "weights": chosen.weights,
            "quadrant": d.quadrant,
            "data_size": d.data_size,
            "similarity": d.similarity,
            "strategy": d.strategy,
            "strategy_text": rules.STRATEGIES[d.strategy],
            "recommended_layer": d.recommended_layer,
            "features_help": d.features_help,
            "reasons": d.reasons,
            "settle": d.settle,
            "data": self.data,
            "layers": [s.to_dict() for s in chosen.layers],
            "pixels": chosen.pixels.to_dict() if chosen.pixels else None,
            "concat": chosen.concat.to_dict() if chosen.concat else None,
            "head": chosen.head,
            "learning_curve": self.learning_curve,
            "learning_curve_verdict": d.curve,
            "finetune": self.finetune.to_dict() if self.finetune else None,
            "finetune_verdict": d.finetune,
            "models": [m.to_dict() for m in self.models],
            "commands": self.commands,
            "thresholds": rules.thresholds(),
            "cv": self.cv,
            "seed": self.seed,
            "timings": self.timings,
        }
