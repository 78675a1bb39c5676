"""The pipeline's keys are the commands' options, generated from the config dataclasses (featpipe/pipeline/schema.py):
every field is a key or excluded with a reason, the keys of the previous release still read with one deprecation
line, and [finetune] is a stage like the others."""
from __future__ import annotations

import dataclasses
import warnings

import pytest
from typer.testing import CliRunner

from featpipe.classify import FitConfig, HeadSettings
from featpipe.cli import app, load_command
from featpipe.errors import UsageError
from featpipe.extraction import ExtractConfig
from featpipe.finetune import FinetuneConfig
from featpipe.guide import GuideConfig
from featpipe.pipeline import load_pipeline, run_pipeline, schema

from .conftest import TINY_MODEL, make_images

CONFIGS = {"extract": (ExtractConfig,), "fit": (FitConfig, HeadSettings), "guide": (GuideConfig,),
           "finetune": (FinetuneConfig,)}
EXTRACT_TABLE = f'[extract]\ninput = "images"\noutput = "out/f.h5"\nmodel = "{TINY_MODEL}"\nweights = "random"\n'


@pytest.mark.parametrize("section", schema.STAGES)
def test_every_field_is_a_key_or_excluded_with_why(section):
    table = schema.table(section)
    keyed = {(k.into, k.field) for k in table.keys.values()}
    for cls in CONFIGS[section]:
        into = "head" if cls is HeadSettings else "config"
        for f in dataclasses.fields(cls):
            why = schema.EXCLUDED[section].get(f.name, "")
            assert ((into, f.name) in keyed) != bool(why.strip()), f"{cls.__name__}.{f.name}: a key, or excluded with why"
    fields = {f.name for cls in CONFIGS[section] for f in dataclasses.fields(cls)}
    assert set(schema.EXCLUDED[section]) <= fields  # no reason left for a field that is gone


@pytest.mark.parametrize("section", schema.STAGES)
def test_the_keys_are_the_commands_options(section):
    """Each key is an option of its command (``--augment-views`` is ``augment_views``), and each option a key,
    or in OPTIONS_WITHOUT_KEY with why; the command's argument and the stage's own output are keys too."""
    params = load_command(section).params
    options = {o for p in params if p.param_type_name == "option" for o in p.opts if o.startswith("--")}
    arguments = {p.name for p in params if p.param_type_name == "argument"}
    for name, key in schema.table(section).keys.items():
        option = "--" + name.replace("_", "-")
        assert option in options or name in arguments or key.into == "stage", f"[{section}] {name}: no {option}"
    keyed = {"--" + name.replace("_", "-") for name in schema.table(section).keys}
    for option in options - keyed:
        assert schema.OPTIONS_WITHOUT_KEY.get(option, "").strip(), f"featpipe {section} {option}: no key, and no why"


def test_the_keys_of_the_previous_release_still_read_with_one_line_each(tmp_path):
    path = tmp_path / "p.toml"
    body = ('[guide]\noutput = "g.json"\ncv = 3\nlayers = ["layer1"]\nmodels = ["resnet18"]\n'
            '[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\nlayers = ["pooled", "logits"]\naugment = 2\n'
            '[fit]\noutput = "m.skops"\nclassifiers = ["nb", "logreg"]\n')
    path.write_text(body)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = load_pipeline(path)
    lines = [str(w.message) for w in caught if issubclass(w.category, schema.DeprecatedKey)]
    old = [("guide", "cv", "folds", 3), ("guide", "layers", "layer", 4), ("guide", "models", "model", 5),
           ("extract", "layers", "layer", 10), ("extract", "augment", "augment_views", 11),
           ("fit", "classifiers", "classifier", 14)]
    assert sorted(lines) == sorted(f"{path}:{number}: {section}.{key} is deprecated; use {section}.{new} (the old "
                                   "spelling goes in the next release)" for section, key, new, number in old)
    assert (p.guide.config.cv, p.guide.config.layers, p.guide.config.models) == (3, ("layer1",), ("resnet18",))
    assert p.extract.layers == ("pooled", "logits") and p.extract.augment == 2 and p.fit.classifiers == ("nb", "logreg")
    # The command line prints each as one line on stderr.
    make_images(tmp_path / "images", classes=2, per_class=3)
    path.write_text(EXTRACT_TABLE + 'layers = ["pooled"]\n')
    r = CliRunner().invoke(app, ["run", str(path), "--quiet"])
    assert r.exit_code == 0, r.output
    assert r.stderr.splitlines()[0] == (f"featpipe: {path}:6: extract.layers is deprecated; use extract.layer (the old "
                                        "spelling goes in the next release)")
    path.write_text(EXTRACT_TABLE + 'layers = ["pooled"]\nlayer = ["pooled"]\n')  # both spellings: one setting
    with pytest.raises(UsageError, match=r"p.toml:6: extract.layers and extract.layer are one setting"):
        load_pipeline(path)


def test_unknown_keys_name_their_line_and_the_valid_keys(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(EXTRACT_TABLE + '[finetune]\noutput = "ft.pt"\nepoch = 3\n')
    with pytest.raises(UsageError, match=r"p.toml:8: unknown key 'epoch' in \[finetune\]; known: input, output, model, "
                                         r".*epochs"):
        load_pipeline(path)


def test_a_finetune_table_defaults_to_extracts_network_and_checks_its_values(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(EXTRACT_TABLE + '[finetune]\noutput = "out/ft.pt"\nepochs = "auto"\nimage_size = 64\n')
    stage = load_pipeline(path).finetune
    assert (stage.config.input, stage.config.model, stage.config.weights) == (tmp_path / "images", TINY_MODEL, "random")
    assert stage.config.output == tmp_path / "out" / "ft.pt" and stage.config.epochs == "auto"
    path.write_text(EXTRACT_TABLE + '[finetune]\noutput = "out/ft.pt"\n\nepochs = "many"\n')
    with pytest.raises(UsageError, match=r"p.toml:9: finetune.epochs must be auto or a whole number, got 'many'"):
        load_pipeline(path)


def test_the_finetune_stage_runs_last_and_is_skipped_while_its_checkpoint_is_current(tmp_path):
    from featpipe.finetune.checkpoint import read_meta

    make_images(tmp_path / "images", classes=2, per_class=6)
    path = tmp_path / "job.toml"
    path.write_text(EXTRACT_TABLE + '[fit]\noutput = "out/m.skops"\nclassifier = ["nb"]\ntest_size = 0.25\n'
                    '[finetune]\noutput = "out/ft.pt"\nepochs = 1\nlr = 0.0001\nbatch_size = 4\nimage_size = 64\n'
                    'crop_pct = 1.0\naugment = "none"\nflip = false\nreport = "ft-report"\n')
    first = run_pipeline(load_pipeline(path))
    checkpoint = tmp_path / "out" / "ft.pt"
    assert first.fit is not None and first.finetune is not None and not first.finetune_skipped
    assert read_meta(checkpoint)["model"] == f"timm:{TINY_MODEL}" and first.finetune.train_images + \
        first.finetune.val_images == 12
    assert (tmp_path / "ft-report" / "index.html").is_file() and (tmp_path / "ft-report" / "curves.png").is_file()
    stamp = checkpoint.stat().st_mtime_ns
    again = run_pipeline(load_pipeline(path))
    assert again.finetune_skipped and again.fit_skipped and checkpoint.stat().st_mtime_ns == stamp
    r = CliRunner().invoke(app, ["run", str(path), "--quiet"])
    assert r.exit_code == 0, r.output
    assert r.stdout.rstrip().splitlines()[-1] == f"{checkpoint} is up to date with these images and settings: " \
                                                 "nothing to fine-tune"
    path.write_text(path.read_text().replace("lr = 0.0001", "lr = 0.001"))  # another setting: trained again
    changed = run_pipeline(load_pipeline(path))
    assert not changed.finetune_skipped and changed.fit_skipped and checkpoint.stat().st_mtime_ns != stamp


def test_weights_that_name_a_checkpoint_are_relative_to_the_file(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = ""\nweights = "out/ft.pt"\n'
                    '[guide]\noutput = "g.json"\n[finetune]\noutput = "ft2.pt"\nmodel = "m"\nweights = "pretrained"\n')
    p = load_pipeline(path)
    assert p.extract.weights == str(tmp_path / "out" / "ft.pt") and p.guide.config.weights == p.extract.weights
    assert p.finetune.config.weights == "pretrained"
