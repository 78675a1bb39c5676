"""The model file: a fitted pipeline in skops format, with the identity of its features inside.

skops loads without running arbitrary code; featpipe refuses any type in the
file beyond the ones its own classifiers use. The model file keeps the
extractor identity of the features it was trained on (``identity.of_layer``:
model, weights and their sha256, layer, node, pooling, preprocessing,
precision, dtype) with its ``config_hash``, and the identity of the training
images (``images_digest``, ``features_fingerprint``). `fit --test`, `evaluate`
and `predict` ask featpipe/identity.py whether other features come from the
same extractor, and refuse them naming the fields that differ.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .. import identity
from .._util import atomic_write
from ..errors import FormatError, UsageError
from ..store import FeatureSet

MODEL_FORMAT = "featpipe-model"
MODEL_FORMAT_VERSION = 1
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
    """How the features of ``layer`` were made, as settings: enough for `predict` to extract images the same
    way (weights argument, seed), and for `featpipe info`. Whether two feature files match is not decided
    from these but from :func:`features_identity`."""
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


def features_identity(fs: FeatureSet, layer: str) -> dict:
    """The extractor identity of ``fs``'s ``layer`` (featpipe/identity.py)."""
    return identity.of_layer(fs.meta, layer, fs.layer_info(layer))


def same_images_warning(images_digest: str, fs: FeatureSet, role: str) -> list[str]:
    """A warning when ``fs`` holds the very images (identity.images_digest) a model learns or learned from."""
    if images_digest and fs.meta.get("images_digest") == images_digest:
        return [f"{fs.path.name} holds the same images as the training features (equal images_digest): "
                f"its {role} metrics measure how well the model fits its own training images, not new ones"]
    return []


@dataclass
class ModelFile:
    """A loaded model file."""

    pipeline: object
    classes: list[str]
    extractor: dict
    classifier: str
    metrics: dict
    fit_fingerprint: str = ""  # set by pipelines: which settings and features made this model
    # The extractor identity of the training features (identity.of_layer) and its sha256.
    identity: dict = field(default_factory=dict)
    config_hash: str = ""
    # The training images: identity.images_digest and identity.features_fingerprint of the training file
    # ("" for features made outside featpipe extract, store.write_arrays).
    images_digest: str = ""
    features_fingerprint: str = ""
    # What the training features' extraction asked for (identity.request): `predict` extracts images with it.
    request: dict = field(default_factory=dict)
    # Where the test rows came from: {"test_size", "seed"} of fit's split of the training file, or
    # {"test_file"}.
    split: dict = field(default_factory=dict)

    @property
    def layer(self) -> str:
        return self.extractor["layer"]

    def check_features(self, fs: FeatureSet) -> None:
        """Raise if ``fs`` was not made by the extractor this model was trained on."""
        check_same_extractor(self.identity, fs, "the features this model was trained on")


def check_same_extractor(expected: dict, fs: FeatureSet, trained_on: str) -> None:
    """Raise UsageError, naming the fields that differ in words, if ``fs`` was not made by the extractor
    whose identity (of one layer, identity.of_layer) is ``expected``."""
    layer = expected["layers"][0][0]
    if layer not in fs.layers:
        raise UsageError(
            f"{fs.path.name} has no layer {layer!r} (it has {', '.join(fs.layers)}); {trained_on} are "
            f"{layer!r}: extract it with --layer {layer}"
        )
    diff = identity.extractor_differences(expected, features_identity(fs, layer))
    if diff:
        raise UsageError(
            f"{fs.path.name} was made by another extractor than {trained_on} ({diff}); extract with the "
            "model's configuration (featpipe predict on images does it for you)"
        )


def save(path: str | os.PathLike, pipeline, classes, fs: FeatureSet, layer: str, classifier: str, metrics: dict,
         fit_fingerprint: str = "", split: dict | None = None) -> None:
    """Write a model file for ``pipeline``, trained on ``layer`` of the feature file ``fs``; ``split`` says
    where its test rows came from (fit's ``test_size`` and ``seed``, or ``test_file``)."""
    import skops.io as sio

    path = Path(path)
    features = features_identity(fs, layer)
    request = fs.meta.get("request", "")
    payload = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "pipeline": pipeline,
        "classes": list(classes),
        "extractor": extractor_config(fs, layer),
        "classifier": classifier,
        # As JSON text: skops stores nested dicts and lists node by node, slowly.
        "metrics": json.dumps(metrics),
        "fit_fingerprint": fit_fingerprint,
        "identity": json.dumps(features, sort_keys=True),
        "config_hash": identity.config_hash(features),
        "images_digest": str(fs.meta.get("images_digest", "")),
        "features_fingerprint": identity.features_fingerprint(fs.meta),
        "request": request if isinstance(request, str) else json.dumps(request, sort_keys=True),
        "split": json.dumps(split or {}, sort_keys=True),
    }
    with atomic_write(path) as tmp:
        sio.dump(payload, tmp)


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
    stored = payload.get("identity")
    if not stored:
        raise FormatError(f"{str(path)!r} does not record the identity of its training features; it was written by "
                          "a featpipe that was never released: fit it again")
    features = json.loads(stored)
    request = payload.get("request") or ""
    return ModelFile(payload["pipeline"], list(payload["classes"]), extractor,
                     str(payload["classifier"]), _metrics(payload["metrics"]), str(payload.get("fit_fingerprint", "")),
                     identity=features, config_hash=identity.config_hash(features),
                     images_digest=str(payload.get("images_digest", "")),
                     features_fingerprint=str(payload.get("features_fingerprint", "")),
                     request=json.loads(request) if request else {},
                     split=json.loads(payload.get("split", "{}")))
