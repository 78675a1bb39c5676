"""Augmented views and test-time augmentation as features: extract --augment-views K / --tta, fit --use-augmented."""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import featpipe
from featpipe import ExtractConfig, extract
from featpipe.classify import FitConfig, fit
from featpipe.cli import app
from featpipe.errors import RunConflictError, UsageError
from featpipe.extraction.extractor import Extractor, ExtractorSpec
from featpipe.extraction.preprocess import Preprocessor
from featpipe.extraction.views import ViewMaker, ViewSpec
from featpipe.store import write_arrays

from .conftest import TINY_MODEL, make_images


def config(images: Path, output: Path, **kw) -> ExtractConfig:
    kw.setdefault("model", TINY_MODEL)
    kw.setdefault("weights", "random")
    return ExtractConfig(images, output, **kw)


def square_images(root: Path, n: int = 3, mirrored: bool = False) -> Path:
    """Square PNGs (lossless): the eval crop of a mirrored square image is the mirror of its eval crop."""
    rng = np.random.default_rng(1)
    (root / "a").mkdir(parents=True)
    for i in range(n):
        arr = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
        Image.fromarray(arr[:, ::-1] if mirrored else arr).save(root / "a" / f"{i}.png")
    return root


def test_augmented_views_are_seeded_stored_per_image_and_independent_of_batching(tmp_path, image_folder):
    a = featpipe.load(extract(config(image_folder, tmp_path / "a.h5", augment=3, batch_size=4)).output)
    X, source = a.augmented()
    n = len(a)
    assert X.shape == (3 * n, a.dim()) and a.augmented_layers == ["pooled"]
    np.testing.assert_array_equal(source, np.repeat(np.arange(n), 3))  # rows = images x K, views consecutive
    assert a.augment == {"views": 3, "strength": "standard", "flip": True, "seed": 0} and a.tta == "none"
    # Views are new looks: not the image's own features, and not each other.
    assert not np.allclose(X[0::3], a.X(), atol=1e-3) and not np.allclose(X[0::3], X[1::3], atol=1e-3)
    # Another batch size and partitioning gives the same views (seeded by image, not by position or worker) ...
    b = featpipe.load(extract(config(image_folder, tmp_path / "b.h5", augment=3, batch_size=7,
                                     partition_size=5)).output)
    np.testing.assert_allclose(b.augmented()[0], X, atol=1e-5)
    np.testing.assert_allclose(b.X(), a.X(), atol=1e-5)
    # ... and another seed other views.
    c = featpipe.load(extract(config(image_folder, tmp_path / "c.h5", augment=3, seed=1)).output)
    assert not np.allclose(c.augmented()[0], X, atol=1e-3)


def test_a_views_random_numbers_depend_on_the_image_and_view_only():
    pre = Preprocessor(featpipe.models.DataConfig((32, 32), 36, "center", "bilinear", (0.5,) * 3, (0.5,) * 3, "torch"))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    maker = ViewMaker(ViewSpec(augment=4, strength="strong"), pre)
    first = maker.crops(img, "x/1.jpg")
    assert first.shape == (5, 32, 32, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first[0], pre.image(img))  # view 0 is the eval crop
    np.testing.assert_array_equal(maker.crops(img, "x/1.jpg"), first)
    assert not np.array_equal(maker.crops(img, "x/2.jpg")[1:], first[1:])
    # Without flips no view is a mirror image: one flipped view in a fixed draw differs from its unflipped twin.
    unflipped = ViewMaker(ViewSpec(augment=4, strength="strong", flip=False), pre).crops(img, "x/1.jpg")
    assert any(not np.array_equal(unflipped[k], first[k]) for k in range(1, 5))


def test_tta_flip_averages_the_image_and_its_mirror(tmp_path):
    plain = featpipe.load(extract(config(square_images(tmp_path / "p"), tmp_path / "p.h5")).output)
    mirror = featpipe.load(extract(config(square_images(tmp_path / "m", mirrored=True), tmp_path / "m.h5")).output)
    tta = featpipe.load(extract(config(square_images(tmp_path / "t"), tmp_path / "t.h5", tta="flip")).output)
    assert tta.tta == "flip" and not np.allclose(tta.X(), plain.X(), atol=1e-4)
    np.testing.assert_allclose(tta.X(), (plain.X() + mirror.X()) / 2, atol=1e-4)


def test_tta_crops_averages_the_five_crops(tmp_path, image_folder):
    fs = featpipe.load(extract(config(image_folder, tmp_path / "f.h5", tta="crops")).output)
    ex = Extractor(ExtractorSpec(f"timm:{TINY_MODEL}", "random", 0, ("pooled",), "avg", "cpu", "fp32"))
    img = Image.open(image_folder / fs.paths[0]).convert("RGB")
    resized = ex.preprocess.resize(img)
    h, w = ex.data_config.crop
    H, W = resized.shape[:2]
    top, left = int(round((H - h) / 2)), int(round((W - w) / 2))
    crops = np.stack([resized[:h, :w], resized[:h, W - w:], resized[H - h:, :w], resized[H - h:, W - w:],
                      resized[top:top + h, left:left + w]])
    want = ex.forward(crops)[0]["pooled"].mean(axis=0)
    np.testing.assert_allclose(fs.X()[0], want, atol=1e-4)


def test_views_follow_incremental_updates_and_are_part_of_the_identity(tmp_path, image_folder):
    out = tmp_path / "f.h5"
    first = featpipe.load(extract(config(image_folder, out, augment=2)).output)
    X0, _ = first.augmented()
    paths0 = list(first.paths)  # read now: the file is about to be updated in place
    make_images(tmp_path / "more", classes=1, per_class=2, seed=5)
    (tmp_path / "more" / "class_0" / "img_000.jpg").rename(image_folder / "class_1" / "new.jpg")
    (image_folder / "class_2" / "img_000.jpg").unlink()
    (image_folder / "class_0" / "img_001.png").write_bytes(b"broken")
    summary = extract(config(image_folder, out, augment=2))
    assert summary.changes["added"] == 1 and summary.changes["removed"] == 1 and summary.changes["changed"] == 1
    fs = featpipe.load(out)
    X, source = fs.augmented()
    np.testing.assert_array_equal(source, np.repeat(np.arange(len(fs)), 2))
    for path in set(paths0) & set(fs.paths) - {"class_0/img_001.png"}:  # unchanged images: the same views
        i, j = paths0.index(path), fs.paths.index(path)
        np.testing.assert_allclose(X[2 * j:2 * j + 2], X0[2 * i:2 * i + 2], atol=1e-5)
    broken = fs.paths.index("class_0/img_001.png")
    assert not fs.valid[broken] and np.isnan(X[2 * broken:2 * broken + 2]).all()
    new = fs.paths.index("class_1/new.jpg")
    assert np.isfinite(X[2 * new:2 * new + 2]).all()
    with pytest.raises(RunConflictError, match=r"views \(--tta, --augment-views\)"):
        extract(config(image_folder, out, augment=3))


def test_bad_view_options_are_one_line(tmp_path, image_folder):
    for kw, match in (({"tta": "ten"}, "ExtractConfig.tta must be one of none, flip, crops, got 'ten'"),
                      ({"augment": -1}, "ExtractConfig.augment must be at least 0, got -1"),
                      ({"augment": 2, "augment_strength": "huge"},
                       "ExtractConfig.augment_strength must be one of light, standard, strong")):
        with pytest.raises(UsageError, match=match):
            extract(config(image_folder, tmp_path / "x.h5", **kw))


def file_with_views(path: Path, n: int = 240, classes: int = 4, views: int = 12, seed: int = 0) -> Path:
    """Features with no signal (random labels), whose every augmented view is an exact copy of its image's row:
    a classifier that ever trained on a view of a test image would know that image's label."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 16)).astype(np.float32)
    y = rng.integers(0, classes, n)
    write_arrays(path, X, y, [f"c{k}" for k in range(classes)])
    with h5py.File(path, "r+") as f:
        f.create_dataset("augmented/pooled", data=np.repeat(X, views, axis=0))
        f.create_dataset("augmented/source_index", data=np.repeat(np.arange(n), views))
    return path


def test_fit_use_augmented_never_trains_on_a_view_of_a_held_out_image(tmp_path):
    path = file_with_views(tmp_path / "f.h5")
    # knn (k = 10 < 12 views) finds a row's exact copies first: it scores its label whenever they were trained on.
    leak = fit(FitConfig(path, tmp_path / "m.skops", ("knn",), use_augmented=True))
    assert leak.n_train == 192 and leak.extra["augmented_rows"] == 192 * 12  # the training images' views only
    assert leak.rows[0].metrics["accuracy"] < 0.5  # random labels, 4 classes: chance, not memory
    # The same classifier, shown the views of the test images as well, is perfect: the test can see a leak.
    fs = featpipe.load(path)
    from sklearn.model_selection import train_test_split

    train, test_rows = train_test_split(np.arange(len(fs)), test_size=0.2, stratify=fs.y, random_state=0)
    views, source = fs.augmented()
    from featpipe.classify.estimators import make_classifier

    model = make_classifier("knn").fit(np.concatenate([fs.X()[train], views]), np.concatenate([fs.y[train],
                                                                                                fs.y[source]]))
    assert model.score(fs.X()[test_rows], fs.y[test_rows]) == 1.0
    # Compared on a validation split, the held-out validation images' views stay out too.
    both = fit(FitConfig(path, tmp_path / "m2.skops", ("knn", "logreg"), use_augmented=True))
    knn = next(r for r in both.rows if r.classifier == "knn")
    assert knn.validation["accuracy"] < 0.5


def test_fit_use_augmented_needs_views_and_a_validation_split(tmp_path):
    plain = write_arrays(tmp_path / "p.h5", np.random.default_rng(0).normal(size=(40, 4)), np.arange(40) % 2,
                         ["a", "b"])
    with pytest.raises(UsageError, match="extract with --augment-views K"):
        fit(FitConfig(plain, tmp_path / "m.skops", use_augmented=True))
    with pytest.raises(UsageError, match=r"^FitConfig\.use_augmented compares .*; drop FitConfig\.cv and FitConfig\.search$"):
        fit(FitConfig(file_with_views(tmp_path / "v.h5"), tmp_path / "m.skops", cv=3, use_augmented=True))


def test_cli_extract_views_and_fit_on_them(tmp_path):
    images = make_images(tmp_path / "images", classes=2, per_class=6)
    runner = CliRunner()
    out = tmp_path / "f.h5"
    r = runner.invoke(app, ["extract", str(images), "-o", str(out), "--model", TINY_MODEL, "--weights", "random",
                            "--augment-views", "2", "--augment-strength", "light", "--no-flip", "--tta", "flip", "-q"])
    assert r.exit_code == 0, r.output
    fs = featpipe.load(out)
    assert fs.tta == "flip" and fs.augment == {"views": 2, "strength": "light", "flip": False, "seed": 0}
    r = runner.invoke(app, ["fit", str(out), "-o", str(tmp_path / "m.skops"), "--use-augmented"])
    assert r.exit_code == 0, r.output
    assert "9 training rows plus 18 augmented views of the training images, 3 test rows" in r.output


def test_predict_on_images_applies_the_tta_of_the_training_features(tmp_path, image_folder):
    from featpipe.predict import predict

    out = extract(config(image_folder, tmp_path / "f.h5", augment=2, tta="flip")).output
    fit(FitConfig(out, tmp_path / "m.skops", use_augmented=True))
    on_file = predict(tmp_path / "m.skops", out)
    on_images = predict(tmp_path / "m.skops", image_folder, features_out=tmp_path / "again.h5")
    again = featpipe.load(tmp_path / "again.h5")
    assert again.tta == "flip" and not again.augmented_layers  # the same features; no views computed
    np.testing.assert_allclose(on_images.proba, on_file.proba, atol=1e-5)
    plain = extract(config(image_folder, tmp_path / "plain.h5")).output
    with pytest.raises(UsageError, match="views"):  # features without the TTA are another extractor's
        predict(tmp_path / "m.skops", plain)
