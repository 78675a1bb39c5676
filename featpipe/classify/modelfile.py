"""The model file: a fitted pipeline in skops format, with the extractor's configuration inside.

skops loads without running arbitrary code; featpipe refuses any type in the
file beyond the ones its own classifiers use. The extractor configuration pins
the model to the features it was trained on: applying it to features of
another model, weights, layer, preprocessing or dtype is refused.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import FormatError, UsageError
from ..models.data_config import upgrade as data_config_upgrade
from ..store import FeatureSet

MODEL_FORMAT = "featpipe-model"
MODEL_FORMAT_VERSION = 1
# What must match between training features and features to predict on.
EXTRACTOR_FIELDS = ("model", "weights_sha256", "layer", "node", "pool", "data_config", "precision", "dtype")
# Types our pipelines hold that skops does not trust by default.
TRUSTED = frozenset({
    "featpipe.classify.heads.LinearHead",
    "featpipe.classify.heads.MLPHead",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.utils._bunch.Bunch",
    "sklearn.tree._tree.Tree",
    "builtins.tuple",
})


def extractor_config(fs: FeatureSet, layer: str) -> dict:
    """The fields of a feature file that a classifier trained on it depends on."""
    info = fs.layer_info(layer)
    return {
        "model": fs.meta["model"],
        "weights_sha256": fs.meta["weights_sha256"],
        "weights_source": fs.meta["weights_source"],
        "layer": layer,
        "node": str(info.get("node", "")),
        "pool": str(info.get("pool", "")),
        "data_config": fs.meta["data_config"],
        "precision": fs.meta["precision"],
        "dtype": fs.meta["dtype"],
        "dim": fs.dim(layer),
        "weights": fs.meta.get("weights", ""),
        "seed": int(fs.meta.get("seed", 0)),
    }


@dataclass
class ModelFile:
    """A loaded model file."""

    pipeline: object
    classes: list[str]
    extractor: dict
    classifier: str
    metrics: dict
    fit_fingerprint: str = ""  # set by pipelines: which settings and features made this model

    def check_features(self, fs: FeatureSet) -> None:
        """Raise if ``fs`` was not made by the extractor this model was trained on."""
        check_same_extractor(self.extractor, fs)


def check_same_extractor(expected: dict, fs: FeatureSet) -> None:
    """Raise UsageError, naming the field, if ``fs`` was not made by the extractor described by ``expected``."""
    layer = expected["layer"]
    if layer not in fs.layers:
        raise UsageError(
            f"{fs.path.name} has no layer {layer!r} (it has {', '.join(fs.layers)}); this model was trained "
            f"on {layer!r}: extract it with --layer {layer}"
        )
    got = extractor_config(fs, layer)
    for field in EXTRACTOR_FIELDS:
        if got[field] != expected[field]:
            raise UsageError(
                f"{fs.path.name} differs from the features this model was trained on in {field}: "
                f"{str(got[field])[:80]!r} vs {str(expected[field])[:80]!r}; extract with the "
                f"model's configuration (featpipe predict on images does it for you)"
            )


def save(path: str | os.PathLike, pipeline, classes, extractor: dict, classifier: str, metrics: dict,
         fit_fingerprint: str = "") -> None:
    import skops.io as sio

    path = Path(path)
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "pipeline": pipeline,
        "classes": list(classes),
        "extractor": extractor,
        "classifier": classifier,
        # As JSON text: skops stores nested dicts and lists node by node, slowly.
        "metrics": json.dumps(metrics),
        "fit_fingerprint": fit_fingerprint,
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    sio.dump(payload, tmp)
    os.replace(tmp, path)


def _metrics(stored) -> dict:
    return json.loads(stored) if isinstance(stored, str) else dict(stored)


def load(path: str | os.PathLike) -> ModelFile:
    """Load a model file, refusing types featpipe does not trust.

    Raises:
        UsageError: no such file.
        FormatError: not a model file, corrupt or tampered with, or holding untrusted types.
    """
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"model file {str(path)!r} does not exist; train one with `featpipe fit`")
    try:
        untrusted = set(sio.get_untrusted_types(file=path))
    except Exception as exc:  # noqa: BLE001 - zip, JSON and schema errors all mean the same to a user
        raise FormatError(f"{str(path)!r} is not a readable featpipe model file ({type(exc).__name__}: {exc})") from None
    unknown = sorted(untrusted - TRUSTED)
    if unknown:
        raise FormatError(
            f"{str(path)!r} holds types featpipe does not trust ({', '.join(unknown[:5])}); "
            "refusing to load it: use a model file written by `featpipe fit`"
        )
    try:
        payload = sio.load(path, trusted=sorted(untrusted))
    except Exception as exc:  # noqa: BLE001
        raise FormatError(f"{str(path)!r} cannot be loaded ({type(exc).__name__}: {exc}); it may be corrupt") from None
    if not isinstance(payload, dict) or payload.get("format") != MODEL_FORMAT:
        raise FormatError(f"{str(path)!r} is not a featpipe model file")
    if payload.get("format_version") != MODEL_FORMAT_VERSION:
        raise FormatError(
            f"{str(path)!r} has model format_version {payload.get('format_version')}; this featpipe reads "
            f"{MODEL_FORMAT_VERSION}"
        )
    extractor = dict(payload["extractor"])
    if isinstance(extractor.get("data_config"), dict):  # fields added since the model was saved
        extractor["data_config"] = data_config_upgrade(extractor["data_config"])
    return ModelFile(payload["pipeline"], list(payload["classes"]), extractor,
                     str(payload["classifier"]), _metrics(payload["metrics"]), str(payload.get("fit_fingerprint", "")))
