"""finetune's automatic recipe: each rule on inputs where the right answer is known."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featpipe.classify.lr_find import LRFinding, range_test
from featpipe.errors import UsageError
from featpipe.finetune import FinetuneConfig
from featpipe.finetune import recipe as rules
from featpipe.finetune.config import parse_auto
from featpipe.settings import SettingError


def glyphs(folder: Path, n: int = 12, side: int = 24, background: int = 0) -> list[Path]:
    """Strokes that run to the top and bottom edge on a plain backdrop (as the digits' scans do)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        arr = np.full((side, side), background, np.uint8)
        arr[:, side // 3 + i % 4: side // 3 + i % 4 + 3] = 255 - background  # a bar, edge to edge
        arr[side // 2, 2:side - 2] = 255 - background
        out.append(folder / f"g{i}.png")
        Image.fromarray(arr).resize((side * 2, side * 2), Image.NEAREST).save(out[-1])
    return out


def photos(folder: Path, n: int = 6) -> list[Path]:
    """Textured frames edge to edge, as photographs are: nothing is a backdrop."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        small = rng.uniform(0, 255, (12, 16, 3)).astype(np.uint8)
        out.append(folder / f"p{i}.jpg")
        Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(out[-1])
    return out


def test_objects_that_fill_a_dark_frame_are_not_cropped_but_padded(tmp_path):
    framing = rules.measure_framing(glyphs(tmp_path / "g"), crop_pct=0.875)
    assert framing.fills_frame and framing.dark_background and framing.median_short_side == 48
    recipe = rules.Recipe()
    rules.frame(framing, 224, 0.875, "auto", "auto", recipe)
    assert recipe["crop_pct"] == rules.PAD_CROP_PCT
    assert recipe["image_size"] == 128  # BiT: under 96 px -> 128 for a 224-px model
    assert recipe.size_candidates == [96, 128]  # and a cheaper size: the probe chooses (test_finetune.py)
    assert "fill the frame" in recipe.choices["crop_pct"].reason
    # The same strokes on white: the whole image, not a black margin around it.
    light = rules.measure_framing(glyphs(tmp_path / "w", background=255), crop_pct=0.875)
    recipe = rules.Recipe()
    rules.frame(light, 224, 0.875, "auto", "auto", recipe)
    assert light.fills_frame and not light.dark_background and recipe["crop_pct"] == 1.0
    # Nothing to cut at crop 1: the measurement is of what the crop removes.
    assert not rules.measure_framing(glyphs(tmp_path / "g"), crop_pct=1.0).fills_frame


def test_photographs_keep_the_models_own_framing(tmp_path):
    framing = rules.measure_framing(photos(tmp_path / "p"), crop_pct=0.875)
    assert not framing.fills_frame and framing.median_short_side == 240
    recipe = rules.Recipe()
    rules.frame(framing, 224, 0.875, "auto", "auto", recipe)
    assert (recipe["image_size"], recipe["crop_pct"]) == (224, 0.875)
    # A 288-px model scales BiT's small-image size with it (to a multiple of 32).
    small = rules.Framing(10, 40, 0.0, False)
    recipe = rules.Recipe()
    rules.frame(small, 288, 0.95, "auto", 1.0, recipe)
    assert recipe["image_size"] == 160 and recipe.size_candidates == [128, 160] and recipe["crop_pct"] == 1.0
    assert recipe.choices["crop_pct"].reason == ""  # given


def test_undecodable_images_only_say_so_in_one_line(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(UsageError, match=r"could be decoded; check the input, or give FinetuneConfig\.image_size"):
        rules.measure_framing([bad], 0.875)


def test_epochs_follow_the_data_size():
    assert rules.epochs_for(1_000) == (8, "1000 training images (under 20,000); the epoch with the lowest validation loss is kept")
    assert rules.epochs_for(100_000)[0] == 4
    assert rules.epochs_for(2_000_000)[0] == 2


def test_flips_are_dropped_only_when_mirroring_costs_more_than_the_noise():
    n = 200
    original = np.ones(n, bool)
    mirrored = original.copy()
    mirrored[:60] = False  # 30% of mirrored images misread: the class changed
    assert rules.flip_hurts(rules.views_check(original, mirrored))
    mirrored = original.copy()
    mirrored[:2] = False  # 1%: below the floor, mirroring keeps the class
    assert not rules.flip_hurts(rules.views_check(original, mirrored))
    noisy_o = np.random.default_rng(0).random(40) < 0.6
    noisy_m = np.random.default_rng(1).random(40) < 0.55
    check = rules.views_check(noisy_o, noisy_m)
    assert check.drop < check.noise and not rules.flip_hurts(check)  # a small drop inside the noise


def test_augmentation_keeps_nine_tenths_of_the_probe():
    original = np.r_[np.ones(90, bool), np.zeros(10, bool)]
    assert rules.augment_keeps(rules.views_check(original, np.r_[np.ones(82, bool), np.zeros(18, bool)]))
    assert not rules.augment_keeps(rules.views_check(original, np.r_[np.ones(60, bool), np.zeros(40, bool)]))


def bowl(lrs_at_min: float, diverge_at: float):
    """A training step whose loss falls until ``lrs_at_min`` and explodes past ``diverge_at``."""
    def step(lr: float) -> float:
        if lr > diverge_at:
            return math.inf
        return 1.0 + (math.log10(lr) - math.log10(lrs_at_min)) ** 2 / 10
    return step


def test_the_range_test_and_its_rule_are_lr_finds():
    finding = range_test(bowl(1e-3, 1e-1), 1e-6, 1e-1, 60, 1.0)
    assert finding.diverged_at is not None and finding.diverged_at > 1e-1
    # The smoothed loss lags the raw one, so its lowest point comes after 1e-3, before the divergence; the rule
    # takes a tenth of it, which lands back near the raw loss's lowest point, a decade and more below divergence.
    assert 1e-3 <= finding.lowest < finding.diverged_at and finding.suggestion == pytest.approx(finding.lowest / 10)
    assert 3e-4 <= finding.suggestion <= 3e-3 and finding.suggestion < finding.diverged_at / 10
    settled = rules.settle_rate(finding)
    assert settled.suggestion == finding.suggestion
    assert "a tenth of the rate at the lowest smoothed loss" in rules.describe_rate(finding)


def test_a_loss_that_never_falls_uses_a_tenth_of_where_it_rose():
    flat_then_up = LRFinding(lrs=[1e-6, 1e-5, 1e-4, 1e-3], losses=[0.20, 0.20, 0.21, 0.30], suggestion=1e-7,
                             lowest=1e-6, diverged_at=1e-2)
    settled = rules.settle_rate(flat_then_up)
    assert settled.suggestion == pytest.approx(1e-4)  # it rose past 110% of its start at 1e-3
    assert "never fell below its start" in rules.describe_rate(flat_then_up)


def test_the_recipe_prints_as_the_options_that_repeat_it():
    recipe = rules.Recipe()
    recipe.set("image_size", 128, True, "small images")
    recipe.set("crop_pct", 1.2, True, "objects fill the frame")
    recipe.set("flip", False, True, "mirroring changes the class")
    recipe.set("augment", "none", True, "views lose the class")
    recipe.set("epochs", 8, True, "data size")
    recipe.set("unfreeze", "all", True, "BiT")
    recipe.set("lr_decay", 1.0, True, "BiT")
    recipe.set("lr", 0.000412, True, "range test")
    assert recipe.options(epochs=6) == ["--image-size 128", "--crop-pct 1.2", "--no-flip", "--augment none",
                                        "--epochs 6", "--unfreeze all", "--lr-decay 1.0", "--lr 0.00041"]
    assert recipe.lines()[2] == "--no-flip: mirroring changes the class"
    again = rules.Recipe.from_dict(recipe.to_dict())
    assert again.options() == recipe.options()


@pytest.mark.parametrize("value,kind,expected", [("auto", int, "auto"), (None, float, "auto"), ("3", int, 3),
                                                 ("4e-4", float, 4e-4), (True, bool, True)])
def test_auto_or_a_value(value, kind, expected):
    assert parse_auto(value, "lr", kind) == expected


def test_a_bad_value_names_the_field_at_construction():
    with pytest.raises(SettingError, match=r"^FinetuneConfig\.lr must be auto or a number, got 'fast'$") as caught:
        FinetuneConfig("images", "ft.pt", model="m", lr="fast")
    assert caught.value.told_by_option() == "--lr must be auto or a number, got 'fast'"
    with pytest.raises(SettingError, match=r"^FinetuneConfig\.batch_size must be at least 2"):
        FinetuneConfig("images", "ft.pt", model="m", batch_size=1)
    assert FinetuneConfig("images", "ft.pt", model="m", epochs="5", crop_pct=None).epochs == 5


@pytest.mark.parametrize("mirror_swaps_classes", [True, False])
def test_the_mirror_check_counts_every_image_the_probe_did_not_fit(monkeypatch, mirror_swaps_classes):
    """Training rows vote out of fold, validation rows by the head: hundreds of paired images, not a fifth of them."""
    from types import SimpleNamespace

    from torch import nn

    from featpipe.finetune import view_choice
    from featpipe.finetune.probe import linear_probe

    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    features = np.eye(2)[labels] * 3 + rng.normal(0, 0.5, (120, 2))
    train_rows, val_rows = np.arange(0, 120, 2), np.arange(1, 120, 2)

    def pooled_views(net, spec, paths, labels_, rows, *args, mirror=False, **kw):
        assert mirror
        return np.ascontiguousarray(features[rows][:, ::-1]) if mirror_swaps_classes else features[rows]

    monkeypatch.setattr(view_choice, "_pooled_views", pooled_views)
    head = nn.Linear(2, 2)
    X, y, X_val, y_val = features[train_rows], labels[train_rows], features[val_rows], labels[val_rows]
    linear_probe(head, X, y, 2)
    check = view_choice._mirror_check(None, None, head, None, labels, train_rows, val_rows, X, y, X_val, y_val, 1.0,
                                      SimpleNamespace(batch_size=8, seed=0), None, "cpu", 2)
    assert check.images == 120
    assert rules.flip_hurts(check) == mirror_swaps_classes
