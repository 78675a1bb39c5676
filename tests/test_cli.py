"""The command line: thin over the library, one-line errors with exit codes, results on stdout."""
from __future__ import annotations

import pytest
from typer.testing import CliRunner

from featpipe.cli import app

runner = CliRunner()


def test_extract_then_info(tmp_path, image_folder):
    out = tmp_path / "f.h5"
    r = runner.invoke(app, ["extract", str(image_folder), "-o", str(out), "--model", "test_resnet",
                            "--weights", "random", "--layer", "pooled", "--layer", "logits"])
    assert r.exit_code == 0, r.output
    assert "12 images" in r.stdout and "0 failed" in r.stdout and "images/s" in r.stdout
    assert "forward" in r.stdout and "decode" in r.stdout and "write" in r.stdout
    r = runner.invoke(app, ["info", str(out)])
    assert r.exit_code == 0
    assert "timm:test_resnet" in r.stdout and "pooled: 96-d" in r.stdout and "logits: 1000-d" in r.stdout
    assert "class_0 (4)" in r.stdout


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["extract", "{missing}", "-o", "{out}", "--model", "test_resnet"], 2, "does not exist"),
        (["extract", "{images}", "-o", "{out}", "--model", "nope_net"], 2, "featpipe models"),
        (["extract", "{images}", "-o", "{out}", "--model", "test_resnet", "--layer", "fc8"], 2, "featpipe layers"),
        (["extract", "{images}", "-o", "/no/such/dir/x.h5", "--model", "test_resnet"], 2, "output folder"),
        (["extract", "{images}", "-o", "{out}", "--model", "test_resnet", "--max-failures", "lots"], 2, "max-failures"),
        (["info", "{missing}"], 2, "does not exist"),
        (["layers", "nope_net"], 2, "unknown model"),
    ],
)
def test_user_errors_are_one_line(tmp_path, image_folder, args, code, message):
    fill = {"missing": str(tmp_path / "missing"), "out": str(tmp_path / "o.h5"), "images": str(image_folder)}
    r = runner.invoke(app, [a.format(**fill) for a in args])
    assert r.exit_code == code, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in r.output


def test_models_lists_classic_cnns_and_offline_weights():
    r = runner.invoke(app, ["models"])
    assert r.exit_code == 0
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}
    assert rows["tv:alexnet"][1] == "4096" and rows["timm:resnet50"][1] == "2048"
    assert rows["timm:tf_efficientnet_lite0"][-1] == "yes"


def test_models_pattern():
    r = runner.invoke(app, ["models", "tv:squeeze*"])
    assert r.exit_code == 0 and "tv:squeezenet1_0" in r.stdout and "tv:squeezenet1_1" in r.stdout
    assert "timm:" not in r.stdout


def test_layers_lists_fc7_for_vgg():
    r = runner.invoke(app, ["layers", "tv:vgg16"])
    assert r.exit_code == 0
    rows = {line.split()[0]: line.split()[-1] for line in r.stdout.splitlines()[1:]}
    assert rows["fc7"] == "4096" and rows["pooled"] == "4096" and rows["logits"] == "1000"
    assert rows["features.29"] == "512"


@pytest.mark.parametrize("text, expected", [("10", 10), ("0.05", 0.05), ("5%", 0.05), ("100%", 1.0), ("1.0", 1.0)])
def test_max_failures_counts_and_fractions(text, expected):
    from featpipe.cli.extract import parse_max_failures

    value = parse_max_failures(text)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("text", ["nan", "inf", "-1", "150%", "lots", "1.5"])
def test_max_failures_rejects_nonsense(text):
    from featpipe.cli.extract import parse_max_failures
    from featpipe.errors import UsageError

    with pytest.raises(UsageError, match="max.failures must be a count"):
        parse_max_failures(text)


def test_parser_errors_are_one_line_too(tmp_path):
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "featpipe", "extract", str(tmp_path), "-o", "x.h5", "--model",
                        "test_resnet", "--precision", "fp64"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: Invalid value for '--precision'")


def test_progress_bar_unless_quiet(tmp_path, image_folder):
    base = ["extract", str(image_folder), "--model", "test_resnet", "--weights", "random"]
    loud = runner.invoke(app, base + ["-o", str(tmp_path / "a.h5")])
    quiet = runner.invoke(app, base + ["-o", str(tmp_path / "b.h5"), "--quiet"])
    assert loud.exit_code == quiet.exit_code == 0
    assert "12/12" in loud.stderr and "ETA" in loud.stderr
    assert quiet.stderr.strip() == "" and "12 images" in quiet.stdout


def test_ctrl_c_ends_at_once_with_one_line_on_how_to_resume(tmp_path):
    """Finding 8 of issue 8: Ctrl-C printed CancelledError warnings and no word on resuming."""
    import signal
    import subprocess
    import sys
    import time

    from .conftest import make_images

    images = make_images(tmp_path / "images", classes=3, per_class=40)
    out = tmp_path / "f.h5"
    proc = subprocess.Popen([sys.executable, "-m", "featpipe", "extract", str(images), "-o", str(out), "--model",
                             "resnet18", "--weights", "random", "--partition-size", "6", "--batch-size", "3", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(list(tmp_path.glob("f.h5.parts/part-*.h5"))) < 2:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    t0 = time.time()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 3 and proc.returncode == 130
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "finished partitions kept in" in lines[0] and "run the same command again" in lines[0]
    resumed = runner.invoke(app, ["extract", str(images), "-o", str(out), "--model", "resnet18", "--weights",
                                  "random", "--partition-size", "6", "--batch-size", "3", "-q"])
    assert resumed.exit_code == 0 and "resumed from" in resumed.stdout


def test_summary_counts_valid_images_and_the_whole_time(tmp_path, image_folder):
    """Finding 8: '18 extracted, 3 failed' when 15 were valid; images/s left out the model build."""
    (image_folder / "class_0" / "broken.jpg").write_bytes(b"not a jpeg")
    r = runner.invoke(app, ["extract", str(image_folder), "-o", str(tmp_path / "f.h5"), "--model", "test_resnet",
                            "--weights", "random", "-q"])
    assert r.exit_code == 0, r.output
    assert "13 images" in r.stdout and "13 computed; 12 valid, 1 failed" in r.stdout and " s in all" in r.stdout


def test_the_library_keeps_dask_quiet(tmp_path, image_folder, caplog):
    """Finding 8: about 37 INFO lines of distributed on every extract. A local run no longer starts a Dask
    cluster (tests/test_start.py checks that it imports none); this keeps the terminal quiet if one returns."""
    import logging

    from featpipe import ExtractConfig, extract

    caplog.set_level(logging.DEBUG, logger="distributed")
    caplog.set_level(logging.WARNING, logger="featpipe")  # a notebook that did not ask for featpipe's INFO
    extract(ExtractConfig(image_folder, tmp_path / "f.h5", model="test_resnet", weights="random"))
    chatter = [r for r in caplog.records if r.name.startswith("distributed") and r.levelno < logging.ERROR]
    assert not chatter, chatter[:3]
