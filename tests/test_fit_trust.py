"""Numbers you can trust from fit, evaluate and predict (issue 9), one section per finding."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits, make_classification
from sklearn.model_selection import StratifiedKFold
from typer.testing import CliRunner

from featpipe.classify import FitConfig, HeadSettings, fit, load_classifier, make_classifier
from featpipe.cli import app
from featpipe.errors import UsageError
from featpipe.pipeline import load_pipeline
from featpipe.store import write_arrays

runner = CliRunner()


def blobs(n_per_class, dim: int = 16, sep: float = 4.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian classes of the given sizes around well-separated means."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(len(n_per_class), dim)) * sep
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    return (means[y] + rng.normal(size=(len(y), dim))).astype(np.float32), y


def feature_file(path: Path, X: np.ndarray, y: np.ndarray, classes: list[str]) -> Path:
    return write_arrays(path, X, y, classes)


def set_classes(path: Path, classes: list[str]) -> None:
    with h5py.File(path, "r+") as f:
        del f["classes"]
        f.create_dataset("classes", data=np.asarray(classes, dtype=object), dtype=h5py.string_dtype())


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    """A logreg model on three classes a, b, c, and its training file."""
    tmp = tmp_path_factory.mktemp("trust")
    X, y = blobs([30, 30, 30])
    features = feature_file(tmp / "train.h5", X, y, ["a", "b", "c"])
    model = tmp / "m.skops"
    fit(FitConfig(features, model, ("logreg",)))
    return features, model, X, y


# 1. Classes by name, in evaluate, predict and fit --test --------------------------------------------------


def test_evaluate_matches_classes_by_name_not_position(trained, tmp_path):
    _, model, X, y = trained
    # The same rows, their classes listed in another order: label k now means another index.
    renumbered = feature_file(tmp_path / "renumbered.h5", X, 2 - y, ["c", "b", "a"])
    r = runner.invoke(app, ["evaluate", str(model), str(renumbered)])
    assert r.exit_code == 0, r.output
    assert "accuracy           1.0000" in r.stdout
    # Only some of the model's classes: evaluated correctly, with a warning for the others.
    only_b = feature_file(tmp_path / "only_b.h5", X[y == 1], np.zeros(30, np.int64), ["b"])
    r = runner.invoke(app, ["evaluate", str(model), str(only_b)])
    assert r.exit_code == 0, r.output
    assert "accuracy           1.0000" in r.stdout and "no evaluation rows: 'a', 'c'" in r.stderr
    # A class the model never saw: one line that names it.
    stranger = feature_file(tmp_path / "stranger.h5", X, y, ["a", "b", "zebra"])
    r = runner.invoke(app, ["evaluate", str(model), str(stranger)])
    assert r.exit_code == 2 and "'zebra'" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_fit_test_file_and_predict_map_classes_by_name(trained, tmp_path):
    features, model, X, y = trained
    renumbered = feature_file(tmp_path / "renumbered.h5", X, 2 - y, ["c", "b", "a"])
    result = fit(FitConfig(features, tmp_path / "m.skops", ("logreg",), test=renumbered))
    assert result.rows[0].metrics["accuracy"] == 1.0
    pred = runner.invoke(app, ["predict", str(model), str(renumbered)])
    names = [line.split(",")[1] for line in pred.stdout.splitlines()[1:]]
    assert names == [["a", "b", "c"][k] for k in y]  # the model's names, whatever the file's numbering


# 2. Honest model selection ---------------------------------------------------------------------------------


def test_the_test_rows_do_not_choose_and_ties_go_to_the_simpler_model(tmp_path):
    X, y = blobs([40, 40, 40], sep=8.0)  # every classifier is perfect: all tie
    features = feature_file(tmp_path / "f.h5", X, y, ["a", "b", "c"])
    for cv in (None, 3):
        result = fit(FitConfig(features, tmp_path / "m.skops", ("knn", "nb", "logreg"), cv=cv))
        assert result.best == "logreg" and "simpler" in result.rule  # knn and nb won on test log loss before
        scored = {r.classifier: r.metrics for r in result.rows}
        assert scored["logreg"] is not None and scored["knn"] is None and scored["nb"] is None  # test touched once
        assert all((r.cv if cv else r.validation) for r in result.rows)
    r = runner.invoke(app, ["fit", str(features), "-o", str(tmp_path / "m.skops"), "--classifier", "knn,logreg"])
    assert r.exit_code == 0, r.output
    assert "choose: validation rows" in r.stdout and "report: test rows" in r.stdout and "chosen by:" in r.stdout


def test_the_choice_does_not_depend_on_the_test_file(tmp_path):
    X, y = blobs([40, 40, 40], sep=1.0)
    features = feature_file(tmp_path / "f.h5", X, y, ["a", "b", "c"])
    choices = set()
    for seed in range(3):
        Xt, yt = blobs([20, 20, 20], sep=1.0, seed=seed + 10)
        test = feature_file(tmp_path / f"t{seed}.h5", Xt, yt, ["a", "b", "c"])
        result = fit(FitConfig(features, tmp_path / "m.skops", ("logreg", "knn", "nb"), test=test))
        choices.add((result.best, tuple(r.validation["accuracy"] for r in result.rows)))
    assert len(choices) == 1


def test_naive_bayes_probabilities_are_calibrated_and_ece_is_reported(tmp_path):
    # Many redundant (correlated) features: raw naive Bayes multiplies the same evidence again and again.
    X, y = make_classification(n_samples=600, n_features=80, n_informative=5, n_redundant=60, class_sep=0.5,
                               random_state=0)
    features = feature_file(tmp_path / "f.h5", X.astype(np.float32), y, ["a", "b"])
    result = fit(FitConfig(features, tmp_path / "m.skops", ("nb",)))
    m = result.rows[0].metrics
    assert m["ece"] < 0.1 and m["log_loss"] < 1.0
    proba = load_classifier(tmp_path / "m.skops").pipeline.predict_proba(X.astype(np.float32))
    assert (proba.max(axis=1) > 0.999).mean() < 0.5  # not 0 or 1 for everything


def test_ece_is_zero_when_confidence_matches_accuracy():
    from featpipe.classify.metrics import calibration_error

    proba = np.tile([0.8, 0.2], (10, 1))
    true = np.array([0] * 8 + [1] * 2)  # says 0.8, right 80% of the time
    assert calibration_error(proba, true) == pytest.approx(0.0)
    assert calibration_error(proba, np.ones(10, np.int64)) == pytest.approx(0.8)


# 3. Small classes adapt or explain -------------------------------------------------------------------------


def test_small_classes_cap_knn_and_calibration_folds(tmp_path):
    X, y = blobs([40, 40, 4])
    features = feature_file(tmp_path / "f.h5", X, y, ["a", "b", "tiny"])
    result = fit(FitConfig(features, tmp_path / "m.skops", ("svm", "knn", "nb", "logreg"), test_size=0.25))
    assert all(r.reason is None for r in result.rows)
    assert make_classifier("knn", smallest_class=2)[-1].n_neighbors == 2
    assert make_classifier("svm", smallest_class=2)[-1].cv == 2


def test_a_classifier_that_cannot_run_is_skipped_and_the_others_run(tmp_path):
    X, y = blobs([40, 40, 3])  # 'tiny' keeps one row to fit on once test and validation rows are out
    features = feature_file(tmp_path / "f.h5", X, y, ["a", "b", "tiny"])
    result = fit(FitConfig(features, tmp_path / "m.skops", ("svm", "knn", "logreg"), test_size=0.25))
    reasons = {r.classifier: r.reason for r in result.rows}
    assert "2 or more rows per class" in reasons["svm"] and reasons["knn"] is None and reasons["logreg"] is None
    r = runner.invoke(app, ["fit", str(features), "-o", str(tmp_path / "m.skops"), "--classifier", "svm,logreg",
                            "--test-size", "0.25"])
    assert r.exit_code == 0, r.output
    assert "svm          skipped: svm calibrates" in r.stdout
    r = runner.invoke(app, ["fit", str(features), "-o", str(tmp_path / "m.skops"), "--classifier", "svm,nb",
                            "--test-size", "0.25"])
    assert r.exit_code == 2 and "no classifier could run" in r.stderr


# 4. Quiet failures speak -----------------------------------------------------------------------------------


def test_classes_without_test_rows_are_warned_about_and_leave_macro_f1_alone(trained, tmp_path):
    features, _, X, y = trained
    no_c = feature_file(tmp_path / "no_c.h5", X[y < 2], y[y < 2], ["a", "b", "c"])
    result = fit(FitConfig(features, tmp_path / "m.skops", ("logreg",), test=no_c))
    m = result.rows[0].metrics
    assert m["accuracy"] == 1.0 and m["macro_f1"] == 1.0  # not 2/3: 'c' has no rows to score
    assert result.warnings and "'c'" in result.warnings[0]
    r = runner.invoke(app, ["fit", str(features), "-o", str(tmp_path / "m.skops"), "--test", str(no_c)])
    assert r.exit_code == 0 and "warning: 1 class(es) have no test rows: 'c'" in r.stderr


def test_no_valid_rows_is_one_line(trained, tmp_path):
    _, _, X, y = trained
    path = feature_file(tmp_path / "dead.h5", X, y, ["a", "b", "c"])
    with h5py.File(path, "r+") as f:
        f["samples/valid"][:] = False
    with pytest.raises(UsageError, match="no valid, labelled rows"):
        fit(FitConfig(path, tmp_path / "m.skops", ("logreg",)))
    r = runner.invoke(app, ["fit", str(path), "-o", str(tmp_path / "m.skops")])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1


# 5. Every user mistake is one line, exit 2 -----------------------------------------------------------------


def test_predict_into_a_missing_folder_is_one_line(trained, tmp_path):
    features, model, _, _ = trained
    r = runner.invoke(app, ["predict", str(model), str(features), "-o", str(tmp_path / "nodir" / "p.csv")])
    assert r.exit_code == 2 and "does not exist" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = runner.invoke(app, ["lr-find", str(features), "-o", str(tmp_path / "nodir" / "lr.png")])
    assert r.exit_code == 2 and "does not exist" in r.stderr


def test_predict_writes_why_each_image_failed(trained, tmp_path):
    features, model, X, y = trained
    path = feature_file(tmp_path / "bad.h5", X, y, ["a", "b", "c"])
    with h5py.File(path, "r+") as f:
        f["samples/valid"][3] = False
        del f["errors"]
        from featpipe.files.features import write_errors

        write_errors(f, [3], ["3"], ["truncated JPEG (12 bytes)"])
    r = runner.invoke(app, ["predict", str(model), str(path)])
    assert r.exit_code == 0
    assert "3,,,,truncated JPEG (12 bytes)" in r.stdout.splitlines()


def test_sanity_runs_without_output_and_fit_without_it_is_one_line(trained, tmp_path):
    features, _, _, _ = trained
    r = runner.invoke(app, ["fit", str(features), "--classifier", "logreg,nb", "--sanity"])
    assert r.exit_code == 0, r.output
    assert r.stdout.count("ok: it can overfit") == 2
    r = runner.invoke(app, ["fit", str(features)])
    assert r.exit_code == 2 and "--output" in r.stderr and len(r.stderr.strip().splitlines()) == 1


# 6. The heads' training on the command line and in pipelines ------------------------------------------------


def test_head_options_reach_the_head(trained, tmp_path):
    features, _, _, _ = trained
    out = tmp_path / "m.skops"
    r = runner.invoke(app, ["fit", str(features), "-o", str(out), "--classifier", "linear", "--lr", "0.05",
                            "--optimizer", "momentum", "--schedule", "cyclic", "--epochs", "7", "--batch-size", "16",
                            "--weight-decay", "0.001"])
    assert r.exit_code == 0, r.output
    head = load_classifier(out).pipeline[-1]
    assert (head.lr, head.optimizer, head.schedule, head.max_epochs, head.batch_size, head.weight_decay) == (
        0.05, "momentum", "cyclic", 7, 16, 0.001)
    assert head.n_epochs_ <= 7
    r = runner.invoke(app, ["fit", str(features), "-o", str(out), "--optimizer", "lbfgs", "--classifier", "linear"])
    assert r.exit_code == 2
    r = runner.invoke(app, ["fit", str(features), "-o", str(out), "--lr", "0.1"])  # logreg only: no head to set
    assert r.exit_code == 2 and "linear or mlp" in r.stderr


def test_head_keys_in_a_pipeline(tmp_path):
    path = tmp_path / "p.toml"
    body = ('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\n[fit]\noutput = "m.skops"\n'
            'classifier = ["linear"]\nlr = 0.003\noptimizer = "nesterov"\nschedule = "sgdr"\nepochs = 40\n'
            'batch_size = 128\nweight_decay = 0.0001\n')
    path.write_text(body)
    assert load_pipeline(path).fit.head == HeadSettings(0.003, "nesterov", "sgdr", 40, 128, 0.0001)
    path.write_text(body.replace('"sgdr"', '"exponential"'))
    with pytest.raises(UsageError, match=r":10: fit.schedule must be one of"):
        load_pipeline(path)


def test_lr_find_sweeps_until_divergence_and_suggests_one_rate(trained, tmp_path):
    from featpipe.classify.lr_find import lr_find
    from featpipe.classify.rows import ArrayRows

    X, y = blobs([100, 100, 100], sep=0.5)  # overlapping classes: a loss that cannot fall to 0
    f = lr_find(ArrayRows(X, y), steps=100, batch_size=16)
    assert f.diverged_at is not None and f.lrs[-1] > 1.0  # past the old end of the range, to divergence
    features = trained[0]
    r = runner.invoke(app, ["lr-find", str(features), "-o", str(tmp_path / "lr.png"), "--steps", "60"])
    assert r.exit_code == 0, r.output
    line = r.stdout.splitlines()[-1]
    assert line.count("suggested") == 1 and "steepest" not in r.stdout and "a tenth of the rate" in line
    rate = line.split("--lr ")[1].rstrip("`")
    r = runner.invoke(app, ["fit", str(features), "-o", str(tmp_path / "m.skops"), "--classifier", "linear",
                            "--lr", rate, "--epochs", "5"])
    assert r.exit_code == 0, r.output


# 7. The linear head is logistic regression, trained another way ---------------------------------------------


@pytest.mark.parametrize("loader", [load_digits, load_breast_cancer], ids=["digits-pixels", "breast-cancer"])
def test_linear_head_matches_logistic_regression(loader):
    X, y = loader(return_X_y=True)
    X = X.astype(np.float32)
    acc = {"logreg": [], "linear": []}
    agree = []
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(X, y):
        pred = {}
        for name in acc:
            model = make_classifier(name).fit(X[tr], y[tr])
            pred[name] = model.predict(X[te])
            acc[name].append((pred[name] == y[te]).mean())
        agree.append((pred["logreg"] == pred["linear"]).mean())
    assert abs(np.mean(acc["linear"]) - np.mean(acc["logreg"])) <= 0.005
    assert np.mean(agree) >= 0.99  # the same model: the same predictions, not just the same score


# 8. Plots that stay readable --------------------------------------------------------------------------------


def test_confusion_plot_shows_the_most_confused_classes_at_many_classes(tmp_path):
    from PIL import Image

    from featpipe.classify.metrics import PLOT_CLASSES, most_confused, plot_confusion

    k = 200
    cm = np.diag(np.full(k, 10))
    cm[5, 7] = cm[150, 3] = 4
    names = [f"class_{i}" for i in range(k)]
    result = {"accuracy": 0.99, "confusion_matrix": cm.tolist(), "per_class": {n: {} for n in names}}
    plot_confusion(result, names, tmp_path / "cm.png", "many")
    assert max(Image.open(tmp_path / "cm.png").size) <= 2000
    shown = most_confused(cm)
    assert len(shown) == PLOT_CLASSES and {3, 5, 7, 150} <= set(shown.tolist())


# Search shows progress ----------------------------------------------------------------------------------------


def test_search_reports_progress(trained, tmp_path):
    features, _, _, _ = trained
    seen = []
    fit(FitConfig(features, tmp_path / "m.skops", ("logreg",), search=4, cv=3),
        progress=lambda name, done, total, best: seen.append((name, done, total, best)))
    assert [s[1] for s in seen] == [1, 2, 3, 4] and all(s[2] == 4 for s in seen)
    assert [s[3] for s in seen] == sorted(s[3] for s in seen)  # best so far never falls
    r = runner.invoke(app, ["fit", str(features), "-o", str(tmp_path / "m.skops"), "--search", "3", "--cv", "3"])
    assert r.exit_code == 0 and "search logreg: 3/3 trials, best CV accuracy so far" in r.stderr
