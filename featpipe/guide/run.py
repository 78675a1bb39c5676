"""The guide's measurements: one extraction of a stratified sample per model, then the layer sweep.

Each model's sample is extracted once, with every compared layer, the raw-pixel
baseline and (for ImageNet weights) the ImageNet head taken from the same
forward pass, into a cache: running the guide again with other options
(--folds, --seed of the folds, another model beside it) does not extract again.
The cache key covers the sampled images' paths, labels, sizes and modification
times, so a changed image is extracted again rather than read stale.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from .. import models
from .._util import atomic_write, cache_dir
from ..errors import RunConflictError, UsageError
from ..extraction import ExtractConfig, extract
from ..extraction.sources import discover
from ..settings import GUIDE, literal, shown
from ..store import FeatureSet, load
from . import decide as rules
from .config import DEFAULT_MODEL, GuideConfig
from .logme import logme
from .probe import Folds, cv_accuracies, learning_curve, paired_noise
from .result import GuideResult, LayerScore, ModelReport
from .sample import check_labels, stratified_sample
from .tuning import FinetuneMeasurement

log = logging.getLogger(__name__)

SPECIAL = ("pixels", "logits")  # baselines and the ImageNet head: measured, never recommended


def default_cache_dir() -> Path:
    return cache_dir("guide")


# --- the sample -------------------------------------------------------------------------------------


@dataclass
class _Sample:
    """The rows the guide measures: labels (indexes into ``classes``) and, for images, their files."""

    labels: np.ndarray
    classes: list[str]
    data: dict
    paths: list[str] | None = None  # absolute image paths (image input)
    rows: np.ndarray | None = None  # rows of the feature file (feature-file input)


def _data_summary(counts: dict[str, int], sample_labels: np.ndarray) -> dict:
    per_class = np.array(list(counts.values()))
    sample_counts = np.bincount(sample_labels)
    sample_counts = sample_counts[sample_counts > 0]
    return {
        "images": int(per_class.sum()), "classes": len(counts),
        "per_class_min": int(per_class.min()), "per_class_median": float(np.median(per_class)),
        "sample": int(len(sample_labels)), "sample_per_class_min": int(sample_counts.min()),
        "sample_per_class_median": float(np.median(sample_counts)),
    }


def _image_sample(config: GuideConfig) -> _Sample:
    samples = discover(config.input)
    counts = check_labels(samples.labels, samples.classes, config.cv, f"input {str(config.input)!r}")
    rows = stratified_sample(samples.labels, config.sample, config.seed, min_per_class=config.cv)
    labels = samples.labels[rows]
    files = samples.files("guide")
    paths = [str(files[i]) for i in rows]
    return _Sample(labels, list(samples.classes), _data_summary(counts, labels), paths=paths)


def _file_sample(config: GuideConfig, fs: FeatureSet) -> _Sample:
    labels = np.where(fs.valid, fs.y, -1)
    counts = check_labels(labels, fs.classes, config.cv, f"feature file {str(config.input)!r} (valid rows)")
    rows = stratified_sample(labels, config.sample, config.seed, min_per_class=config.cv)
    return _Sample(labels[rows], list(fs.classes), _data_summary(counts, labels[rows]), rows=rows)


def _sample_key(sample: _Sample) -> str:
    """Identifies the sampled images, content included: featpipe's one definition (identity.images_digest)."""
    from ..identity import image_stats, images_digest

    stats = image_stats(Path("/"), sample.paths)  # the paths are absolute
    return images_digest(sample.paths, sample.labels, sample.classes, stats)


def _write_sample_csv(sample: _Sample, path: Path) -> None:
    if path.exists():
        return
    with atomic_write(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows((p, sample.classes[k]) for p, k in zip(sample.paths, sample.labels.tolist(), strict=True))


# --- one model ----------------------------------------------------------------------------------------


def _plan(model: str, config: GuideConfig) -> tuple[list[str], bool]:
    """The layers to compare, shallow to deep (the user's, or the network's stages and its pooled
    features), and whether the model has an ImageNet head worth asking (pretrained, 1000 classes)."""
    import torch

    from ..models.stages import stage_layers

    spec = models.resolve(model)
    try:
        with torch.device("meta"):  # no weights, no compute: finding the stages is free
            net = models.create_architecture(spec).eval()
    except (NotImplementedError, RuntimeError):  # a builder that computes with tensors (torchvision's RegNets)
        net = models.create_architecture(spec).eval()
    head = config.weights == "pretrained" and (spec.source == "tv" or getattr(net, "num_classes", None) == 1000)
    if config.layers:
        return list(config.layers), head
    crop = models.eval_config(net, spec).crop
    return [*stage_layers(net, spec, crop), "pooled"], head


def _extract_sample(model: str, layers: list[str], sample: _Sample, config: GuideConfig, cache: Path,
                    sample_key: str, progress: Callable[[int, int], None] | None) -> Path:
    csv_path = cache / f"sample-{sample_key[:16]}.csv"
    _write_sample_csv(sample, csv_path)
    key = hashlib.sha256(json.dumps([sample_key, model, config.weights, layers]).encode()).hexdigest()[:16]
    out = cache / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', model)}-{key}.h5"
    extract_config = ExtractConfig(input=csv_path, output=out, model=model, weights=config.weights, layers=tuple(layers),
                                   batch_size=config.batch_size, device=config.device, backend=config.backend,
                                   seed=config.seed)
    try:
        extract(extract_config, progress=progress)
    except RunConflictError:
        # The cache holds an extraction with other weights (a checkpoint file changed): it is ours to replace.
        # Another process writing the same cache file still gets its one-line error, from this second call.
        log.info("replacing the guide's cached features %s", out)
        extract(replace(extract_config, overwrite=True), progress=progress)
    return out


def _head_stats(logits: np.ndarray) -> dict:
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    entropy = -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=1)
    top = np.bincount(p.argmax(axis=1), minlength=p.shape[1])
    return {"mean_top1": float(p.max(axis=1).mean()), "mean_entropy": float(entropy.mean()),
            "max_entropy": float(np.log(p.shape[1])),
            # What the head takes the images for: a picture in words of how ImageNet-like they are.
            "top_classes": [{"class": _imagenet_class(int(i)), "share": float(top[i] / len(p))}
                            for i in np.argsort(-top, kind="stable")[:3] if top[i]]}


def _imagenet_class(index: int) -> str:
    return _imagenet_info().index_to_description(index).split(",")[0]


@functools.lru_cache(maxsize=1)
def _imagenet_info():
    from timm.data import ImageNetInfo  # the class names ship inside timm

    return ImageNetInfo()


def _order_file_layers(names: list[str]) -> list[str]:
    """A feature file's layers, shallow to deep as far as names tell: module names in natural order, then fc7, pooled."""
    def natural(name: str):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    tail = [n for n in ("fc7", "pooled") if n in names]
    return sorted((n for n in names if n not in tail), key=natural) + tail


def _score(name: str, X: np.ndarray, y: np.ndarray, folds: Folds, timings: dict) -> LayerScore:
    t0 = time.perf_counter()
    accs = cv_accuracies(X, y, folds)
    t1 = time.perf_counter()
    score = logme(X, y)
    timings["cv"] = timings.get("cv", 0.0) + t1 - t0
    timings["logme"] = timings.get("logme", 0.0) + time.perf_counter() - t1
    return LayerScore(name, int(X.shape[1]), accs, score)


# --- the whole guide ----------------------------------------------------------------------------------


def guide(config: GuideConfig, progress: Callable[[str, int, int], None] | None = None) -> GuideResult:
    """Measure where ``config.input`` sits in the transfer-learning 2x2 table, and what to do.

    ``progress(model, done, total)`` is called while each model extracts the sample.

    Raises:
        UsageError: unlabelled input, one class, a class smaller than ``cv``, a model whose stages
            cannot be found (name --layers), bad options.
        WeightsError, RunConflictError: as for extract.
    """
    t_start = time.perf_counter()
    path = Path(config.input).expanduser()
    from_features = path.suffix.lower() in (".h5", ".hdf5") and path.is_file()
    timings: dict[str, float] = {"extract": 0.0}
    if from_features:
        fs = load(path)
        _check_file_options(config, fs)
        sample = _file_sample(config, fs)
        rows, y = sample.rows, sample.labels
        layers = list(config.layers) or _order_file_layers([n for n in fs.layers if n not in SPECIAL])
        head = str(fs.meta.get("weights_source", "")).startswith("pretrained")
        # What --weights said when the file was extracted: the same value reproduces it.
        to_measure = [(str(fs.meta.get("model")), str(fs.meta.get("weights", "pretrained")), path, layers, head)]
    else:
        sample = _image_sample(config)
        to_measure = _extract_models(config, sample, progress, timings)
        # Rows of an image that failed to decode are left out for every model alike.
        valid = np.logical_and.reduce([load(f).valid for _, _, f, _, _ in to_measure])
        sample.data["failed"] = int((~valid).sum())
        rows = np.flatnonzero(valid)
        y = sample.labels[rows]
        check_labels(y, sample.classes, config.cv, "the sample's decodable images")
    folds = Folds.make(y, config.cv, config.seed)
    # One BLAS thread: these matrices are small, and a threaded BLAS on a small or busy
    # machine spends more time waiting for its threads than computing (measured: 10x slower SVDs).
    with threadpool_limits(1):
        reports = [
            _measure_model(model, weights, load(feature_file), rows, layers, y, folds, timings, head)
            for model, weights, feature_file, layers, head in to_measure
        ]
        reports.sort(key=lambda r: r.best.mean, reverse=True)
        chosen = reports[0]
        t0 = time.perf_counter()
        X_best = load(chosen.features).X(chosen.best.name)[rows]
        curve = learning_curve(X_best, y, folds, rules.CURVE_FRACTIONS, config.seed, full=chosen.best.folds)
        timings["learning_curve"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    tuned = _measure_finetune(config, chosen, sample, rows, y, folds, from_features, progress)
    timings["finetune"] = time.perf_counter() - t0
    decision = rules.decide(_comparison(chosen, curve, folds, sample.data, tuned))
    commands = rules.commands(str(config.input), chosen.model, chosen.weights, decision, from_features,
                              tuned.recipe if tuned.measured else None)
    timings["total"] = time.perf_counter() - t_start
    return GuideResult(str(config.input), sample.data, reports, decision, _curve_rows(curve, folds), commands,
                       config.cv, config.seed, timings, tuned)


def _measure_finetune(config: GuideConfig, chosen: ModelReport, sample: _Sample, rows: np.ndarray, y: np.ndarray,
                      folds: Folds, from_features: bool, progress) -> FinetuneMeasurement:
    """Fine-tuning against the best frozen layer on the sweep's folds, or why it was not measured."""
    from ..finetune.recipe import VAL_SIZE
    from . import tuning

    why = tuning.check_options(config.finetune, from_features)
    if why:
        return tuning.skipped(why)
    paths = [sample.paths[i] for i in rows]
    return tuning.measure(chosen.model, chosen.weights, paths, y, sample.classes, folds, chosen.best.name,
                          chosen.best.folds, config.device, config.batch_size, config.seed,
                          (lambda phase, done, total: progress(phase, done, total)) if progress else None,
                          full_train_images=int(round(sample.data["images"] * (1 - VAL_SIZE))))


def _check_file_options(config: GuideConfig, fs: FeatureSet) -> None:
    if config.models or (config.layers and not set(config.layers) <= set(fs.layers)):
        raise GUIDE.refuse(f"{shown(str(config.input))} is a feature file: its model and layers are fixed; drop "
                           f"{{models}}, and name only {{layers}} it holds ({literal(', '.join(fs.layers))})")
    if not [n for n in fs.layers if n not in SPECIAL]:
        raise UsageError(f"{str(config.input)!r} holds no layer to compare besides {', '.join(fs.layers)}")


def _extract_models(config: GuideConfig, sample: _Sample, progress, timings: dict) -> list[tuple]:
    """Extract the sample once per model, every compared layer in one pass; a bad model fails before any CV."""
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    sample_key = _sample_key(sample)
    out = []
    for name in list(dict.fromkeys(config.models)) or [DEFAULT_MODEL]:
        layers, head = _plan(name, config)
        extra = [n for n in ("pixels", "logits") if n not in layers and (n == "pixels" or head)]
        t0 = time.perf_counter()
        feature_file = _extract_sample(
            name, layers + extra, sample, config, cache, sample_key,
            (lambda done, total, name=name: progress(name, done, total)) if progress else None,
        )
        timings["extract"] += time.perf_counter() - t0
        out.append((models.resolve(name).name, config.weights, feature_file, layers, head))
    return out


def _measure_model(model: str, weights: str, fs: FeatureSet, rows: np.ndarray, layers: list[str], y: np.ndarray,
                   folds: Folds, timings: dict, head: bool) -> ModelReport:
    """The sweep of one model: every layer, the best two side by side, raw pixels, the ImageNet head."""
    feats = {name: fs.X(name)[rows] for name in [*layers, *(n for n in SPECIAL if n in fs.layers)]}
    scores = [_score(name, feats[name], y, folds, timings) for name in layers]
    pixels = _score("pixels", feats["pixels"], y, folds, timings) if "pixels" in feats else None
    concat = None
    if len(scores) >= 2:
        a, b = sorted(scores, key=lambda s: s.mean, reverse=True)[:2]
        concat = _score(f"{a.name}+{b.name}", np.hstack([feats[a.name], feats[b.name]]), y, folds, timings)
    head_stats = None
    if head and "logits" in feats and feats["logits"].shape[1] == 1000:
        head_stats = _head_stats(feats["logits"])
    return ModelReport(model, weights, scores, pixels, concat, head_stats, fs.path)


def _comparison(chosen: ModelReport, curve: list[np.ndarray], folds: Folds, data: dict,
                tuned: FinetuneMeasurement | None = None) -> rules.Comparison:
    """The differences the decision rests on, each with its noise."""
    best, last = chosen.best, chosen.last
    earlier = chosen.layers[:-1]
    top = max(earlier, key=lambda s: s.mean) if earlier else last
    pixels = chosen.pixels
    return rules.Comparison(
        last=last.name, last_mean=last.mean, best=top.name, best_mean=top.mean,
        gain=max(0.0, top.mean - last.mean),
        gain_noise=paired_noise(top.folds, last.folds, folds) if earlier else float("inf"),
        pixels_mean=pixels.mean if pixels else None,
        pixels_gap=best.mean - pixels.mean if pixels else None,
        pixels_noise=paired_noise(best.folds, pixels.folds, folds) if pixels else None,
        head_top1=chosen.head["mean_top1"] if chosen.head else None,
        head_top_classes=chosen.head["top_classes"] if chosen.head else [],
        per_class_median=data["per_class_median"],
        curve_gain=float(np.mean(curve[-1]) - np.mean(curve[-2])),
        curve_noise=paired_noise(curve[-1], curve[-2], folds),
        finetune=tuned,
    )


def _curve_rows(curve: list[np.ndarray], folds: Folds) -> list[dict]:
    train_rows = np.mean([len(tr) for tr, _ in folds.splits])
    return [{"fraction": f, "train_images": int(round(f * train_rows)), "cv_mean": float(np.mean(a)),
             "cv_std": float(np.std(a, ddof=1))} for f, a in zip(rules.CURVE_FRACTIONS, curve, strict=True)]
