"""featpipe fit / evaluate / predict: classifiers on cached features, model files, bad input."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.datasets import make_classification
from sklearn.utils.estimator_checks import parametrize_with_checks
from typer.testing import CliRunner

import featpipe
from featpipe.classify import CLASSIFIERS, FitConfig, LinearHead, MLPHead, fit, load_classifier
from featpipe.classify.heads import OPTIMIZERS, SCHEDULES
from featpipe.cli import app
from featpipe.errors import FormatError, UsageError


@pytest.fixture(scope="module")
def features(tmp_path_factory) -> Path:
    """A real feature file (random-weight network) of three separable colour classes."""
    from .conftest import make_images

    tmp = tmp_path_factory.mktemp("classify")
    images = make_images(tmp / "images", classes=3, per_class=12)
    (images / "class_2" / "broken.jpg").write_bytes(b"")
    return featpipe.extract(featpipe.ExtractConfig(images, tmp / "f.h5", model="test_resnet", weights="random",
                                                   layers=("pooled", "layer2"))).output


def test_fit_compares_and_saves_the_best(features, tmp_path):
    out = tmp_path / "m.skops"
    result = fit(FitConfig(features, out, ("logreg", "nb", "knn", "linear"), test_size=0.33, keep_all=True,
                           report=tmp_path / "report"))
    assert result.n_train + result.n_test == 36 and result.skipped_invalid == 1
    assert 0 < result.n_validation < result.n_train
    score = {r.classifier: r.validation["accuracy"] for r in result.rows}  # chosen on validation rows
    assert score[result.best] == max(score.values()) and result.rows[0].metrics["accuracy"] > 0.8
    assert out.exists() and all(r.path and r.path.exists() for r in result.rows)
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert set(report) == {"logreg", "nb", "knn", "linear"}
    assert set(report["logreg"]["per_class"]) == {"class_0", "class_1", "class_2"}
    assert report["logreg"]["validation"]["n"] == result.n_validation and report["logreg"]["test"]["n"] == result.n_test
    assert (tmp_path / "report" / "confusion_logreg.png").stat().st_size > 1000
    assert (tmp_path / "report" / "curves_linear.png").stat().st_size > 1000
    mf = load_classifier(out)
    assert mf.classifier == result.best and mf.extractor["model"] == "timm:test_resnet"
    assert mf.extractor["layer"] == "pooled" and mf.classes == ["class_0", "class_1", "class_2"]


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_every_classifier_fits_and_round_trips(features, tmp_path, name):
    out = tmp_path / f"{name}.skops"
    result = fit(FitConfig(features, out, (name,), test_size=0.33))
    fs = featpipe.load(features)
    X = fs.X()[fs.valid]
    mf = load_classifier(out)
    assert mf.pipeline.predict_proba(X).shape == (len(X), 3)
    np.testing.assert_allclose(mf.pipeline.predict_proba(X).sum(axis=1), 1, rtol=1e-5)
    assert result.rows[0].metrics["accuracy"] > 0.5


def test_model_refuses_features_of_another_layer_or_model(features, tmp_path):
    out = tmp_path / "m.skops"
    fit(FitConfig(features, out, ("logreg",), layer="layer2"))
    runner = CliRunner()
    r = runner.invoke(app, ["predict", str(out), str(features)])
    assert r.exit_code == 0, r.output
    other = _edit(features, tmp_path, "other.h5", lambda f: made_by(f, weights_sha256="0" * 64))
    r = runner.invoke(app, ["predict", str(out), str(other)])
    assert r.exit_code == 2 and "weights (sha256)" in r.stderr and "-> 000000000000" in r.stderr


def test_corrupt_or_tampered_model_files_are_refused(features, tmp_path):
    out = tmp_path / "m.skops"
    fit(FitConfig(features, out, ("logreg",)))
    data = out.read_bytes()
    (tmp_path / "cut.skops").write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError):
        load_classifier(tmp_path / "cut.skops")
    import skops.io as sio

    sio.dump({"format": "featpipe-model", "payload": Path("/etc/passwd")}, tmp_path / "evil.skops")
    with pytest.raises(FormatError, match="does not trust"):
        load_classifier(tmp_path / "evil.skops")
    with pytest.raises(UsageError, match="does not exist"):
        load_classifier(tmp_path / "missing.skops")


def made_by(f: h5py.File, **changes) -> None:
    """Make an open feature file look made by another extractor: its identity (the ``config`` attribute,
    featpipe/identity.py) and the attributes that repeat it for people."""
    from featpipe import identity

    config = {**json.loads(f.attrs["config"]), **changes}
    f.attrs.update({**changes, "config": json.dumps(config, sort_keys=True),
                    "config_hash": identity.config_hash(config)})


def _edit(features: Path, tmp_path: Path, name: str, edit) -> Path:
    path = tmp_path / name
    path.write_bytes(features.read_bytes())
    with h5py.File(path, "a") as f:
        edit(f)
    return path


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda f: f["samples/label"].__setitem__(slice(None), -1), "has no labels"),
        (lambda f: f["samples/label"].__setitem__(slice(None), 0), "one class only"),
        (lambda f: f["features/pooled"].__setitem__(0, np.inf), "NaN or infinite"),
        (lambda f: f["samples/label"].__setitem__(0, 2) or f["samples/label"].__setitem__(
            np.flatnonzero(f["samples/label"][:] == 2)[1:].tolist(), 1), "single sample"),
    ],
)
def test_bad_feature_files_are_usage_errors(features, tmp_path, edit, match):
    path = _edit(features, tmp_path, "bad.h5", edit)
    with pytest.raises(UsageError, match=match):
        fit(FitConfig(path, tmp_path / "m.skops", ("logreg",)))


def test_unknown_classifier_fails_before_training(features, tmp_path):
    with pytest.raises(UsageError, match="FitConfig.classifiers must be one of logreg, .*, got 'xgb'"):
        fit(FitConfig(features, tmp_path / "m.skops", ("logreg", "xgb")))
    assert not (tmp_path / "m.skops").exists()


def test_cli_fit_evaluate_predict(features, tmp_path):
    runner = CliRunner()
    model = tmp_path / "m.skops"
    r = runner.invoke(app, ["fit", str(features), "-o", str(model), "--classifier", "logreg,nb", "--test-size", "0.3"])
    assert r.exit_code == 0, r.output
    assert "<- chosen, saved" in r.stdout and "1 invalid or unlabelled rows skipped" in r.stdout
    r = runner.invoke(app, ["evaluate", str(model), str(features)])
    assert r.exit_code == 0 and "accuracy" in r.stdout and "class_2" in r.stdout
    pred = tmp_path / "p.csv"
    r = runner.invoke(app, ["predict", str(model), str(features), "-o", str(pred), "--top-k", "2"])
    assert r.exit_code == 0
    rows = pred.read_text().splitlines()
    assert rows[0] == "path,predicted,probability,top_k,error" and len(rows) == 38
    broken = [row for row in rows if row.startswith("class_2/broken.jpg")]
    assert len(broken) == 1 and broken[0].startswith("class_2/broken.jpg,,,,") and "empty" in broken[0]
    good = rows[1].split(",")
    assert good[1] in {"class_0", "class_1", "class_2"} and len(good[3].split()) == 2


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_learns(optimizer):
    X, y = make_classification(n_samples=300, n_features=20, n_informative=10, n_classes=3, random_state=0)
    lr = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "rmsprop": 0.01, "adam": 0.01}[optimizer]
    head = LinearHead(optimizer=optimizer, lr=lr, max_epochs=60, early_stopping=False, batch_size=32).fit(X, y)
    assert head.history_["train_loss"][-1] < 0.8 * head.history_["train_loss"][0]
    assert head.score(X, y) > 0.7


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_and_seeding(schedule):
    X, y = make_classification(n_samples=200, n_features=10, n_classes=2, random_state=1)
    a = LinearHead(schedule=schedule, max_epochs=20, step_epochs=(10, 15), cycle_epochs=4, batch_size=16,
                   random_state=3).fit(X, y)
    b = clone(a).fit(X, y)
    np.testing.assert_array_equal(a.weights_["weight"], b.weights_["weight"])
    assert a.n_epochs_ <= 20 and a.score(X, y) > 0.7


def test_early_stopping_stops():
    X, y = make_classification(n_samples=400, n_features=50, n_informative=2, random_state=0)
    head = LinearHead(max_epochs=500, patience=5, lr=0.05, early_stopping=True).fit(X, y)
    assert head.n_epochs_ < 500 and len(head.history_["val_loss"]) == head.n_epochs_


@pytest.mark.slow
@parametrize_with_checks([LinearHead(), MLPHead(hidden=16)])
def test_heads_keep_the_scikit_learn_contract(estimator, check):
    check(estimator)


def test_random_search_tries_n_configurations_and_refits_the_best(features, tmp_path):
    result = fit(FitConfig(features, tmp_path / "m.skops", ("logreg",), search=5, cv=3, report=tmp_path / "r"))
    row = result.rows[0]
    assert len(row.tried) == 5
    assert [t["cv_accuracy"] for t in row.tried] == sorted((t["cv_accuracy"] for t in row.tried), reverse=True)
    Cs = [t["params"]["C"] for t in row.tried]
    assert len(set(Cs)) == 5 and all(1e-4 <= c <= 1e2 for c in Cs)
    best_C = load_classifier(tmp_path / "m.skops").pipeline.named_steps["clf"].C
    assert best_C == pytest.approx(row.tried[0]["params"]["C"])
    assert row.cv == (row.tried[0]["cv_accuracy"], row.tried[0]["cv_std"])
    assert len(json.loads((tmp_path / "r" / "metrics.json").read_text())["logreg"]["search"]) == 5


def test_cv_needs_enough_samples_per_class(features, tmp_path):
    with pytest.raises(UsageError, match="fewer than the 20 CV folds"):
        fit(FitConfig(features, tmp_path / "m.skops", ("nb",), cv=20))
    result = fit(FitConfig(features, tmp_path / "m.skops", ("nb",), cv=3))
    mean, std = result.rows[0].cv
    assert 0 <= mean <= 1 and std >= 0


def test_sanity_reports_who_cannot_overfit(features, tmp_path):
    from featpipe.classify.fit import sanity_check

    results = dict((n, a) for n, a, _ in sanity_check(FitConfig(features, tmp_path / "m.skops", ("logreg", "linear"))))
    assert results == {"logreg": 1.0, "linear": 1.0}
    runner = CliRunner()
    r = runner.invoke(app, ["fit", str(features), "-o", str(tmp_path / "m.skops"), "--classifier", "logreg", "--sanity"])
    assert r.exit_code == 0 and "ok: it can overfit" in r.stdout
    assert not (tmp_path / "m.skops").exists()  # a check, not a fit


def test_predict_on_images_extracts_with_the_recorded_extractor(features, tmp_path):
    from featpipe.predict import predict

    from .conftest import make_images

    model = tmp_path / "m.skops"
    fit(FitConfig(features, model, ("logreg",)))
    new = make_images(tmp_path / "new", classes=3, per_class=2, seed=7)
    kept = tmp_path / "new.h5"
    from_images = predict(model, new, features_out=kept)
    from_features = predict(model, kept)
    assert from_images.paths == from_features.paths and len(from_images.paths) == 6
    np.testing.assert_allclose(from_images.proba, from_features.proba)
    assert featpipe.load(kept).meta["model"] == "timm:test_resnet"
    r = CliRunner().invoke(app, ["predict", str(model), str(new), "--top-k", "1"])
    assert r.exit_code == 0 and r.stdout.splitlines()[0] == "path,predicted,probability,top_k,error"
    assert len(r.stdout.splitlines()) == 7


def test_lr_find_rises_exponentially_and_suggests_a_rate(tmp_path):
    from featpipe.classify.lr_find import lr_find
    from featpipe.classify.rows import ArrayRows

    X, y = make_classification(n_samples=600, n_features=30, n_informative=20, n_classes=4, class_sep=2.0,
                               random_state=0)
    rows = ArrayRows(X.astype(np.float32), y)
    f = lr_find(rows, steps=200, batch_size=32)
    ratios = np.asarray(f.lrs[1:]) / np.asarray(f.lrs[:-1])
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-6)  # exponential
    assert f.lrs[0] == pytest.approx(1e-8)
    assert min(f.losses) < 0.8 * f.losses[0]  # it learned somewhere in the range
    assert f.lowest == f.lrs[int(np.argmin(f.losses))] and f.suggestion == pytest.approx(f.lowest / 10)
    assert 1e-5 < f.suggestion < 1
    with pytest.raises(UsageError, match="lr_find.head must be one of linear, mlp, got 'rf'"):
        lr_find(rows, head="rf")


def test_lr_find_cli_writes_the_plot(features, tmp_path):
    r = CliRunner().invoke(app, ["lr-find", str(features), "-o", str(tmp_path / "lr.png"), "--steps", "60"])
    assert r.exit_code == 0, r.output
    assert "suggested learning rate" in r.stdout and (tmp_path / "lr.png").stat().st_size > 5000


def test_the_python_api_takes_strings(features, tmp_path):
    result = featpipe.fit(featpipe.FitConfig(str(features), str(tmp_path / "m.skops"), ("nb",)))
    model = featpipe.load_classifier(str(result.output))
    pred = featpipe.predict(str(result.output), str(features))
    assert model.classifier == "nb" and len(pred.paths) == 37
    assert pred.predicted()[pred.paths.index("class_2/broken.jpg")] == ""


def test_separate_test_file_must_come_from_the_same_extractor(features, tmp_path):
    result = fit(FitConfig(features, tmp_path / "m.skops", ("nb",), test=features))
    assert result.n_test == 36 and result.n_train == 36
    other = _edit(features, tmp_path, "other.h5", lambda f: made_by(f, dtype="float16"))
    with pytest.raises(UsageError, match="dtype float32 -> float16"):
        fit(FitConfig(features, tmp_path / "m2.skops", ("nb",), test=other))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_metrics_equal_scikit_learns(dtype):
    from sklearn import metrics as skm

    from featpipe.classify.metrics import evaluate_proba

    rng = np.random.default_rng(0)
    classes = np.array([0, 2, 3, 5])  # class 5 never occurs in y; class 3 is never predicted
    y = rng.choice([0, 2, 3], size=500)
    logits = rng.normal(size=(500, 4)) + 2.0 * (classes[None, :] == y[:, None])
    logits[:, 2] -= 100
    proba = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(dtype)
    proba[0] = 0
    proba[0, 3] = 1  # a confident miss: log loss clips it
    m = evaluate_proba(proba, y, classes, ["a", "b", "c", "d", "e", "f"])
    pred = classes[proba.argmax(axis=1)]
    labels = list(classes)
    assert m["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    with pytest.warns(UserWarning):  # scikit-learn warns about the class predicted but absent
        assert m["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m["log_loss"] == pytest.approx(skm.log_loss(y, proba, labels=labels), rel=1e-6)
    # Over the classes that occur or are predicted (scikit-learn's default): class 5 has neither.
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["no_rows"] == ["f"]
    p, r, _, s = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    assert [v["precision"] for v in m["per_class"].values()] == pytest.approx(p)
    assert [v["recall"] for v in m["per_class"].values()] == pytest.approx(r)
    assert [v["support"] for v in m["per_class"].values()] == list(s)
    assert m["confusion_matrix"] == skm.confusion_matrix(y, pred, labels=labels).tolist()
    with pytest.raises(UsageError, match="never saw class 'b'"):
        evaluate_proba(proba[:3], np.array([0, 1, 2]), classes, ["a", "b", "c", "d", "e", "f"])


def test_load_model_is_the_deprecated_name_of_load_classifier():
    """featpipe.load_model loaded a classifier while featpipe.models.load_model loads network weights: renamed."""
    with pytest.warns(DeprecationWarning, match="load_classifier"):
        old = featpipe.load_model
    assert old is featpipe.load_classifier
