"""featpipe run with a [guide] table: the guide as a stage, its result kept, and the layer it advises."""
from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import featpipe
from featpipe.classify import load_classifier
from featpipe.cli import app
from featpipe.errors import RunConflictError, UsageError
from featpipe.guide import GuideConfig
from featpipe.pipeline import load_pipeline, run_pipeline, schema
from featpipe.pipeline.guide import GuideOutcome, advised_layers

from .conftest import TINY_MODEL, make_images

# The guide compares only layer1 and layer2, so its advice is never the file's default layer ("pooled").
GUIDE = ('[guide]\noutput = "out/guide.json"\nweights = "random"\nsample = 30\nfolds = 3\ncache_dir = "cache"\n'
         'layer = ["layer1", "layer2"]\nfinetune = false\n')
EXTRACT = f'[extract]\ninput = "images"\noutput = "out/f.h5"\nmodel = "{TINY_MODEL}"\nweights = "random"\n'
FIT = '[fit]\noutput = "out/m.skops"\nclassifier = ["logreg"]\ntest_size = 0.25\n'


@pytest.fixture
def job(tmp_path) -> Path:
    make_images(tmp_path / "images", classes=3, per_class=10)
    path = tmp_path / "job.toml"
    path.write_text(GUIDE + EXTRACT + 'layer = ["guide", "pooled"]\n' + FIT)
    return path


def test_the_advised_layer_is_extracted_by_name_and_fitted(job):
    job.write_text(job.read_text().replace('output = "out/guide.json"\n', 'output = "out/guide.json"\nreport = "rep"\n'))
    result = run_pipeline(load_pipeline(job))
    assert (job.parent / "rep" / "index.html").is_file() and (job.parent / "rep" / "sweep.png").is_file()
    doc = json.loads((job.parent / "out" / "guide.json").read_text())
    advised = doc["recommended_layer"]
    assert advised in ("layer1", "layer2") and doc["input"] == str(job.parent / "images")
    assert doc["model"] == f"timm:{TINY_MODEL}" and doc["finetune"]["measured"] is False  # [extract]'s model
    assert not result.guide.reused and result.advised == (advised,)
    fs = featpipe.load(job.parent / "out" / "f.h5")
    assert fs.layers == [advised, "pooled"]  # the real name, never "guide"
    assert load_classifier(job.parent / "out" / "m.skops").layer == advised  # not the file's default, pooled
    assert result.fit.n_test == 8


def test_a_kept_result_is_reused_and_a_stale_one_measured_again(job):
    run_pipeline(load_pipeline(job))
    kept = job.parent / "out" / "guide.json"
    stamp = kept.stat().st_mtime_ns
    again = run_pipeline(load_pipeline(job))
    assert again.guide.reused and kept.stat().st_mtime_ns == stamp
    assert again.extract.already_complete and again.fit_skipped

    job.write_text(job.read_text().replace("folds = 3", "folds = 4"))  # another setting
    changed = run_pipeline(load_pipeline(job))
    assert not changed.guide.reused and json.loads(kept.read_text())["cv"] == 4

    image = job.parent / "images" / "class_1" / "img_002.jpg"  # another image, same name
    Image.fromarray(np.zeros((50, 50, 3), np.uint8)).save(image)
    os.utime(image, ns=(1, 1))
    assert not run_pipeline(load_pipeline(job)).guide.reused

    kept.write_text(kept.read_text().replace('"cv": 4', '"cv": 5'))  # hand-edited, fingerprint kept: read as is
    assert run_pipeline(load_pipeline(job)).guide.doc["cv"] == 5


def test_the_cli_prints_the_advice_and_ends_with_the_finetune_command(job):
    runner = CliRunner()
    first = runner.invoke(app, ["run", str(job), "--quiet"])
    assert first.exit_code == 0, first.output
    assert "advice:" in first.stdout and "LogME" in first.stdout
    assert '"guide" in extract.layer: layer' in first.stdout and "(the fit learns from it)" in first.stdout
    assert "featpipe finetune" not in first.stdout  # frozen-feature advice: no fine-tuning line
    # A kept result that advises fine-tuning (as the guide's measurement does on the digits): its command is last.
    kept = job.parent / "out" / "guide.json"
    doc = json.loads(kept.read_text())
    command = "featpipe finetune images -o finetuned.pt --model timm:test_resnet --unfreeze all"
    doc.update(strategy="fine-tune-all", strategy_text="fine-tune the whole network", commands=[*doc["commands"], command])
    kept.write_text(json.dumps(doc))
    again = runner.invoke(app, ["run", str(job), "--quiet"])
    assert again.exit_code == 0, again.output
    assert "up to date with these images and settings" in again.stdout
    assert again.stdout.rstrip("\n").splitlines()[-1] == command


def test_guide_without_a_guide_table_names_the_line_and_the_fix(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(EXTRACT + '# the advised layer\nlayer = ["guide"]\n' + FIT)
    with pytest.raises(UsageError, match=r'p.toml:7: extract.layer names "guide", the guide\'s advice, but the '
                                         r"pipeline has no \[guide\] table .*add one \(output = \"guide.json\"\)"):
        load_pipeline(path)
    path.write_text(EXTRACT + FIT + 'layer = "guide"\n')
    with pytest.raises(UsageError, match=r'p.toml:10: fit.layer names "guide"'):
        load_pipeline(path)


@pytest.mark.parametrize("body, match", [
    ('[guide]\nsample = 30\n', r":1: \[guide\] needs output"),
    ('[guide]\noutput = "g.json"\nsamples = 30\n', r":3: unknown key 'samples' in \[guide\]"),
    ('[guide]\noutput = "g.json"\nfinetune = "yes"\n', r":3: guide.finetune must be true or false, got 'yes'"),
    ('[guide]\noutput = "g.json"\nmodel = "resnet18"\n', r":3: guide.model must be a list of strings"),
])
def test_bad_guide_tables_name_the_line(tmp_path, body, match):
    path = tmp_path / "p.toml"
    path.write_text(body + EXTRACT)
    with pytest.raises(UsageError, match=match):
        load_pipeline(path)


def test_a_setting_only_the_guide_checks_gets_its_line(job):
    job.write_text(job.read_text().replace("folds = 3", "folds = 1"))
    with pytest.raises(UsageError, match=r"job.toml:5: guide.folds must be at least 2, got 1"):
        run_pipeline(load_pipeline(job))
    assert not (job.parent / "out" / "f.h5").exists()  # before any extraction


def test_every_guide_setting_is_a_key_with_the_guides_defaults(tmp_path):
    keys = schema.table("guide").keys
    assert {k.field for k in keys.values()} == {"output", "report"} | {f.name for f in fields(GuideConfig)}
    path = tmp_path / "p.toml"
    path.write_text('[guide]\noutput = "g.json"\n' + EXTRACT)
    stage = load_pipeline(path).guide
    default = GuideConfig(tmp_path)
    assert stage.output == tmp_path / "g.json" and stage.config.input == tmp_path / "images"
    assert stage.config.models == (TINY_MODEL,) and stage.config.weights == "random"  # [extract]'s
    assert (stage.config.finetune, stage.config.sample, stage.config.cv) == (default.finetune, default.sample, default.cv)


def test_an_advised_combination_extracts_each_of_its_layers():
    outcome = GuideOutcome(Path("g.json"), {"recommended_layer": "blocks.4+blocks.6", "commands": []}, None)
    assert advised_layers(("guide", "logits", "blocks.6"), outcome) == ("blocks.4", "blocks.6", "logits")


def test_changed_advice_extracts_again_and_refits(job):
    """A feature file of the guide's earlier advice is stale, as a model fitted on other settings is."""
    job.write_text(job.read_text().replace('layer = ["guide", "pooled"]', 'layer = ["guide"]'))
    first = run_pipeline(load_pipeline(job))
    (advised,) = first.advised
    other = "layer1" if advised == "layer2" else "layer2"
    job.write_text(job.read_text().replace('layer = ["layer1", "layer2"]', f'layer = ["{other}"]'))
    changed = run_pipeline(load_pipeline(job))
    assert changed.advised == (other,) and changed.replaced == (advised,) and changed.extract.computed == 30
    assert featpipe.load(job.parent / "out" / "f.h5").layers == [other]
    assert not changed.fit_skipped and load_classifier(job.parent / "out" / "m.skops").layer == other


def test_a_file_of_another_model_is_not_replaced_on_advice(job):
    job.write_text(job.read_text().replace('layer = ["guide", "pooled"]', 'layer = ["guide"]'))
    extract_other = featpipe.ExtractConfig(job.parent / "images", job.parent / "out" / "f.h5", model="tv:resnet18",
                                           weights="random", layers=("layer4",))
    (job.parent / "out").mkdir()
    featpipe.extract(extract_other)
    with pytest.raises(RunConflictError, match="exists from another run"):
        run_pipeline(load_pipeline(job))
    assert featpipe.load(job.parent / "out" / "f.h5").meta["model"] == "tv:resnet18"
