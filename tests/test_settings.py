"""Settings declared once (featpipe/settings.py): the command line's choices are the library's, and a value out
of range gets the same message from Python, the command line and a pipeline, each naming the field its own way."""
from __future__ import annotations

import io
from enum import Enum
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featpipe import settings
from featpipe.cli import app, load_command
from featpipe.errors import UsageError
from featpipe.settings import (
    EXTRACT,
    FINETUNE,
    FIT,
    GUIDE,
    HEAD,
    LR_FIND,
    PREDICT,
    PREDICTIONS_CSV,
    Each,
    Number,
    OneOf,
    SettingError,
)

runner = CliRunner()


def _choices(param) -> list[str] | None:
    """A command-line parameter's choices as strings, or None if it has none: a click.Choice's (typer before
    0.28 and click), or the Enum its annotation names (typer 0.28 on, whose parameters have no click type)."""
    listed = getattr(getattr(param, "type", None), "choices", None)
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    if listed is None and isinstance(annotation, type) and issubclass(annotation, Enum):
        listed = list(annotation)
    return None if listed is None else [getattr(c, "value", c) for c in listed]


@pytest.mark.parametrize("command", sorted(settings.COMMANDS))
def test_cli_choices_are_the_librarys(command):
    params = {opt: p for p in load_command(command).params for opt in p.opts}
    declared = {}
    for group in settings.COMMANDS[command]:
        for name, setting in group.settings.items():
            option = group.option(name)
            assert option in params, f"{group.name}.{name}: `featpipe {command}` has no {option}"
            declared[option] = setting
            listed = _choices(params[option])
            if listed is not None:  # where the command line offers choices, they are the library's, in its order
                (constraint,) = setting.constraints
                assert listed == list(constraint.choices), f"featpipe {command} {option}"
    for param in load_command(command).params:  # and no command offers choices the library does not declare
        if _choices(param) is not None and param.name != "help":
            assert any(opt in declared for opt in param.opts), f"featpipe {command} {param.opts}: not in settings.py"


def test_each_table_covers_its_choice_list():
    """Where a module keeps data per choice, it has an entry for each choice the settings declare."""
    from featpipe.classify.estimators import make_classifier
    from featpipe.extraction.extractor import AUTOCAST
    from featpipe.extraction.views import STRENGTHS

    assert tuple(AUTOCAST) == settings.PRECISIONS
    assert tuple(STRENGTHS) == settings.STRENGTHS
    for name in settings.CLASSIFIERS:
        make_classifier(name)


def _bad(setting) -> object:
    """A value just outside the setting's first constraint, of the type the command line parses."""
    constraint = setting.constraints[0]
    if isinstance(constraint, Each):
        return ("xgb",)
    if isinstance(constraint, OneOf):
        return "bogus"
    assert isinstance(constraint, Number) and constraint.low is not None
    value = constraint.low if constraint.open in ("low", "both") else constraint.low - 1
    return int(value) if constraint.integer else float(value)


def _cli_text(value) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


# (group, field): every constrained field whose option takes free text (an option with choices refuses other
# values in the parser, and test_cli_choices_are_the_librarys holds those lists to the library's).
CASES = [(g, name) for g in (EXTRACT, FIT, HEAD, LR_FIND, PREDICT, PREDICTIONS_CSV, FINETUNE, GUIDE)
         for name, s in g.settings.items()
         if not (len(s.constraints) == 1 and isinstance(s.constraints[0], OneOf))]


@pytest.fixture
def feature_file(tmp_path) -> Path:
    from featpipe.store import write_arrays

    rng = np.random.default_rng(0)
    return write_arrays(tmp_path / "f.h5", rng.normal(size=(12, 4)).astype(np.float32), np.arange(12) % 2, ["a", "b"])


def _python_error(group, name, value, tmp_path, feature_file) -> SettingError:
    """The error the library raises for ``value`` given from Python."""
    from featpipe import predict
    from featpipe.classify import FitConfig, HeadSettings, fit
    from featpipe.classify.lr_find import lr_find
    from featpipe.classify.rows import ArrayRows
    from featpipe.extraction import ExtractConfig, extract
    from featpipe.predict import Predictions

    with pytest.raises(SettingError) as caught:
        if group is EXTRACT:
            extract(ExtractConfig(input=tmp_path, output=tmp_path / "o.h5", model="test_resnet",
                                  **({"augment": 1} if name == "augment_strength" else {}), **{name: value}))
        elif group is FIT:
            fit(FitConfig(feature_file, tmp_path / "m.skops", **{name: value}))
        elif group is HEAD:
            fit(FitConfig(feature_file, tmp_path / "m.skops", ("linear",), head=HeadSettings(**{name: value})))
        elif group is LR_FIND:
            lr_find(ArrayRows(np.zeros((4, 2), np.float32), np.array([0, 1, 0, 1])), **{name: value})
        elif group is PREDICT:
            predict(tmp_path / "m.skops", feature_file, **{name: value})
        elif group is FINETUNE:
            from featpipe.finetune import FinetuneConfig, finetune

            finetune(FinetuneConfig(tmp_path, tmp_path / "ft.pt", model="test_resnet", **{name: value}))
        elif group is GUIDE:
            from featpipe.guide import GuideConfig

            GuideConfig(tmp_path, **{name: value})  # checked when it is made
        else:
            Predictions(["x"], np.array([True]), np.ones((1, 1)), ["a"]).write_csv(io.StringIO(), **{name: value})
    return caught.value


def _cli_args(group, name, value, tmp_path, feature_file) -> list[str]:
    option = [group.option(name), _cli_text(value)]
    if group is EXTRACT:
        return ["extract", str(tmp_path), "-o", str(tmp_path / "o.h5"), "--model", "test_resnet", *option]
    if group in (FIT, HEAD):
        return ["fit", str(feature_file), "-o", str(tmp_path / "m.skops"), "--classifier", "linear", *option] \
            if group is HEAD else ["fit", str(feature_file), "-o", str(tmp_path / "m.skops"), *option]
    if group is LR_FIND:
        return ["lr-find", str(feature_file), "-o", str(tmp_path / "lr.png"), *option]
    if group is FINETUNE:
        return ["finetune", str(tmp_path), "-o", str(tmp_path / "ft.pt"), "--model", "test_resnet", *option]
    if group is GUIDE:
        return ["guide", str(tmp_path), *option]
    return ["predict", str(tmp_path / "m.skops"), str(feature_file), *option]


@pytest.mark.parametrize("group, name", CASES, ids=[f"{g.name}.{n}" for g, n in CASES])
def test_same_message_from_python_and_the_command_line(group, name, tmp_path, feature_file):
    value = _bad(group.settings[name])
    python = _python_error(group, name, value, tmp_path, feature_file)
    requirement = group.settings[name].requirement()
    assert str(python) == f"{group.name}.{name} must be {requirement}, got {python.value!r}"
    r = runner.invoke(app, _cli_args(group, name, value, tmp_path, feature_file))
    assert r.exit_code == 2, r.output
    assert r.stderr.strip() == f"error: {python.told_by_option()}"
    assert r.stderr.startswith(f"error: {group.option(name)} must be ")


def test_settings_that_contradict_each_other_are_named_by_each_caller(tmp_path, feature_file):
    """A relation between settings (Group.refuse) names every field it mentions the caller's way too."""
    from featpipe.classify import FitConfig, HeadSettings, fit
    from featpipe.extraction import ExtractConfig, extract
    from featpipe.guide import GuideConfig

    out = tmp_path / "o.h5"
    cases = [  # (Python's call, the command line, the CLI's message)
        (lambda: extract(ExtractConfig(tmp_path, out, model="test_resnet", devices="all", scheduler="tcp://x:1")),
         ["extract", str(tmp_path), "-o", str(out), "--model", "test_resnet", "--devices", "all", "--scheduler",
          "tcp://x:1"],
         "--devices runs local workers, one per GPU; with --scheduler start one `dask worker` per GPU instead "
         "(CUDA_VISIBLE_DEVICES=N) and leave out --devices"),
        (lambda: extract(ExtractConfig(tmp_path, out, model="test_resnet", devices="cuda:0", device="cpu")),
         ["extract", str(tmp_path), "-o", str(out), "--model", "test_resnet", "--devices", "cuda:0", "--device", "cpu"],
         "--devices 'cuda:0' and --device 'cpu' disagree; give one of them"),
        (lambda: fit(FitConfig(feature_file, tmp_path / "m.skops", ("logreg",), head=HeadSettings(lr=0.1))),
         ["fit", str(feature_file), "-o", str(tmp_path / "m.skops"), "--lr", "0.1"],
         "--classifier 'logreg' has no linear or mlp head for the heads' settings (lr) to train; add linear or mlp, "
         "or drop those settings"),
        (lambda: GuideConfig(tmp_path, sample=6, cv=4), ["guide", str(tmp_path), "--sample", "6", "--folds", "4"],
         "--sample must be at least twice --folds (8), got 6"),
    ]
    for call, args, message in cases:
        with pytest.raises(SettingError) as python:
            call()
        assert str(python.value) == python.value.told_as(lambda f: f"{python.value.group}.{f}")
        assert "--" not in str(python.value) and python.value.told_by_option() == message
        r = runner.invoke(app, args)
        assert r.exit_code == 2 and r.stderr.strip() == f"error: {message}", r.output


def test_the_issues_example():
    with pytest.raises(UsageError, match=r"^ExtractConfig\.batch_size must be at least 1 or auto, got 0$"):
        EXTRACT.check_value("batch_size", 0)
    EXTRACT.check_value("batch_size", "auto")


# The pipeline's keys (featpipe/pipeline/schema.py): each table's are its command's options, so a field's key is
# its option without -- (ExtractConfig.layers is extract.layer); every constrained field of the four stages.
STAGES = [(EXTRACT, "extract"), (FIT, "fit"), (HEAD, "fit"), (GUIDE, "guide"), (FINETUNE, "finetune")]
TOML_CASES = [(g, name) for g, _ in STAGES for name in g.settings]


def _toml(value) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(f'"{x}"' for x in value) + "]"
    return f'"{value}"' if isinstance(value, str) else str(value)


@pytest.mark.parametrize("group, name", TOML_CASES, ids=[f"{g.name}.{n}" for g, n in TOML_CASES])
def test_a_pipeline_tells_the_same_message_with_its_key_and_line(group, name, tmp_path):
    from featpipe.pipeline import load_pipeline
    from featpipe.pipeline.schema import key_of

    value = _bad(group.settings[name])
    section, key = next(s for g, s in STAGES if g is group), key_of(group, name)
    line = f"{key} = {_toml(value)}"
    tables = {"extract": ['input = "i"', 'output = "o.h5"', 'model = "test_resnet"'], "fit": ['output = "m.skops"'],
              "guide": ['output = "g.json"'], "finetune": ['output = "ft.pt"']}
    if name == "augment_strength":  # checked only where augmented views are made
        tables["extract"].append(f"{key_of(EXTRACT, 'augment')} = 1")
    tables[section].append(line)
    text = "\n".join(f"[{t}]\n" + "\n".join(lines) + "\n" for t, lines in tables.items())
    path = tmp_path / "p.toml"
    path.write_text(text)
    number = text.splitlines().index(line) + 1
    with pytest.raises(SettingError) as python:  # the message Python gives for the same value
        group.check_value(name, list(value) if isinstance(value, tuple) else value)
    with pytest.raises(UsageError) as caught:
        load_pipeline(path)
    told = python.value.told_as(lambda f: f"{section}.{key_of(group, f)}")
    assert str(caught.value) == f"{path}:{number}: {told}"
    assert told.startswith(f"{section}.{key} must be ")


def test_a_pipeline_names_every_setting_of_a_contradiction_by_its_key(tmp_path):
    from featpipe.pipeline import load_pipeline

    path = tmp_path / "p.toml"
    path.write_text('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\nscheduler = "tcp://x:1"\ndevices = "all"\n')
    with pytest.raises(UsageError) as caught:
        load_pipeline(path)
    assert str(caught.value) == (
        f"{path}:6: extract.devices runs local workers, one per GPU; with extract.scheduler start one `dask worker` "
        "per GPU instead (CUDA_VISIBLE_DEVICES=N) and leave out extract.devices")
    path.write_text('[guide]\noutput = "g.json"\nfolds = 4\nsample = 6\n[extract]\ninput = "i"\noutput = "o.h5"\n'
                    'model = "m"\n')
    with pytest.raises(UsageError) as caught:
        load_pipeline(path)
    assert str(caught.value) == f"{path}:4: guide.sample must be at least twice guide.folds (8), got 6"
