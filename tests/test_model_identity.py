"""The model file and featpipe/identity.py: a classifier knows which extractor and which images made its
training features, and `fit --test`, `evaluate` and `predict` ask identity.py whether other features match."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import featpipe
from featpipe import identity
from featpipe.classify import FitConfig, fit, load_classifier
from featpipe.classify.classes import evaluate_file
from featpipe.cli import app
from featpipe.errors import FormatError

from .conftest import make_images
from .test_classify import _edit, made_by


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(images, their feature file, a model file fitted on it)."""
    tmp = tmp_path_factory.mktemp("model_identity")
    images = make_images(tmp / "images", classes=2, per_class=8)
    features = featpipe.extract(featpipe.ExtractConfig(images, tmp / "f.h5", model="test_resnet",
                                                       weights="random")).output
    model = tmp / "m.skops"
    fit(FitConfig(features, model, ("logreg",)))
    return images, features, model


def test_model_file_records_the_identity_of_its_features_and_images(trained):
    _, features, model = trained
    fs, mf = featpipe.load(features), load_classifier(model)
    assert mf.identity == identity.of_layer(fs.meta, "pooled", fs.layer_info("pooled"))
    assert mf.config_hash == fs.meta["config_hash"]  # a one-layer file: the layer's identity is the file's
    assert mf.images_digest == fs.meta["images_digest"] and len(mf.images_digest) == 64
    assert mf.features_fingerprint == identity.features_fingerprint(fs.meta)
    assert mf.request == json.loads(fs.meta["request"])


@pytest.mark.parametrize("command", ["fit --test", "evaluate", "predict"])
def test_every_entry_point_names_every_field_that_differs(trained, tmp_path, command):
    _, features, model = trained
    other = _edit(features, tmp_path, "other.h5", lambda f: made_by(f, dtype="float16", precision="bf16"))
    argv = {"fit --test": ["fit", str(features), "-o", str(tmp_path / "m2.skops"), "--test", str(other)],
            "evaluate": ["evaluate", str(model), str(other)],
            "predict": ["predict", str(model), str(other)]}[command]
    r = CliRunner().invoke(app, argv)
    assert r.exit_code == 2, r.output
    line = r.stderr.strip()
    assert "\n" not in line and "was made by another extractor" in line
    assert "dtype float32 -> float16" in line and "precision fp32 -> bf16" in line


def test_evaluating_on_the_training_images_is_said(trained, tmp_path):
    images, features, model = trained
    mf = load_classifier(model)
    *_, warnings = evaluate_file(mf, featpipe.load(features))
    assert any("same images as the training features" in w for w in warnings)
    fresh = make_images(tmp_path / "fresh", classes=2, per_class=3, seed=1)  # other images, same extractor
    other = featpipe.extract(featpipe.ExtractConfig(fresh, tmp_path / "o.h5", model="test_resnet",
                                                    weights="random")).output
    *_, warnings = evaluate_file(mf, featpipe.load(other))
    assert not any("same images" in w for w in warnings)
    result = fit(FitConfig(features, tmp_path / "m3.skops", ("logreg",), test=features))
    assert any("same images as the training features" in w for w in result.warnings)


def test_model_files_without_the_identity_are_refused(trained, tmp_path):
    """The layout before the identity was stored (extractor fields only) was never released: refused in one
    line, with the fix, instead of guessed from its extractor fields."""
    import skops.io as sio

    _, features, model = trained
    mf = load_classifier(model)
    unreleased = tmp_path / "unreleased.skops"
    sio.dump({"format": "featpipe-model", "format_version": 1, "pipeline": mf.pipeline, "classes": mf.classes,
              "extractor": mf.extractor, "classifier": mf.classifier, "metrics": json.dumps(mf.metrics),
              "fit_fingerprint": ""}, unreleased)
    with pytest.raises(FormatError, match="never released: fit it again"):
        load_classifier(unreleased)
    r = CliRunner().invoke(app, ["evaluate", str(unreleased), str(features)])
    assert r.exit_code != 0 and "fit it again" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_predict_on_images_extracts_as_the_training_features_were_made(trained, tmp_path):
    images, features, model = trained
    from_images = featpipe.predict(model, images, features_out=tmp_path / "again.h5")
    from_file = featpipe.predict(model, features)
    assert from_images.paths == from_file.paths
    assert from_images.predicted() == from_file.predicted()
    again = featpipe.load(tmp_path / "again.h5")
    assert identity.of_layer(again.meta, "pooled", again.layer_info("pooled")) == load_classifier(model).identity
