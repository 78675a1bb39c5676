"""Training from the feature file: mini-batches streamed block by block, memory bounded by the batch size."""
from __future__ import annotations

import importlib
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import make_classification
from sklearn.preprocessing import StandardScaler

import featpipe
from featpipe.classify import FitConfig, fit, load_classifier
from featpipe.classify.estimators import make_classifier
from featpipe.classify.fitter import fit_streaming
from featpipe.classify.rows import ArrayRows, FileRows, labelled_file_rows
from featpipe.errors import UsageError
from featpipe.store import write_arrays

fitter_module = importlib.import_module("featpipe.classify.fitter")  # decides whether to stream


def separable(n: int, dim: int, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    X, y = make_classification(n_samples=n, n_features=dim, n_informative=min(dim, 20), n_redundant=0,
                               n_classes=classes, class_sep=3.0, random_state=seed)
    return X.astype(np.float32) * 3 + 5, y  # off-centre and scaled: the scaler has work to do


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    X, y = separable(3000, 32)
    path = write_arrays(tmp_path_factory.mktemp("stream") / "f.h5", X, y, [f"c{i}" for i in range(4)])
    return path, X, y


def file_rows(path: Path, **kw) -> FileRows:
    fs = featpipe.load(path)
    return labelled_file_rows(fs, "pooled", "test", **kw)[0]


def test_an_epoch_visits_every_row_once_in_a_shuffled_order(feature_file):
    path, X, y = feature_file
    rows = file_rows(path).subset(np.arange(0, 3000, 3))  # a sparse subset, as a train split is
    gen = torch.Generator().manual_seed(0)
    epochs = []
    for _ in range(2):
        batches = list(rows.batches(64, gen))
        assert all(len(b[0]) == 64 for b in batches[:-1]) and 0 < len(batches[-1][0]) <= 64
        got = np.concatenate([b[0] for b in batches])
        labels = np.concatenate([b[1] for b in batches])
        # Each row exactly once, features and labels still paired.
        order = np.lexsort(got.T[::-1])
        want = X[::3]
        np.testing.assert_array_equal(got[order], want[np.lexsort(want.T[::-1])])
        np.testing.assert_array_equal(labels[order], y[::3][np.lexsort(want.T[::-1])])
        epochs.append(got)
    assert not np.array_equal(epochs[0], epochs[1])  # a new order each epoch
    # The first batch mixes rows from far apart in the file: blocks come in random order.
    first = epochs[0][:64]
    positions = [int(np.flatnonzero((X == r).all(axis=1))[0]) for r in first]
    assert max(positions) - min(positions) > 1000


def test_blocks_read_exactly_the_selected_rows(feature_file):
    path, X, y = feature_file
    rows = file_rows(path, block_rows=100)
    picked = rows.subset(np.array([2999, 5, 6, 700, 1500, 0]))
    assert picked.rows.tolist() == [0, 5, 6, 700, 1500, 2999]  # kept in file order
    np.testing.assert_array_equal(picked.read(), X[[0, 5, 6, 700, 1500, 2999]])
    np.testing.assert_array_equal(picked.labels, y[[0, 5, 6, 700, 1500, 2999]])
    assert max(len(x) for x, _ in rows.blocks()) == 100


def test_streamed_pipeline_matches_the_in_memory_one(feature_file):
    path, X, y = feature_file
    rows = file_rows(path, block_rows=256)
    streamed = fit_streaming(make_classifier("linear", early_stopping=True), rows)
    in_memory = make_classifier("linear", early_stopping=True).fit(X, y)
    reference = StandardScaler().fit(X)
    np.testing.assert_allclose(streamed[0].mean_, reference.mean_, rtol=1e-5)
    np.testing.assert_allclose(streamed[0].var_, reference.var_, rtol=1e-4)
    head = streamed[-1]
    assert head.history_["val_loss"] and head.n_epochs_ >= 2  # early stopping on a held-out part of the file
    # Other batch orders, the same model to within noise: both learn the problem.
    a, b = streamed.score(X, y), in_memory.score(X, y)
    assert a > 0.85 and abs(a - b) < 0.03


def test_streaming_memory_is_bounded_by_the_batch_size(tmp_path):
    """A 96 MiB feature file trains with a few MiB of Python-visible allocations."""
    n, dim = 48_000, 512
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, n)
    X = np.memmap(tmp_path / "x.f32", dtype=np.float32, mode="w+", shape=(n, dim))
    for i in range(0, n, 8000):
        X[i:i + 8000] = rng.normal(size=(min(8000, n - i), dim)) + y[i:i + 8000, None] * 0.05
    path = write_arrays(tmp_path / "big.h5", X, y, [str(c) for c in range(5)])
    del X
    rows = file_rows(path, block_rows=512)
    model = make_classifier("linear", max_epochs=1, batch_size=256)
    tracemalloc.start()
    try:
        fit_streaming(model, rows)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    features_bytes = n * dim * 4
    # Buffer of 8 batches + one block + the scaler's arrays: ~5 MiB, against 96 MiB of features.
    assert peak < 12 * 2**20 and peak < features_bytes / 8, f"peak {peak / 2**20:.1f} MiB"
    assert model[-1].n_features_in_ == dim and len(model[-1].history_["train_loss"]) == 1


def test_fit_streams_when_asked_and_the_model_file_works(feature_file, tmp_path):
    path, X, y = feature_file
    out = tmp_path / "m.skops"
    result = fit(FitConfig(path, out, ("linear", "mlp", "logreg"), stream=True, keep_all=True))
    assert result.extra["streamed"] and result.n_train == 2400 and result.n_test == 600
    assert all(r.metrics["accuracy"] > 0.8 for r in result.rows)
    mf = load_classifier(out)
    assert mf.pipeline.score(X, y) > 0.8
    in_memory = fit(FitConfig(path, tmp_path / "mem.skops", ("linear",), stream=False))
    assert not in_memory.extra["streamed"]
    assert abs(in_memory.rows[0].metrics["accuracy"] - result.rows[0].metrics["accuracy"]) < 0.05


def test_features_that_do_not_fit_stream_by_themselves(feature_file, tmp_path, monkeypatch):
    path, _, _ = feature_file
    monkeypatch.setattr(fitter_module, "available_memory", lambda: 100_000)  # 50 kB budget < 300 kB of features
    result = fit(FitConfig(path, tmp_path / "m.skops", ("linear",)))
    assert result.extra["streamed"]
    with pytest.raises(UsageError, match=r"logreg must hold them in memory.*turn FitConfig\.stream off"):
        fit(FitConfig(path, tmp_path / "m.skops", ("linear", "logreg")))
    with pytest.raises(UsageError, match=r"^FitConfig\.cv and FitConfig\.search hold"):
        fit(FitConfig(path, tmp_path / "m.skops", ("linear",), cv=3))
    assert not fit(FitConfig(path, tmp_path / "m.skops", ("logreg",), stream=False)).extra["streamed"]


def test_nan_in_streamed_rows_names_the_sample(tmp_path):
    X, y = separable(300, 8)
    X[123, 4] = np.nan
    path = write_arrays(tmp_path / "nan.h5", X, y, [f"c{i}" for i in range(4)])
    with pytest.raises(UsageError, match="NaN or infinite.*'123'"):
        fit(FitConfig(path, tmp_path / "m.skops", ("linear",), stream=True))


def test_array_rows_and_file_rows_train_the_same_head_api(feature_file):
    path, X, y = feature_file
    head = make_classifier("linear")[-1].set_params(max_epochs=3, early_stopping=False)
    head.fit_rows(ArrayRows(X, y))
    assert head.n_epochs_ == 3 and list(head.classes_) == [0, 1, 2, 3]
    assert head.predict(X[:5]).shape == (5,)


def test_cli_fit_stream_flag(feature_file, tmp_path):
    from typer.testing import CliRunner

    from featpipe.cli import app

    path, _, _ = feature_file
    r = CliRunner().invoke(app, ["fit", str(path), "-o", str(tmp_path / "m.skops"), "--classifier", "linear", "--stream"])
    assert r.exit_code == 0, r.output
    assert "heads streamed from the file" in r.stdout and "linear" in r.stdout
    r = CliRunner().invoke(app, ["fit", str(path), "-o", str(tmp_path / "m.skops"), "--classifier", "linear",
                                 "--stream", "--cv", "3"])
    assert r.exit_code == 2 and "--cv and --search" in r.stderr


def test_batches_from_a_class_sorted_file_mix_classes(tmp_path):
    """ImageFolder files are sorted by class: streamed batches must still hold many classes."""
    y = np.repeat(np.arange(20), 200)  # 20 classes of 200 consecutive rows
    X = np.random.default_rng(0).normal(size=(len(y), 4)).astype(np.float32)
    rows = file_rows(write_arrays(tmp_path / "sorted.h5", X, y, [str(c) for c in range(20)]))
    batches = list(rows.batches(64, torch.Generator().manual_seed(0)))
    distinct = [len(np.unique(b)) for _, b in batches[:-1]]
    assert np.mean(distinct) > 14, distinct  # of 20; a fully random batch of 64 holds ~19


@pytest.mark.parametrize("batch_size", [1, 2, 7, 15])
def test_small_batches_stream_every_row_once(feature_file, batch_size):
    path, X, _ = feature_file
    rows = file_rows(path).subset(np.arange(5, 700, 2))  # sparse: blocks hold fewer rows than their span
    got = np.concatenate([x for x, _ in rows.batches(batch_size, torch.Generator().manual_seed(1))])
    want = X[5:700:2]
    assert len(got) == len(want)
    np.testing.assert_array_equal(np.sort(got[:, 0]), np.sort(want[:, 0]))


def test_info_reads_a_file_made_from_arrays(feature_file):
    from typer.testing import CliRunner

    from featpipe.cli import app

    r = CliRunner().invoke(app, ["info", str(feature_file[0])])
    assert r.exit_code == 0, r.output
    assert "none recorded" in r.stdout and "3000 rows" in r.stdout


def test_a_test_file_without_valid_rows_is_a_usage_error(feature_file, tmp_path):
    import h5py

    path, X, y = feature_file
    empty = write_arrays(tmp_path / "test.h5", X[:10], y[:10], [f"c{i}" for i in range(4)])
    with h5py.File(empty, "r+") as f:
        f["samples/valid"][:] = False
    for stream in (False, True):
        with pytest.raises(UsageError, match=r"test.h5 \(test\) has no valid, labelled rows"):
            fit(FitConfig(path, tmp_path / "m.skops", ("linear",), test=empty, stream=stream))
