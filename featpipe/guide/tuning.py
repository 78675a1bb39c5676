"""The guide's fourth measurement: does fine-tuning beat the best frozen layer, on these images?

On the same stratified sample and the same folds as the layer sweep, each of the
first FOLDS folds fine-tunes the network on its training rows with finetune's own
recipe (featpipe/finetune/recipe.py), every ``auto`` setting chosen on an inner
validation split of those training rows; the fold's held-out rows are touched once,
to score the kept epoch. The per-fold accuracies are then compared, paired, with the
best frozen layer's on the same folds, with the sweep's noise (Nadeau-Bengio).

To fit the guide's time, the measurement runs at most MAX_SIZE pixels and MAX_EPOCHS
epochs at BATCH_SIZE: a cheaper run of the same recipe. bench/guide_advice.py checks its
verdict against the full run, on data where fine-tuning pays and on data where it does not;
docs/guide.md has the figures.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FOLDS = 3  # of the sweep's folds: enough for a paired spread, within the guide's time
MAX_SIZE = 96  # pixels: the measurement's input at most (the full run's recipe may use more)
MAX_EPOCHS = 12
BATCH_SIZE = 16  # twice the optimizer steps of finetune's 32 for the same images: a fold's 320 images are few
INNER_VAL = 0.2  # of each fold's training rows: where the recipe and the epoch are chosen
MIN_PER_CLASS = 5  # training images per class in a fold's inner split, to fit a probe and choose on held-out rows


@dataclass
class FinetuneMeasurement:
    """What fine-tuning reached on the folds, against the best frozen layer on the same folds."""

    measured: bool
    why_not: str | None = None
    layer: str | None = None  # the frozen layer compared with
    folds: list[int] = field(default_factory=list)  # indexes of the sweep's folds used
    accuracies: list[float] = field(default_factory=list)  # fine-tuned, per fold
    frozen: list[float] = field(default_factory=list)  # the best frozen layer, the same folds
    noise: float | None = None
    recipe: dict = field(default_factory=dict)  # option -> value, as the printed command carries it
    folds_lr: float | None = None  # the folds' range tests' rate (geometric mean, at BATCH_SIZE)
    recipes: list[dict] = field(default_factory=list)  # each fold's recipe, with the reasons
    seconds: float = 0.0
    what: str = ""

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracies))

    @property
    def std(self) -> float:
        return _spread(self.accuracies)

    @property
    def frozen_mean(self) -> float:
        return float(np.mean(self.frozen))

    @property
    def frozen_std(self) -> float:
        return _spread(self.frozen)

    @property
    def gain(self) -> float:
        return self.mean - self.frozen_mean

    def to_dict(self) -> dict:
        if not self.measured:
            return {"measured": False, "why_not": self.why_not}
        return {"measured": True, "what": self.what, "layer": self.layer, "folds": self.folds,
                "accuracies": self.accuracies, "mean": self.mean, "std": self.std, "frozen": self.frozen,
                "frozen_mean": self.frozen_mean, "frozen_std": self.frozen_std, "gain": self.gain,
                "noise": self.noise, "recipe": self.recipe, "folds_lr": self.folds_lr, "recipes": self.recipes,
                "seconds": self.seconds}


def _spread(folds: list[float]) -> float:
    """The folds' sample standard deviation (0 for a single fold)."""
    return float(np.std(folds, ddof=1)) if len(folds) > 1 else 0.0


def skipped(why: str) -> FinetuneMeasurement:
    return FinetuneMeasurement(False, why_not=why)


def too_few(labels: np.ndarray, folds) -> str | None:
    """Why the folds leave too few images per class to fine-tune and choose on an inner split, or None."""
    smallest = min(int(np.bincount(labels[train]).min()) for train, _ in folds.splits[:FOLDS])
    need = math.ceil(MIN_PER_CLASS / (1 - INNER_VAL)) + 1
    if smallest < need:
        return (f"a class has {smallest} training images in a fold, fewer than the {need} that fine-tuning with an "
                f"inner validation split needs; a larger --sample (or more images of the smallest class) allows it")
    return None


def measure(model: str, weights: str, paths: list[str], labels: np.ndarray, classes: list[str], folds,
            frozen_layer: str, frozen_folds: np.ndarray, device: str, batch_size: int, seed: int,
            progress: Callable[[str, int, int], None] | None = None,
            full_train_images: int | None = None) -> FinetuneMeasurement:
    """Fine-tune on the first FOLDS folds' training rows; score each on its held-out rows.

    The returned recipe is what the printed `featpipe finetune` command carries: the measured settings, with
    the input size and the epochs a full run on ``full_train_images`` would take (the measurement's caps are
    for its time, not advice).

    Raises:
        UsageError, WeightsError: as for finetune (a model without a linear head, say).
    """
    import torch

    from .. import models
    from ..finetune.config import FinetuneConfig
    from ..finetune.train import predict_rows, train
    from .probe import Folds, paired_noise

    t0 = time.perf_counter()
    why = too_few(labels, folds)
    if why:
        return skipped(why)
    spec = models.resolve(model)
    base, _ = models.load_model(spec, weights, seed)
    used = list(range(min(FOLDS, folds.k)))
    config = FinetuneConfig(Path("."), Path("guide.pt"), model=model, weights=weights, device=device,
                            batch_size=BATCH_SIZE, seed=seed)
    accuracies, recipes, full_sizes = [], [], []

    def budget(recipe) -> None:
        """The measurement's cap on the recipe: at most MAX_SIZE pixels."""
        size = recipe.choices["image_size"]
        # The printed command's size: the measured one where a full run could choose it too, else the full run's.
        full_sizes.append(max([k for k in recipe.size_candidates if k <= MAX_SIZE], default=size.value))
        if size.value > MAX_SIZE:
            recipe.set("image_size", MAX_SIZE, size.auto,
                       f"{size.reason}; at most {MAX_SIZE} px in the guide's measurement")
        recipe.size_candidates = sorted({min(k, MAX_SIZE) for k in recipe.size_candidates})
        if len(recipe.size_candidates) == 1:
            recipe.set("image_size", recipe.size_candidates[0], size.auto, recipe.choices["image_size"].reason)

    for k in used:
        train_rows, test_rows = folds.splits[k]
        inner_train, inner_val = _inner_split(train_rows, labels, seed + k)
        fold_config = replace(config, epochs=_epochs(len(inner_train)))

        def fold_progress(phase, done, total, k=k):
            if progress:
                progress(f"fine-tuning fold {k + 1}/{len(used)}: {phase}", done, total)

        trained = train(fold_config, spec, copy.deepcopy(base), paths, labels, classes, inner_train, inner_val,
                        progress=fold_progress, budget=budget)
        correct = predict_rows(trained, paths, labels, test_rows, batch_size)
        accuracies.append(float(correct.mean()))
        recipes.append(trained.recipe.to_dict())
        log.info("fold %d: fine-tuned %.3f, %s %.3f", k, accuracies[-1], frozen_layer, frozen_folds[k])
        del trained
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    frozen = [float(frozen_folds[k]) for k in used]
    noise = paired_noise(np.array(accuracies), np.array(frozen), Folds(tuple(folds.splits[k] for k in used)))
    size = recipes[0]["image_size"]["value"]
    recipe = _consensus(recipes)
    recipe["image_size"] = _most_common(full_sizes)
    # The rate is left to the full run's own range test (--lr auto): like the epochs, it depends on the batch and
    # on the data's size, and the folds trained part of a sample at BATCH_SIZE. Their rate stays in guide.json.
    folds_lr = recipe.pop("lr")
    if full_train_images:
        from ..finetune.recipe import epochs_for

        recipe["epochs"] = epochs_for(full_train_images)[0]
    return FinetuneMeasurement(
        True, layer=frozen_layer, folds=used, accuracies=accuracies, frozen=frozen, noise=noise,
        recipe=recipe, recipes=recipes, folds_lr=folds_lr, seconds=time.perf_counter() - t0,
        what=(f"LP-FT ({recipes[0]['unfreeze']['value']} stages) at {size} px for at most {MAX_EPOCHS} epochs on "
              f"{len(used)} of the {folds.k} folds; every auto setting chosen on an inner {INNER_VAL:.0%} of each "
              "fold's training rows, the fold's held-out rows scored once"),
    )


def _inner_split(rows: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    inner_train, inner_val = train_test_split(rows, test_size=INNER_VAL, stratify=labels[rows], random_state=seed)
    return np.sort(inner_train), np.sort(inner_val)


def _epochs(train_images: int) -> int:
    from ..finetune.recipe import epochs_for

    return min(MAX_EPOCHS, epochs_for(train_images)[0])


def _consensus(recipes: list[dict]) -> dict:
    """One recipe for the printed command: each setting's most common value over the folds; the rate's
    geometric mean (the folds' range tests differ by their data, not by what they measure)."""
    out = {}
    for name in recipes[0]:
        values = [r[name]["value"] for r in recipes]
        if name == "lr":
            out[name] = float(np.exp(np.mean(np.log(values))))
        else:
            out[name] = _most_common(values)
    return out


def _most_common(values: list):
    """The most frequent value; a tie goes to the earliest fold's."""
    return Counter(values).most_common(1)[0][0]


def check_options(enabled: bool, from_features: bool) -> str | None:
    """Why fine-tuning cannot be measured for this input, or None."""
    if not enabled:
        return "--no-finetune skipped it"
    if from_features:
        return "the input is a feature file: fine-tuning needs the images"
    return None


__all__ = ["FinetuneMeasurement", "check_options", "measure", "skipped"]
