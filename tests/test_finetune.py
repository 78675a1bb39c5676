"""featpipe finetune: LP-FT, frozen stages untouched, BatchNorm policy, resume after SIGKILL, the checkpoint."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import featpipe
from featpipe import ExtractConfig, extract
from featpipe.errors import UsageError
from featpipe.finetune import FinetuneConfig, finetune
from featpipe.finetune.blocks import group_parameters, learning_rates, trainable_groups
from featpipe.finetune.loop import with_warmup
from featpipe.finetune.probe import PROBE_C, linear_probe, probe_strength

from .conftest import TINY_MODEL, make_images

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def labelled(tmp_path) -> Path:
    return make_images(tmp_path / "images", classes=3, per_class=8)


def config(tmp_path: Path, images: Path, **kw) -> FinetuneConfig:
    kw.setdefault("model", TINY_MODEL)
    kw.setdefault("weights", "random")
    kw.setdefault("epochs", 2)
    kw.setdefault("batch_size", 8)
    kw.setdefault("image_size", 64)
    # The plumbing tests train with given settings (the measured ones have their own tests, below).
    kw.setdefault("lr", 1e-4)
    kw.setdefault("crop_pct", None)
    kw.setdefault("flip", True)
    kw.setdefault("augment", "standard")
    return FinetuneConfig(images, kw.pop("output", tmp_path / "ft.pt"), **kw)


def groups_of_test_resnet():
    net = featpipe.models.create_architecture(featpipe.models.resolve(TINY_MODEL))
    return group_parameters(net, ["act1", "layer1", "layer2", "layer3", "layer4"], "fc")


def test_unfreezing_counts_stages_from_the_top():
    g = groups_of_test_resnet()
    assert trainable_groups(g, "head") == ["head"]
    assert trainable_groups(g, "2") == ["layer3", "layer4", "neck", "head"]
    assert trainable_groups(g, "all") == ["act1", "layer1", "layer2", "layer3", "layer4", "neck", "head"]
    assert all(n.startswith("fc.") for n in g.members["head"]) and g.members["head"]
    assert all(n.startswith("layer4.") for n in g.members["layer4"])
    with pytest.raises(UsageError, match="has 5 stages"):
        trainable_groups(g, "9")
    with pytest.raises(UsageError, match=r"^FinetuneConfig\.unfreeze must be"):
        trainable_groups(g, "top")


def test_lower_stages_learn_more_slowly():
    g = groups_of_test_resnet()
    rates = learning_rates(g, trainable_groups(g, "2"), 1e-3, 0.5)
    assert rates == {"layer3": 2.5e-4, "layer4": 5e-4, "neck": 1e-3, "head": 1e-3}


def test_a_barely_varying_feature_gets_no_huge_weight_in_the_probe():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    X = np.column_stack([rng.normal(size=(80, 4)) + y[:, None], 1e-8 * rng.normal(size=80)])  # a dead channel
    head = nn.Linear(5, 2)
    linear_probe(head, X, y, 2)
    assert head.weight.abs().max() < 100  # 1/std would be ~1e8: the first step that wakes it explodes the logits


def test_the_linear_probe_folds_its_scaler_into_the_head():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    X = rng.normal(5, 3, size=(90, 6)) + y[:, None] * rng.normal(size=6)
    head = nn.Linear(6, 4)  # class 3 has no training rows: never predicted
    linear_probe(head, X, y, 4)
    mean, std = X.mean(0), np.maximum(X.std(0), np.quantile(X.std(0), 0.9))  # spreads floored at the 90th percentile
    clf = LogisticRegression(max_iter=1000).fit((X - mean) / std, y)
    with torch.no_grad():
        logits = head(torch.from_numpy(X).float()).numpy()
    np.testing.assert_array_equal(logits.argmax(1), clf.predict((X - mean) / std))
    np.testing.assert_allclose(torch.softmax(torch.from_numpy(logits[:, :3]), 1).numpy(),
                               clf.predict_proba((X - mean) / std), atol=1e-4)


def test_warmup_rises_linearly_then_the_cosine_falls_to_zero():
    from featpipe.classify.heads import make_schedule

    weight = nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([{"params": [weight], "lr": 1e-3}, {"params": [nn.Parameter(torch.zeros(1))], "lr": 5e-4}])
    steps_per_epoch, epochs = 4, 3  # one epoch of warm-up, then two of cosine
    schedule = with_warmup(opt, steps_per_epoch, lambda: make_schedule("cosine", opt, 1e-3, epochs - 1,
                                                                        steps_per_epoch, (1,), 1))
    rates = []
    for _ in range(epochs * steps_per_epoch):
        rates.append([g["lr"] for g in opt.param_groups])
        opt.step()
        schedule.step()
    top = np.array([r[0] for r in rates])
    np.testing.assert_allclose(top[:5], 1e-3 * np.arange(1, 6) / 5)  # 1/5 ... 5/5 of the rate, then the cosine
    assert np.all(np.diff(top[4:]) < 0) and top[-1] < 0.05 * 1e-3  # the last step: (1 - cos(pi/8)) / 2
    np.testing.assert_allclose([r[1] / r[0] for r in rates], 0.5)  # each group keeps its own share


def test_the_probe_strength_is_chosen_on_validation_rows():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    y_val = np.repeat(np.arange(3), 40)
    signal = np.eye(3)[np.concatenate([y, y_val])] * 0.8
    X_all = np.column_stack([signal + rng.normal(size=(180, 3)), rng.normal(size=(180, 200))])  # 200 noise columns
    X, X_val = X_all[:60], X_all[60:]
    chosen = probe_strength(X, y, X_val, y_val)
    assert chosen in PROBE_C and chosen < 1.0  # C=1 memorises the 60 rows through the noise columns

    def val_loss(C):
        head = nn.Linear(X.shape[1], 3)
        linear_probe(head, X, y, 3, C=C)
        with torch.no_grad():
            return nn.functional.cross_entropy(head(torch.from_numpy(X_val).float()), torch.from_numpy(y_val)).item()

    assert val_loss(chosen) == min(val_loss(C) for C in PROBE_C)


def test_without_validation_rows_the_probe_strength_is_chosen_by_cross_validation():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 30)
    X = np.column_stack([np.eye(3)[y] * 0.8 + rng.normal(size=(90, 3)), rng.normal(size=(90, 200))])
    chosen = probe_strength(X, y, X[:0], y[:0])
    assert chosen in PROBE_C and chosen < 1.0  # C=1 memorises the noise columns: held-out folds say so
    # A class with one image leaves nothing to hold out: the default, not an error.
    assert probe_strength(X[:61], y[:61], X[:0], y[:0]) == 1.0


def test_val_size_0_trains_on_every_image_and_keeps_the_last_epoch(tmp_path, labelled, monkeypatch):
    from typer.testing import CliRunner

    from featpipe.cli import app

    def cli(out, *extra):
        return CliRunner().invoke(app, ["finetune", str(labelled), "-o", str(out), "--model", TINY_MODEL, "--weights",
                                        "random", "--epochs", "2", "--batch-size", "8", "--image-size", "64",
                                        "--lr", "1e-3", "--quiet", *extra])

    # A validated run whose fine-tuned epoch is kept (a probe held back by a strong L2 penalty) says how to refit.
    monkeypatch.setattr(sys.modules["featpipe.finetune.probe"], "PROBE_C", (1e-4,))
    run = cli(tmp_path / "val.pt")
    assert run.exit_code == 0, run.output
    kept = torch.load(tmp_path / "val.pt", weights_only=True)["featpipe"]["best_epoch"]
    refit = next(line for line in run.output.splitlines() if line.startswith("  featpipe finetune"))
    assert kept > 0 and f"--epochs {kept} --unfreeze all --lr-decay 1.0" in refit and "--lr 0.001" in refit
    assert refit.endswith("--validation-size 0") and "--image-size 64" in refit and "-o " + str(tmp_path / "val-refit.pt") in refit
    assert "(a refit on all 24 images, validation ones included" in run.output

    out = tmp_path / "all.pt"
    run = cli(out, "--validation-size", "0")
    assert run.exit_code == 0, run.output
    assert "epoch 2 kept (the last: --validation-size 0, no validation images; 24 trained on)" in run.output
    assert "--validation-size 0 --epochs" not in run.output  # the refit hint is for validated runs
    meta = torch.load(out, weights_only=True)["featpipe"]
    assert meta["train_images"] == 24 and meta["val_images"] == 0 and meta["best_epoch"] == 2
    assert meta["val_loss"] is None and meta["val_accuracy"] is None
    with pytest.raises(UsageError, match=r"FinetuneConfig.val_size must be a fraction from 0 \(no validation"):
        finetune(config(tmp_path, labelled, val_size=1.0))


def test_frozen_stages_and_batchnorm_statistics_are_bit_identical(tmp_path, labelled):
    result = finetune(config(tmp_path, labelled, unfreeze="1", bn="frozen", epochs=2))
    rows = {r["group"]: r for r in result.audit}
    for stage in ("layer1", "layer2", "layer3"):
        assert rows[stage]["changed"] == 0 and rows[stage]["parameters"] > 0
    assert rows["layer4"]["changed"] == rows["layer4"]["parameters"] > 0
    assert all(r["bn_changed"] == 0 for r in result.audit)  # frozen policy: no statistic moves anywhere
    assert result.trainable == ["layer4", "neck", "head"]

    # The saved weights themselves: frozen stages equal the starting network's, tensor for tensor.
    start = featpipe.models.load_model(featpipe.models.resolve(TINY_MODEL), "random", 0)[0].state_dict()
    saved = torch.load(result.output, weights_only=True)["state_dict"]
    for key, value in saved.items():
        if key.startswith(("layer1.", "layer2.", "layer3.", "conv1.", "bn1.")):
            assert torch.equal(value, start[key]), key


def test_batchnorm_train_policy_updates_only_unfrozen_stages(tmp_path, labelled, monkeypatch):
    # The policy itself: one training-mode forward pass moves the statistics of unfrozen stages only.
    net = featpipe.models.create_architecture(featpipe.models.resolve(TINY_MODEL))
    groups = groups_of_test_resnet()
    from featpipe.finetune.blocks import set_train_mode

    before = {k: v.clone() for k, v in net.state_dict().items() if "running_" in k}
    set_train_mode(net, groups, trainable_groups(groups, "1"), "train")
    net(torch.randn(4, 3, 64, 64))
    moved = {k for k, v in net.state_dict().items() if "running_" in k and not torch.equal(v, before[k])}
    assert moved and all(k.startswith("layer4.") for k in moved)
    # End to end, the audit of the kept weights says the same. A probe held back by a strong L2 penalty
    # leaves training something to improve, so an epoch after the probe is kept.
    monkeypatch.setattr(sys.modules["featpipe.finetune.probe"], "PROBE_C", (1e-4,))
    result = finetune(config(tmp_path, labelled, unfreeze="1", bn="train", epochs=2, lr=1e-3))
    assert result.best_epoch > 0, "the linear probe was kept: the audit below would compare it with itself"
    rows = {r["group"]: r for r in result.audit}
    assert rows["layer4"]["bn_changed"] == rows["layer4"]["bn_statistics"] > 0
    assert rows["layer3"]["bn_changed"] == 0 and rows["layer1"]["bn_changed"] == 0


def test_checkpoint_is_safe_to_load_and_extract_uses_it(tmp_path, labelled):
    result = finetune(config(tmp_path, labelled, unfreeze="head", epochs=1, image_size=None))
    ckpt = torch.load(result.output, weights_only=True)
    meta = ckpt["featpipe"]
    assert meta["format"] == "featpipe-finetune" and meta["classes"] == ["class_0", "class_1", "class_2"]
    assert meta["model"] == f"timm:{TINY_MODEL}" and meta["best_epoch"] == result.best_epoch
    assert ckpt["state_dict"]["fc.weight"].shape[0] == 3
    fs = featpipe.load(extract(ExtractConfig(labelled, tmp_path / "f.h5", model=TINY_MODEL,
                                             weights=str(result.output), layers=("logits",))).output)
    assert fs.dim("logits") == 3
    # Read back as it was trained: the same classes, and the extractor's logits turned into probabilities.
    from featpipe.finetune.checkpoint import load, predict_proba

    tuned = load(result.output)
    assert tuned.classes == meta["classes"]
    probs, reasons = predict_proba(tuned, [labelled / p for p in fs.paths])
    assert reasons == [None] * len(fs) and np.allclose(probs.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(fs.X("logits")), 1).numpy(), atol=1e-4)
    # featpipe predict with the checkpoint: the same classes, one row per image, failed images with a reason.
    (labelled / "class_0" / "broken.jpg").write_bytes(b"not a jpeg")
    from featpipe.predict import predict

    pred = predict(result.output, labelled)
    assert len(pred.paths) == len(fs) + 1 and pred.class_names == meta["classes"]
    broken = pred.paths.index("class_0/broken.jpg")
    assert not pred.valid[broken] and pred.reasons[broken]
    keep = [i for i in range(len(pred.paths)) if i != broken]
    np.testing.assert_allclose(pred.proba[keep], probs, atol=1e-5)
    # Validation accuracy of the kept epoch is what its head scores on the held-out images.
    assert 0 <= result.best.val_accuracy <= 1 and result.history[0].epoch == 0


def test_the_best_epoch_by_validation_loss_is_kept(tmp_path, labelled):
    from featpipe.finetune.report import write_report

    result = finetune(config(tmp_path, labelled, epochs=3))
    assert result.best.val_loss == min(e.val_loss for e in result.history)
    assert [e.epoch for e in result.history] == [0, 1, 2, 3]
    written = write_report(result, tmp_path / "report")
    assert [p.name for p in written] == ["curves.png"] and written[0].stat().st_size > 10_000  # no range test ran


def test_bad_options_are_one_line(tmp_path, labelled):
    with pytest.raises(UsageError, match="FinetuneConfig.lr must be greater than 0 or auto, got 0.0"):
        finetune(config(tmp_path, labelled, lr=0))
    with pytest.raises(UsageError, match="FinetuneConfig.augment must be one of auto, none, light"):
        finetune(config(tmp_path, labelled, augment="extreme"))
    with pytest.raises(UsageError, match="output folder"):
        finetune(config(tmp_path, labelled, output=tmp_path / "nowhere" / "ft.pt"))
    with pytest.raises(UsageError, match="FinetuneConfig.crop_pct must be between 0.5 and 2 or auto, got 3.0"):
        finetune(config(tmp_path, labelled, crop_pct=3.0))
    with pytest.raises(UsageError, match=r"^FinetuneConfig\.epochs must be auto or a whole number, got 'many'$"):
        finetune(config(tmp_path, labelled, epochs="many"))


def test_crop_pct_keeps_the_whole_image_or_pads_it_as_timm_does():
    """timm's crop_pct: the model's 0.875 cuts the edges; 1 keeps the image whole; above 1 pads with black."""
    from PIL import Image

    from featpipe.extraction.preprocess import Preprocessor
    from featpipe.finetune.data import data_config

    spec = featpipe.models.resolve(TINY_MODEL)
    net = featpipe.models.create_architecture(spec)
    own = featpipe.models.eval_config(net, spec)
    assert data_config(net, spec, 96).resize == round(96 * own.resize / own.crop[0])  # the model's ratio kept
    assert data_config(net, spec, 96, 1.0).resize == 96
    padded = data_config(net, spec, 96, 1.2)
    assert padded.resize == 80 and padded.crop == (96, 96)
    white = Image.new("RGB", (64, 64), (255, 255, 255))
    pixels = Preprocessor(padded).image(white)
    assert pixels.shape == (96, 96, 3)
    assert (pixels[8:88, 8:88] == 255).all() and (pixels[:8] == 0).all() and (pixels[:, 88:] == 0).all()
    whole = Preprocessor(data_config(net, spec, 96, 1.0)).image(white)
    assert (whole == 255).all()
    # Augmented views come from the same black-bordered frame: about 3/4 of a 2.0 frame is border.
    from featpipe.finetune.data import train_transform

    torch.manual_seed(0)
    black = {cp: np.mean([(train_transform(data_config(net, spec, 96, cp), "light", False)(white) == 0).all(0)
                          .float().mean().item() for _ in range(20)]) for cp in (1.0, 2.0)}
    assert black[2.0] > 0.3 and black[1.0] < 0.1, black


RUN = """
import sys
from featpipe.finetune import FinetuneConfig, finetune
finetune(FinetuneConfig(sys.argv[1], sys.argv[2], model="test_resnet", weights="random", epochs=4, batch_size=8,
                        image_size=64, unfreeze="2", resume=sys.argv[3] == "resume"))
"""


def test_resume_after_sigkill_gives_the_uninterrupted_weights(tmp_path, labelled):
    whole = tmp_path / "whole.pt"
    subprocess.run([sys.executable, "-c", RUN, str(labelled), str(whole), "fresh"], check=True, cwd=REPO)
    killed = tmp_path / "killed.pt"
    resume_file = tmp_path / "killed.pt.resume"
    proc = subprocess.Popen([sys.executable, "-c", RUN, str(labelled), str(killed), "fresh"], cwd=REPO)
    deadline = time.monotonic() + 300
    while not resume_file.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert resume_file.exists() and not killed.exists()
    with pytest.raises(subprocess.CalledProcessError):  # a stale run is never silently restarted
        subprocess.run([sys.executable, "-c", RUN, str(labelled), str(killed), "fresh"], check=True, cwd=REPO,
                       capture_output=True)
    subprocess.run([sys.executable, "-c", RUN, str(labelled), str(killed), "resume"], check=True, cwd=REPO)
    a = torch.load(whole, weights_only=True)
    b = torch.load(killed, weights_only=True)
    assert a["featpipe"]["best_epoch"] == b["featpipe"]["best_epoch"]
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert not resume_file.exists()


@pytest.mark.gpu
def test_bf16_on_the_gpu_trains(tmp_path, labelled):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    result = finetune(config(tmp_path, labelled, device="cuda", epochs=1))
    assert np.isfinite(result.history[-1].train_loss)


def test_extract_takes_model_and_image_size_from_the_checkpoint(tmp_path, labelled):
    result = finetune(config(tmp_path, labelled, unfreeze="head", epochs=1, image_size=64, crop_pct=1.25))
    fs = featpipe.load(extract(ExtractConfig(labelled, tmp_path / "f.h5", weights=str(result.output),
                                             layers=("logits",))).output)
    assert fs.meta["model"] == f"timm:{TINY_MODEL}" and fs.meta["data_config"]["crop"] == [64, 64]
    assert fs.meta["data_config"]["resize"] == 51  # floor(64 / 1.25): padded, as it was trained
    # The features are the fine-tuned network's own: its head on its own preprocessing.
    from featpipe.finetune.checkpoint import load, predict_proba

    probs, _ = predict_proba(load(result.output), [labelled / p for p in fs.paths])
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(fs.X("logits")), 1).numpy(), atol=1e-4)
    with pytest.raises(featpipe.errors.WeightsError, match="was fine-tuned from timm:test_resnet, not"):
        extract(ExtractConfig(labelled, tmp_path / "g.h5", model="resnet18", weights=str(result.output)))
    with pytest.raises(UsageError, match="ExtractConfig.model is missing"):
        extract(ExtractConfig(labelled, tmp_path / "g.h5", weights="random"))
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "plain.pt")
    with pytest.raises(UsageError, match="plain state dict that does not say which model"):
        extract(ExtractConfig(labelled, tmp_path / "g.h5", weights=str(tmp_path / "plain.pt")))


def test_the_defaults_measure_a_recipe_and_say_why(tmp_path, labelled):
    """No options: every auto setting is measured, printed with its reason, and recorded in the checkpoint."""
    from typer.testing import CliRunner

    from featpipe.cli import app

    out = tmp_path / "ft.pt"
    run = CliRunner().invoke(app, ["finetune", str(labelled), "-o", str(out), "--model", TINY_MODEL, "--weights",
                                   "random", "--batch-size", "8", "--quiet"])
    assert run.exit_code == 0, run.output
    said = run.output.split("recipe:", 1)[1]
    # test_resnet is a 160-px model: BiT's 128 at 224 px scales to 96, and the cheaper size is 64.
    chosen = re.search(r"of 64 and 96 px, the linear probe's held-out log-loss chose (64|96) \(64 px [0-9.]+, 96 px", said)
    assert chosen, said
    for needle in (f"--image-size {chosen[1]}: small images", "--epochs 8:", "--unfreeze all: BiT's recipe",
                   "--lr-decay 1: BiT's recipe", "the probe's accuracy on", "--lr ", "range test (the network with a fresh head)"):
        assert needle in said, needle
    meta = torch.load(out, weights_only=True)["featpipe"]
    recipe = json.loads(meta["recipe"])
    assert {"image_size", "crop_pct", "flip", "augment", "epochs", "unfreeze", "lr_decay", "lr"} <= set(recipe)
    assert all(recipe[k]["auto"] for k in ("image_size", "crop_pct", "flip", "augment", "lr", "epochs"))
    config = json.loads(meta["config"])
    size = int(chosen[1])
    assert config["lr"] == recipe["lr"]["value"] > 0 and config["image_size"] == size  # the values, not "auto"
    assert json.loads(meta["data_config"])["crop"] == [size, size]


def test_a_run_that_never_beats_the_probe_says_so_plainly(tmp_path, labelled):
    from typer.testing import CliRunner

    from featpipe.cli import app

    run = CliRunner().invoke(app, ["finetune", str(labelled), "-o", str(tmp_path / "ft.pt"), "--model", TINY_MODEL,
                                   "--weights", "random", "--batch-size", "8", "--image-size", "64", "--epochs", "1",
                                   "--lr", "5", "--warmup", "0", "--quiet"])
    assert run.exit_code == 0, run.output
    assert "epoch 0 kept" in run.output
    assert "fine-tuning did not improve on the linear probe: the checkpoint holds the probe on the frozen network" \
        in run.output
    assert "try --lr 1.7" in run.output  # what the measurements suggest: the rate moved the features too far


def test_the_range_test_leaves_the_weights_as_the_probe_made_them(tmp_path, labelled, monkeypatch):
    """--lr auto trains during its test; the network and the head are put back before fine-tuning starts."""
    from featpipe.finetune import lr_range

    seen = {}
    real = lr_range.find_rate

    def spy(net, head, *args, **kw):
        before = {k: v.clone() for k, v in net.state_dict().items()}
        finding = real(net, head, *args, **kw)
        seen["same"] = all(torch.equal(before[k], v) for k, v in net.state_dict().items())
        return finding

    monkeypatch.setattr(lr_range, "find_rate", spy)
    result = finetune(config(tmp_path, labelled, epochs=0, lr="auto"))
    assert seen["same"] and result.recipe.choices["lr"].auto and result.lr_finding is not None
    assert result.recipe["lr"] == pytest.approx(result.lr_finding.suggestion)
