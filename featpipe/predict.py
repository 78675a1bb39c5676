"""Predict: apply a saved classifier to a feature file, or to images (extracting them first).

This sits above extraction and classify, which never import each other: for
images it extracts with the configuration recorded in the model file, then
checks the new features against it like any other feature file.
"""
from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from .classify import load_classifier
from .classify.rows import FileRows, predict_proba_rows
from .errors import UsageError
from .extraction import ExtractConfig, extract
from .settings import PREDICT, PREDICTIONS_CSV
from .store import load

FEATURE_SUFFIXES = (".h5", ".hdf5")
CHECKPOINT_SUFFIXES = (".pt", ".pth")  # a network from `featpipe finetune`: classifies images with its own head


@dataclass
class Predictions:
    """Class probabilities per sample; NaN rows where the image was not valid, with the reason."""

    paths: list[str]
    valid: np.ndarray
    proba: np.ndarray  # (N, C)
    class_names: list[str]
    reasons: list[str] | None = None  # why each invalid image could not be used ("" for valid rows)

    def predicted(self) -> list[str]:
        return [self.class_names[int(i)] if v else "" for i, v in zip(np.nan_to_num(self.proba).argmax(1), self.valid, strict=True)]

    def write_csv(self, out: TextIO, top_k: int = 3) -> None:
        """One row per sample: the most probable class and the ``top_k`` most probable (all, if fewer)."""
        PREDICTIONS_CSV.check(top_k=top_k)
        k = min(top_k, self.proba.shape[1])
        w = csv.writer(out)
        w.writerow(["path", "predicted", "probability", "top_k", "error"])
        for i, path in enumerate(self.paths):
            if not self.valid[i]:
                w.writerow([path, "", "", "", (self.reasons[i] if self.reasons else "") or "invalid image"])
                continue
            order = np.argsort(-self.proba[i])[:k]
            w.writerow([path, self.class_names[order[0]], f"{self.proba[i, order[0]]:.4f}",
                        " ".join(f"{self.class_names[j]}:{self.proba[i, j]:.4f}" for j in order), ""])


def predict(model: str | os.PathLike, input: str | os.PathLike, device: str = "auto", batch_size: int = 32,
            features_out: str | os.PathLike | None = None, progress=None) -> Predictions:
    """Predict every sample of ``input``: a feature file, or images (a folder or a CSV list).

    ``model`` is a model file from `featpipe fit`, or a checkpoint from `featpipe finetune` (.pt), which
    classifies images directly with its fine-tuned head and its own preprocessing.

    Images are extracted first with the model file's recorded extractor (model,
    weights, layer, preprocessing, precision, dtype), into ``features_out`` or
    a temporary file; ``progress`` follows that extraction, as ``extract``'s does.

    Raises:
        UsageError: features of another extractor, weights that are no longer where they were, bad input.
        FormatError: a model file that is corrupt or not featpipe's.
    """
    PREDICT.check(batch_size=batch_size)
    source = Path(input)
    if Path(model).suffix.lower() in CHECKPOINT_SUFFIXES:
        return _predict_finetuned(Path(model), source, device, batch_size)
    mf = load_classifier(model)
    if source.is_file() and source.suffix.lower() in FEATURE_SUFFIXES:
        return _predict_features(mf, source)
    with tempfile.TemporaryDirectory(prefix="featpipe-predict-") as tmp:
        out = Path(features_out) if features_out else Path(tmp) / "features.h5"
        extract(_extract_config(mf, Path(model), source, out, device, batch_size), progress=progress)
        # The new features are checked like any feature file: the same extractor identity, or a refusal.
        return _predict_features(mf, out)


def _extract_config(mf, model: Path, source: Path, out: Path, device: str, batch_size: int) -> ExtractConfig:
    """The extraction that made the model's training features, asked for again (their identity.request),
    for the model's one layer."""
    req = mf.request
    if not req:  # trained on features made outside `featpipe extract` (store.write_arrays)
        raise UsageError(f"{model.name} does not record how its training features were extracted; extract the "
                         "images yourself with the same settings and predict on the feature file")
    return ExtractConfig(
        input=source, output=out, model=req["model"], weights=req["weights"], seed=req.get("seed") or 0,
        layers=(mf.layer,), pool=req["pool"], precision=req["precision"], dtype=req["dtype"],
        resampler=req["resampler"], decode=req["decode"].split(":")[0], device=device,
        batch_size=batch_size, tta=(req.get("views") or {}).get("tta", "none"))  # augmented views: training rows only


def _predict_features(mf, path: Path) -> Predictions:
    fs = load(path)
    mf.check_features(fs)
    layer = mf.layer
    valid = np.flatnonzero(fs.valid)
    # A block at a time: a feature file larger than memory predicts too.
    rows = FileRows(fs.path, f"features/{layer}", valid, np.zeros(len(valid), np.int64), fs.dim(layer))
    classes = mf.pipeline.classes_
    proba = np.full((len(fs), len(classes)), np.nan)
    proba[valid] = predict_proba_rows(mf.pipeline, rows)[0]
    reasons = [""] * len(fs)
    for i, reason in zip(fs.errors["index"], fs.errors["reason"], strict=True):
        reasons[int(i)] = reason
    # The model's columns are its own labels: indices into the class names it was trained with.
    return Predictions(fs.paths, fs.valid.copy(), proba, [mf.classes[int(c)] for c in classes], reasons)


def _predict_finetuned(checkpoint: Path, source: Path, device: str, batch_size: int) -> Predictions:
    from .extraction.sources import discover
    from .finetune.checkpoint import load as load_checkpoint
    from .finetune.checkpoint import predict_proba

    if source.is_file() and source.suffix.lower() in FEATURE_SUFFIXES:
        raise UsageError(f"{checkpoint.name} is a fine-tuned network: it classifies images, not a feature file; "
                         "give an image folder or a CSV list")
    tuned = load_checkpoint(checkpoint)
    samples = discover(source)
    proba, reasons = predict_proba(tuned, samples.files("predict with a checkpoint"), batch_size, device)
    valid = np.array([r is None for r in reasons])
    return Predictions(list(samples.paths), valid, proba, tuned.classes, [r or "" for r in reasons])
