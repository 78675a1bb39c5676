"""One spelling per concept on the command line (issue 19): the renamed options, their old spellings still
accepted with a one-line note, list options that take repetition and commas alike, and --quiet wherever a
command shows progress."""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from featpipe.cli import COMMANDS, app, load_command
from featpipe.cli._common import deprecation_note, listed, respell
from featpipe.errors import UsageError

runner = CliRunner()
STOP = "stopped by the test, after the options were read"


@pytest.fixture
def captured(monkeypatch):
    """The config each command hands the library; the library call stops there (exit 2, one error line)."""
    configs = []

    def stop(config, *args, **kwargs):
        configs.append(config)
        raise UsageError(STOP)

    # Modules by name (`featpipe.finetune` as an attribute is the function of that name), all imported before
    # any is patched, so that none binds a stand-in for good (featpipe.predict imports extract).
    patched = {"featpipe.cli.classify": "fit", "featpipe.extraction": "extract", "featpipe.finetune": "finetune",
               "featpipe.guide": "guide"}
    modules = {name: importlib.import_module(name) for name in patched}
    for module, name in patched.items():
        monkeypatch.setattr(modules[module], name, stop)
    return configs


def _base(command: str, tmp_path: Path) -> list[str]:
    return {
        "extract": ["extract", str(tmp_path), "-o", str(tmp_path / "f.h5"), "--model", "test_resnet"],
        "finetune": ["finetune", str(tmp_path), "-o", str(tmp_path / "ft.pt"), "--model", "test_resnet"],
        "guide": ["guide", str(tmp_path)],
        "fit": ["fit", str(tmp_path / "f.h5"), "-o", str(tmp_path / "m.skops")],
    }[command]


def _read(args: list[str], captured: list):
    """The config ``featpipe ARGS`` gives the library, and the lines it printed on stderr."""
    captured.clear()
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"error: {STOP}", r.stderr
    (config,) = captured
    return config, lines[:-1]


# (command, old spelling, new spelling, value given, the config's field, the value it must hold)
RENAMES = [
    ("finetune", "--val-size", "--validation-size", "0.1", "val_size", 0.1),
    ("extract", "--augment", "--augment-views", "2", "augment", 2),
    ("guide", "--cv", "--folds", "3", "cv", 3),
    ("guide", "--layers", "--layer", "stem,pooled", "layers", ("stem", "pooled")),
]


@pytest.mark.parametrize("command, old, new, value, field, expected", RENAMES, ids=[r[1] for r in RENAMES])
def test_new_spelling_works_and_the_old_one_still_does_with_one_note(captured, tmp_path, command, old, new, value,
                                                                      field, expected):
    default, notes = _read(_base(command, tmp_path), captured)
    assert getattr(default, field) != expected and notes == []  # so that the option below is what set it

    config, notes = _read([*_base(command, tmp_path), new, value], captured)
    assert getattr(config, field) == expected and notes == []

    config, notes = _read([*_base(command, tmp_path), old, value], captured)
    assert getattr(config, field) == expected
    assert notes == [f"featpipe: {old} is deprecated; use {new} (the old spelling goes in the next release)"]

    config, notes = _read([*_base(command, tmp_path), f"{old}={value}"], captured)  # the --opt=value form too
    assert getattr(config, field) == expected and notes == [deprecation_note(old, new)]


def test_an_old_spelling_given_twice_is_noted_once(captured, tmp_path):
    config, notes = _read([*_base("guide", tmp_path), "--layers", "stem", "--layers", "pooled"], captured)
    assert config.layers == ("stem", "pooled") and notes == [deprecation_note("--layers", "--layer")]


def test_an_old_spelling_is_old_only_in_its_own_command(captured, tmp_path):
    """finetune's --augment (a strength) is its current spelling; only extract's --augment (a count) was renamed."""
    config, notes = _read([*_base("finetune", tmp_path), "--augment", "light"], captured)
    assert config.augment == "light" and notes == []


def test_respelling_passes_over_option_values_and_what_follows_a_double_dash():
    said = []
    args = ["--cache-dir", "--cv", "--cv", "3", "--", "--cv"]
    out = respell(args, {"--cv": "--folds"}, {"--cache-dir", "--folds"}.__contains__, said.append)
    assert out == ["--cache-dir", "--cv", "--folds", "3", "--", "--cv"]
    assert said == [deprecation_note("--cv", "--folds")]


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_old_spelling_names_an_option_its_command_has(command):
    cmd = load_command(command)
    options = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    for old, new in getattr(cmd, "renamed", {}).items():
        assert new in options and old not in options, (command, old, new)


# (command, option, the config's field, how it holds ["a", "b"])
LISTS = [
    ("extract", "--layer", "layers", ("a", "b")),
    ("extract", "--devices", "devices", "a,b"),
    ("fit", "--classifier", "classifiers", ("logreg", "rf")),  # a FitConfig refuses unknown names when made
    ("guide", "--model", "models", ("a", "b")),
    ("guide", "--layer", "layers", ("a", "b")),
]


@pytest.mark.parametrize("command, option, field, expected", LISTS, ids=[f"{c} {o}" for c, o, _, _ in LISTS])
def test_a_list_option_takes_repetition_and_commas_alike(captured, tmp_path, command, option, field, expected):
    base = _base(command, tmp_path)
    a, b = expected if isinstance(expected, tuple) else expected.split(",")
    commas, _ = _read([*base, option, f"{a},{b}"], captured)
    repeated, _ = _read([*base, option, a, option, b], captured)
    mixed, _ = _read([*base, option, f"{a},", option, f" {b} "], captured)
    assert getattr(commas, field) == getattr(repeated, field) == getattr(mixed, field) == expected


def test_listed():
    assert listed(["a,b", "c", " , d "]) == ("a", "b", "c", "d")
    assert listed(None) == listed([]) == ()


# --quiet: fit, predict and lr-find show progress, and -q silences it (results and their lines stay).

@pytest.fixture
def feature_file(tmp_path) -> Path:
    from featpipe.store import write_arrays

    rng = np.random.default_rng(0)
    return write_arrays(tmp_path / "f.h5", rng.normal(size=(40, 4)).astype(np.float32), np.arange(40) % 2, ["a", "b"])


def test_quiet_silences_the_search_progress_of_fit(tmp_path, feature_file):
    args = ["fit", str(feature_file), "--search", "2", "--cv", "2"]
    loud = runner.invoke(app, [*args, "-o", str(tmp_path / "a.skops")])
    quiet = runner.invoke(app, [*args, "-o", str(tmp_path / "b.skops"), "--quiet"])
    assert loud.exit_code == quiet.exit_code == 0, loud.output + quiet.output
    assert "search logreg: 2/2 trials" in loud.stderr
    assert "search" not in quiet.stderr and "saved logreg" in quiet.stdout


def test_quiet_silences_the_extraction_progress_of_predict(tmp_path, image_folder):
    from featpipe import ExtractConfig, extract
    from featpipe.classify import FitConfig, fit

    features = tmp_path / "f.h5"
    extract(ExtractConfig(image_folder, features, model="test_resnet", weights="random"))
    fit(FitConfig(features, tmp_path / "m.skops", test_size=0.25))
    args = ["predict", str(tmp_path / "m.skops"), str(image_folder)]
    loud = runner.invoke(app, [*args, "-o", str(tmp_path / "a.csv")])
    quiet = runner.invoke(app, [*args, "-o", str(tmp_path / "b.csv"), "-q"])
    assert loud.exit_code == quiet.exit_code == 0, loud.output + quiet.output
    assert "predict" in loud.stderr and "12/12" in loud.stderr and "ETA" in loud.stderr
    assert quiet.stderr.strip() == f"wrote 12 predictions to {tmp_path / 'b.csv'}"
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()


def test_quiet_silences_the_progress_line_of_lr_find(tmp_path, feature_file):
    """The range test says it runs on a terminal (FORCE_COLOR makes rich take the test's stderr for one)."""
    args = ["lr-find", str(feature_file), "-o", str(tmp_path / "lr.png"), "--steps", "20"]
    terminal = {"FORCE_COLOR": "1", "TTY_COMPATIBLE": None}
    loud = runner.invoke(app, args, env=terminal)
    quiet = runner.invoke(app, [*args, "-q"], env=terminal)
    log = runner.invoke(app, args, env={"FORCE_COLOR": None, "TTY_COMPATIBLE": None})  # not a terminal: nothing said
    assert loud.exit_code == quiet.exit_code == log.exit_code == 0, loud.output + quiet.output
    assert "lr-find: the range test of the linear head" in loud.stderr
    assert quiet.stderr == "" and log.stderr == ""
    assert "suggested learning rate" in quiet.stdout
