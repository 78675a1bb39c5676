"""featpipe run: pipeline files, their validation, and skipping finished stages."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from featpipe.cli import app
from featpipe.errors import UsageError
from featpipe.pipeline import load_pipeline, run_pipeline

from .conftest import make_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").glob("*.toml")), ids=lambda p: p.name)
def test_ready_made_pipelines_are_valid(path):
    p = load_pipeline(path)
    assert p.extract.output.suffix == ".h5" and p.fit is not None and p.fit.features == p.extract.output
    assert p.extract.input.is_relative_to(path.parent.parent)  # paths are relative to the file


def test_ready_made_pipelines_cover_the_recipes():
    names = {p.name for p in (ROOT / "pipelines").glob("*.toml")}
    assert {"digits.toml", "resnet50_imagefolder.toml", "vgg16_fc7_rf.toml"} <= names
    vgg = load_pipeline(ROOT / "pipelines" / "vgg16_fc7_rf.toml")
    assert vgg.extract.layers == ("fc7",) and vgg.extract.model == "tv:vgg16" and "rf" in vgg.fit.classifiers
    digits = load_pipeline(ROOT / "pipelines" / "digits.toml")
    assert digits.extract.input == ROOT / "data" / "digits"


@pytest.mark.parametrize(
    "body, match",
    [
        ('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\nbatchsize = 3\n', r":5: unknown key 'batchsize'"),
        ('[extract]\ninput = "i"\noutput = "o.h5"\n\nmodel = 3\n', r":5: extract.model must be a string, got 3"),
        ('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\n[fit]\noutput = "m.skops"\ntest_size = "big"\n',
         r":7: fit.test_size must be a number, got 'big'"),
        ('[extract]\ninput = "i"\nmodel = "m"\n', r":1: \[extract\] needs output"),
        ('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\n[train]\nx = 1\n', r":5: unknown section \[train\]"),
        ('[extract\n', "invalid TOML"),
        # Bad values, checked by extract's and fit's own checks, at their line in their table
        ('[fit]\noutput = "m.skops"\nepochs = "ten"\n[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\n',
         r":3: fit.epochs must be an integer, got 'ten'"),
        ('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\n# the batch\nbatch_size = -4\n',
         r"p.toml:6: extract.batch_size must be at least 1 or auto, got -4"),
        ('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\nbatch_size = 8\n[fit]\noutput = "m.skops"\n'
         'classifier = ["linear"]\nbatch_size = 0\n', r":9: fit.batch_size must be at least 1, got 0"),
        ('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\n[fit]\noutput = "m.skops"\ntest_size = 1.5\n',
         r":7: fit.test_size must be greater than 0 and less than 1, got 1.5"),
        ('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\n[fit]\noutput = "m.skops"\n\nclassifier = ["xgb"]\n',
         r":8: fit.classifier must be one of logreg, .*, got 'xgb'"),
        ('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\ndtype = "float64"\n',
         r":5: extract.dtype must be one of float32, float16, got 'float64'"),
    ],
)
def test_bad_pipelines_name_the_line(tmp_path, body, match):
    path = tmp_path / "p.toml"
    path.write_text(body)
    with pytest.raises(UsageError, match=match):
        load_pipeline(path)


def test_run_skips_finished_stages(tmp_path):
    make_images(tmp_path / "images", classes=2, per_class=6)
    path = tmp_path / "job.toml"
    path.write_text(
        '[extract]\ninput = "images"\noutput = "f.h5"\nmodel = "test_resnet"\nweights = "random"\n'
        '[fit]\noutput = "m.skops"\nclassifier = ["logreg", "nb"]\ntest_size = 0.25\n'
    )
    first = run_pipeline(load_pipeline(path))
    assert first.extract.computed == 12 and not first.fit_skipped and (tmp_path / "m.skops").exists()
    again = run_pipeline(load_pipeline(path))
    assert again.extract.already_complete and again.fit_skipped
    path.write_text(path.read_text().replace("test_size = 0.25", "test_size = 0.5"))
    changed = run_pipeline(load_pipeline(path))
    assert changed.extract.already_complete and not changed.fit_skipped and changed.fit.n_test == 6
    r = CliRunner().invoke(app, ["run", str(path), "--quiet"])
    assert r.exit_code == 0 and "up to date" in r.stdout and "already complete" in r.stdout


def test_run_writes_the_fits_report(tmp_path):
    """[fit] report = DIR: the HTML report after the fit; a skipped fit leaves it, or makes it where it is missing."""
    make_images(tmp_path / "images", classes=2, per_class=6)
    path = tmp_path / "job.toml"
    path.write_text('[extract]\ninput = "images"\noutput = "f.h5"\nmodel = "test_resnet"\nweights = "random"\n'
                    '[fit]\noutput = "m.skops"\nclassifier = ["nb"]\ntest_size = 0.25\nreport = "rep"\n')
    page = tmp_path / "rep" / "index.html"
    first = run_pipeline(load_pipeline(path))
    assert not first.fit_skipped and first.report.path == page and page.is_file()
    assert (tmp_path / "rep" / "label_issues.csv").is_file() and (tmp_path / "rep" / "metrics.json").is_file()
    made = page.stat().st_mtime_ns
    again = run_pipeline(load_pipeline(path))  # the report's folder exists now: not a bad output path
    assert again.fit_skipped and again.report is None and page.stat().st_mtime_ns == made
    page.unlink()
    r = CliRunner().invoke(app, ["run", str(path), "--quiet"])
    assert r.exit_code == 0, r.output
    assert "up to date" in r.stdout and f"report: {page}" in r.output and page.is_file()
    (tmp_path / "taken").write_text("a file where the report's folder should be")
    path.write_text(path.read_text().replace('report = "rep"', 'report = "taken"'))
    with pytest.raises(UsageError, match="fit.report .* is a file; give a folder"):
        run_pipeline(load_pipeline(path))


def test_changed_images_make_the_fit_stale(tmp_path):
    """Finding 4 of issue 8: the fit fingerprint left out the images, so a re-extraction kept the old model."""
    import shutil

    images = make_images(tmp_path / "images", classes=2, per_class=6)
    path = tmp_path / "job.toml"
    path.write_text('[extract]\ninput = "images"\noutput = "f.h5"\nmodel = "test_resnet"\nweights = "random"\n'
                    '[fit]\noutput = "m.skops"\nclassifier = ["nb"]\ntest_size = 0.25\n')
    run_pipeline(load_pipeline(path))
    shutil.copy(images / "class_1" / "img_000.jpg", images / "class_0" / "img_000.jpg")  # new content, same name
    again = run_pipeline(load_pipeline(path))
    assert again.extract.updated and again.extract.computed == 1 and not again.fit_skipped


def test_outputs_are_checked_and_their_folders_made_before_any_work(tmp_path):
    make_images(tmp_path / "images", classes=2, per_class=6)
    (tmp_path / "taken").write_text("a file where a folder should be")
    path = tmp_path / "job.toml"
    body = ('[extract]\ninput = "images"\noutput = "out/features/f.h5"\nmodel = "test_resnet"\nweights = "random"\n'
            '[fit]\noutput = "taken/m.skops"\nclassifier = ["nb"]\ntest_size = 0.25\n')
    path.write_text(body)
    with pytest.raises(UsageError, match="fit.output"):
        run_pipeline(load_pipeline(path))
    assert not (tmp_path / "out" / "features" / "f.h5").exists()  # refused before extracting
    path.write_text(body.replace("taken/m.skops", "models/new/m.skops"))
    run_pipeline(load_pipeline(path))
    assert (tmp_path / "out" / "features" / "f.h5").exists() and (tmp_path / "models" / "new" / "m.skops").exists()


def test_views_in_a_pipeline(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('[extract]\ninput = "i"\noutput = "o.h5"\nmodel = "m"\naugment_views = 4\naugment_strength = "light"\n'
                    'flip = false\ntta = "flip"\n[fit]\noutput = "m.skops"\nuse_augmented = true\n')
    p = load_pipeline(path)
    assert (p.extract.augment, p.extract.augment_strength, p.extract.flip, p.extract.tta) == (4, "light", False, "flip")
    assert p.fit.use_augmented


def test_urls_and_shard_patterns_are_not_made_relative(tmp_path):
    (tmp_path / "p.toml").write_text('[extract]\ninput = "s3://bucket/shards/{00000..00009}.tar"\n'
                                     'output = "f.h5"\nmodel = "resnet18"\nlabel_key = "label"\n')
    p = load_pipeline(tmp_path / "p.toml")
    assert p.extract.input == "s3://bucket/shards/{00000..00009}.tar" and p.extract.label_key == "label"
    assert p.extract.output == tmp_path / "f.h5"


@pytest.mark.slow  # a subprocess extracting 120 images with resnet18: about a minute on a busy 2-core machine
def test_ctrl_c_during_the_extract_stage_says_how_to_resume(tmp_path):
    """As `featpipe extract`: one line, the finished partitions kept, and rerunning the pipeline resumes."""
    import signal
    import subprocess
    import sys
    import time

    images = make_images(tmp_path / "images", classes=3, per_class=40)
    path = tmp_path / "job.toml"
    path.write_text(f'[extract]\ninput = "{images}"\noutput = "f.h5"\nmodel = "resnet18"\nweights = "random"\n'
                    'partition_size = 6\nbatch_size = 3\n')
    proc = subprocess.Popen([sys.executable, "-m", "featpipe", "run", str(path), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 180
    while time.time() < deadline and len(list(tmp_path.glob("f.h5.parts/part-*.h5"))) < 2:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130 and len(lines) == 1, err
    assert "finished partitions kept in" in lines[0] and f"run `featpipe run {path}` again to resume" in lines[0]
    resumed = CliRunner().invoke(app, ["run", str(path), "-q"])
    assert resumed.exit_code == 0 and "resumed from" in resumed.stdout, resumed.output
