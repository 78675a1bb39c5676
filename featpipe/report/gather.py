"""What a report is made of, gathered from a fit (a model file), a guide run or a fine-tuning run.

Whatever the command, a report needs the same things: a feature file's labelled rows (their
features, labels and images), the rows a classifier is judged on with its probabilities there, and
words for the summary. :class:`ReportData` holds them; one function per command fills it in from what
that command already wrote (no model is refitted).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UsageError
from ..store import FeatureSet, load


@dataclass
class ReportData:
    """Everything the page shows, before any of it is computed."""

    command: str  # fit, guide, finetune or report
    fs: FeatureSet
    layer: str
    classes: list[str]
    file_rows: np.ndarray  # feature-file row of each labelled row
    labels: np.ndarray  # class index (into ``classes``) of each labelled row
    X: np.ndarray  # features of the labelled rows
    held_out: np.ndarray  # positions among the labelled rows that the classifier is judged on
    proba: np.ndarray  # (len(held_out), len(classes)): the classifier's probabilities on them
    judged_on: str  # what the held-out rows are, in words
    classifier: list[tuple[str, str]]  # the chosen classifier or recipe: (what, value)
    seed: int = 0
    # Out-of-fold probabilities of every labelled row, where the classifier's own are (the guide's CV);
    # else the label-issue module makes them.
    out_of_fold: np.ndarray | None = None
    guide: dict | None = None  # GuideResult.to_dict() where a guide ran
    figures: list[tuple[str, str]] = field(default_factory=list)  # (caption, PNG name in the report folder)
    notes: list[str] = field(default_factory=list)
    source: str = ""  # what the user gave, where that is not the feature file (the guide's images)

    @property
    def paths(self) -> list[str]:
        return self.fs.paths


def extractor_summary(fs: FeatureSet, layer: str, images: str = "") -> list[tuple[str, str]]:
    """The extractor in words: model, weights, layer, preprocessing, precision; where the images are."""
    meta = fs.meta
    info = fs.layer_info(layer)
    # "pretrained (/long/site-packages/path/to/file.pth)": the file's name says which weights; the folder is noise.
    weights = re.sub(r"\((/[^()]*/)([^/()]+)\)", r"(\2)", str(meta.get("weights_source", "?")))
    rows = [("model", str(meta.get("model", "?"))), ("weights", weights),
            ("layer", f"{layer} ({fs.dim(layer)} features"
             + (f", {info['pool']} pooled" if info.get("pool") and layer != "pooled" else "") + ")")]
    dc = meta.get("data_config")
    if isinstance(dc, dict) and "crop" in dc:
        resize = dc["resize"] if isinstance(dc["resize"], int) else "x".join(map(str, dc["resize"]))
        rows.append(("preprocessing", f"resize {resize} ({dc['interpolation']}), {dc['crop_mode']} crop "
                     f"{dc['crop'][0]}x{dc['crop'][1]}, mean {tuple(round(v, 3) for v in dc['mean'])}, "
                     f"std {tuple(round(v, 3) for v in dc['std'])}"))
    rows.append(("precision", f"{meta.get('precision', '?')}, stored as {meta.get('dtype', '?')}"))
    rows.append(("images", images or str(meta.get("image_root", "?"))))
    return rows


# Past this many labelled rows a report reads a random sample of them: its features are held in memory, and
# the label errors' cross-validation and the held-out predictions cost time in proportion.
MAX_ROWS = 50_000


def _full_proba(proba: np.ndarray, columns: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities with a column per class (0 for classes the classifier never saw)."""
    out = np.zeros((len(proba), n_classes))
    out[:, np.asarray(columns, dtype=np.int64)] = proba
    return out


def _predict(pipeline, X: np.ndarray, n_classes: int) -> np.ndarray:
    return _full_proba(pipeline.predict_proba(X), pipeline.classes_, n_classes)


def from_model(features: Path, model: Path, command: str = "report") -> ReportData:
    """A saved fit: its test rows found again from the split the model file records (or, for a feature
    file of other images, every labelled row), predicted by the saved classifier.

    Raises:
        UsageError: features of another extractor; the training features of a model tested on a separate
            file, or of a model file that does not record its split.
    """
    from ..classify.classes import rows_for_model
    from ..classify.split import split_positions
    from ..files.classifier import load as load_classifier
    from ..identity import features_fingerprint

    mf = load_classifier(model)
    fs = load(features)
    mf.check_features(fs)
    rows, _ = rows_for_model(fs, mf.layer, mf.classes, "report", f"model {model.name}")
    labels = np.asarray(rows.labels)
    same = bool(mf.features_fingerprint) and mf.features_fingerprint == features_fingerprint(fs.meta)
    split = mf.split
    if not same:
        held = np.arange(len(labels))
        judged = f"every labelled row of {fs.path.name} ({len(held)}; not the features the model was trained on)"
    elif "test_file" in split:
        raise UsageError(f"{fs.path.name} holds the images {model.name} was trained on, and its test rows were "
                         f"another file ({split['test_file']}); give that file: featpipe report "
                         f"{split['test_file']} {model}")
    elif "test_size" in split:
        held = np.sort(split_positions(labels, split["test_size"], split["seed"])[1])
        judged = f"the test rows of fit's split ({len(held)} of {len(labels)}, test size {split['test_size']:g}, seed {split['seed']})"
    else:
        raise UsageError(f"{model.name} does not record which rows of {fs.path.name} were its test rows; fit it "
                         "again, or give a labelled feature file of other images")
    notes = []
    seed = int(split.get("seed", 0))
    if len(labels) > MAX_ROWS:
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), MAX_ROWS, replace=False))
        notes.append(f"{fs.path.name} has {len(labels)} labelled rows; this page is made from a random {MAX_ROWS} "
                     f"of them ({int(np.isin(held, keep).sum())} of its {len(held)} held-out rows): its metrics "
                     "are estimates of the whole set's")
        held = np.flatnonzero(np.isin(keep, held))
        rows, labels = rows.subset(keep), labels[keep]
    X = rows.read()
    stored = mf.metrics or {}
    summary = [("classifier", mf.classifier), ("model file", str(model))]
    if stored.get("accuracy") is not None:
        summary.append(("test accuracy at fit time", f"{stored['accuracy']:.4f}"))
    return ReportData(command, fs, mf.layer, list(mf.classes), np.asarray(rows.rows), labels, X, held,
                      _predict(mf.pipeline, X[held], len(mf.classes)), judged, summary, seed=seed, notes=notes)


def from_guide(result) -> ReportData:
    """A guide run: the sample's cached features at the recommended layer, each image predicted out of
    fold by the guide's own probe (logistic regression, its folds and seed)."""
    from ..guide.sample import stratified_sample
    from .label_issues import out_of_fold_proba

    chosen = result.chosen
    fs = load(chosen.features)
    layer = result.decision.recommended_layer
    if layer not in fs.layers:  # the pair of layers side by side, or pixels: the best single layer instead
        layer = chosen.best.name
    labels_all = np.where(fs.valid, fs.y, -1)
    if Path(result.input).resolve() == Path(chosen.features).resolve():  # a feature file: the guide sampled it
        file_rows = stratified_sample(labels_all, int(result.data["sample"]), result.seed, min_per_class=result.cv)
    else:  # the sample's own cache: every image of it
        file_rows = np.flatnonzero(labels_all >= 0)
    file_rows = file_rows[labels_all[file_rows] >= 0]
    labels = labels_all[file_rows]
    X = fs.X(layer)[file_rows]
    oof = out_of_fold_proba(X, labels, len(fs.classes), seed=result.seed, folds=result.cv)
    held = np.arange(len(labels))
    summary = [("classifier", f"logistic regression (the guide's probe), {result.cv}-fold CV"),
               ("advice", result.decision.strategy + f" ({result.decision.recommended_layer})")]
    return ReportData("guide", fs, layer, list(fs.classes), file_rows, labels, X, held, oof,
                      f"the guide's sample, each image predicted out of fold ({len(held)} images)", summary,
                      seed=result.seed, out_of_fold=oof, guide=result.to_dict(), source=str(result.input))


FINETUNED_FEATURES = "features.h5"


def from_finetune(result, config, folder: Path, progress=None) -> ReportData:
    """A fine-tuning run: every image through the fine-tuned network once (its pooled features and its
    logits, kept as ``folder/features.h5`` for `featpipe fit`), judged on the run's validation images.

    ``result`` is the FinetuneResult, ``config`` its FinetuneConfig; ``progress(done, total)`` follows the
    extraction.
    """
    from scipy.special import softmax

    from ..classify.classes import match_classes
    from ..extraction import ExtractConfig, extract
    from ..finetune.checkpoint import read_meta
    from ..finetune.data import split_rows  # the run's own split: the same validation images

    folder.mkdir(parents=True, exist_ok=True)
    out = extract(ExtractConfig(input=config.input, output=folder / FINETUNED_FEATURES, weights=str(result.output),
                                layers=("pooled", "logits"), device=config.device, batch_size=config.batch_size,
                                overwrite=True),  # the features of this checkpoint: an earlier run's are stale
                  progress=progress).output
    fs = load(out)
    meta = read_meta(result.output) or {}
    tuned_classes = list(meta.get("classes", result.classes))
    labels_all = np.where(fs.valid, fs.y, -1)
    file_rows = np.flatnonzero(labels_all >= 0)
    labels = labels_all[file_rows]
    X = fs.X("pooled")[file_rows]
    # The network's outputs are its own classes, in its own order: columns by class name.
    logits = fs.X("logits")[file_rows].astype(np.float64)
    where = match_classes(tuned_classes, list(fs.classes))
    proba_all = np.zeros((len(file_rows), len(fs.classes)))
    proba_all[:, where[where >= 0]] = softmax(logits, axis=1)[:, where >= 0]
    _, val = split_rows(np.asarray(fs.y), list(fs.classes), config.val_size, config.seed)
    notes = []
    if len(val):
        held = np.flatnonzero(np.isin(file_rows, val))
        judged = f"the run's validation images ({len(held)}, --validation-size {config.val_size:g}, seed {config.seed})"
    else:
        held = np.arange(len(file_rows))
        judged = f"every image ({len(held)}): all of them were trained on (--validation-size 0)"
        notes.append("--validation-size 0 held no image out: the mistakes are training images the network could not fit, "
                     "not an estimate of its accuracy on new images")
    recipe = [("network", f"{meta.get('model', config.model)} fine-tuned, epoch {result.best_epoch} kept"),
              ("trained", ", ".join(result.trainable)),
              ("recipe", " ".join(result.recipe.options()) + f" --optimizer {config.optimizer} --schedule "
                         f"{config.schedule} --bn {config.bn} (each choice's reason: the run's output, or the "
                         "checkpoint's recipe)"),
              ("checkpoint", str(result.output)),
              ("features", f"{out} (pooled, logits): `featpipe fit {out} -o model.skops` trains on them")]
    return ReportData("finetune", fs, "pooled", list(fs.classes), file_rows, labels, X, held, proba_all[held], judged,
                      recipe, seed=config.seed, notes=notes, source=str(config.input))
