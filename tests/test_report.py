"""The HTML report (featpipe/report/): built from a fit with no refit, escaped, capped, readable in Chromium."""
from __future__ import annotations

import csv
import html
import io
import json
import re
import shutil
import subprocess
import tarfile
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import featpipe
from featpipe.classify import FitConfig, fit, load_classifier
from featpipe.cli import app
from featpipe.errors import UsageError
from featpipe.report import gather, label_issues, thumbnails

XSS = "<img src=x onerror=alert(1)>"
# Two classes drawn from the same colours (the classifier must confuse them), one apart, one named like markup.
CLASSES = {"alpha": 0, "beta": 0, "gamma": 1, XSS: 2}
CHROMIUM = Path("/usr/bin/chromium")


def make_confusable_images(root: Path, per_class: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name, look in CLASSES.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            base = np.array([[70, 190, 90], [200, 80, 60], [60, 90, 210]][look], dtype=np.float64)
            arr = np.clip(base + rng.normal(0, 40, (48, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / f"img_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """(features, model file, fit result): a fit with a recorded split; alpha and beta look alike."""
    tmp = tmp_path_factory.mktemp("report")
    images = make_confusable_images(tmp / "images")
    features = featpipe.extract(featpipe.ExtractConfig(images, tmp / "f.h5", model="test_resnet",
                                                       weights="random")).output
    model = tmp / "m.skops"
    result = fit(FitConfig(features, model, ("logreg",), test_size=0.4))
    return features, model, result


@pytest.fixture(scope="module")
def report(fitted, tmp_path_factory):
    features, model, _ = fitted
    folder = tmp_path_factory.mktemp("page") / "report"
    return featpipe.report.from_model(features, model, folder)


def test_the_model_file_records_its_split_and_the_report_finds_the_test_rows_again(fitted, report):
    features, model, result = fitted
    assert load_classifier(model).split == {"test_size": 0.4, "seed": 0}
    text = report.path.read_text()
    tested = result.rows[0].metrics
    wrong = round((1 - tested["accuracy"]) * tested["n"])
    assert wrong > 0  # alpha and beta are confused
    section = re.search(r'<section id="mistakes" data-count="(\d+)" data-shown="(\d+)"', text)
    assert int(section.group(1)) == wrong == report.mistakes and int(section.group(2)) == wrong
    assert f"{100 * tested['accuracy']:.1f}%" in text  # the same test rows, the same accuracy
    assert text.count('class="thumb') >= wrong


def test_every_image_on_the_page_is_a_file_in_the_folder(report):
    folder = report.path.parent
    sources = re.findall(r'<img src="([^"]+)"', report.path.read_text())
    assert sources and all((folder / html.unescape(s)).is_file() for s in sources)
    assert all(not s.startswith(("/", "http")) for s in sources)  # relative: the folder can move
    assert report.bytes < 20e6 and report.thumbnails == len(list((folder / "thumbs").glob("*.jpg")))


def test_class_names_render_as_text(report):
    text = report.path.read_text()
    assert XSS not in text and html.escape(XSS) in text


def test_label_issues_csv_matches_the_page(report):
    folder = report.path.parent
    with open(folder / "label_issues.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == report.label_issues
    assert all(set(r) == {"path", "given", "suggested", "score"} for r in rows)
    assert all(r["given"] != r["suggested"] or float(r["score"]) < 0.5 for r in rows)
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores)  # worst first
    assert f'data-count="{len(rows)}"' in report.path.read_text()


def test_cleanlab_finds_flipped_labels():
    """20 of 600 labels flipped on separable features: cleanlab, on out-of-fold probabilities, ranks most
    of them in its top 40, each with its true label as the suggestion."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (6, 32))
    y = np.repeat(np.arange(6), 100)
    X = centres[y] + rng.normal(0, 1, (600, 32))
    flipped = rng.choice(600, 20, replace=False)
    given = y.copy()
    given[flipped] = (y[flipped] + rng.integers(1, 6, 20)) % 6
    proba = label_issues.out_of_fold_proba(X, given, 6)
    issues = label_issues.find(given, proba)
    assert len(np.intersect1d(issues.rows[:40], flipped)) >= 16  # 17 here; the default filter keeps few false alarms
    assert np.all(issues.suggested[np.isin(issues.rows, flipped)] == y[issues.rows[np.isin(issues.rows, flipped)]])


def test_label_issues_start_no_processes(monkeypatch):
    """cleanlab's default n_jobs forks a pool per call (0.3 s of the digits report's 2.4 s): the report asks for none."""
    import multiprocessing

    def refuse(*args, **kwargs):
        raise AssertionError("find_label_issues started a process pool")

    monkeypatch.setattr(multiprocessing, "Pool", refuse)
    y = np.repeat(np.arange(3), 20)
    X = np.random.default_rng(2).normal(0, 1, (60, 4)) + y[:, None] * 3
    issues = label_issues.find(y, label_issues.out_of_fold_proba(X, y, 3))
    assert issues.checked == 60


def test_a_single_class_row_is_left_out_of_the_check():
    rng = np.random.default_rng(1)
    y = np.array([0] * 20 + [1] * 20 + [2])
    X = rng.normal(0, 1, (41, 4)) + y[:, None] * 4
    issues = label_issues.find(y, label_issues.out_of_fold_proba(X, y, 3))
    assert issues.checked == 40 and 40 not in issues.rows


def test_thumbnails_from_tar_members_urls_and_unreadable_files(tmp_path):
    import fsspec

    arr = np.full((300, 200, 3), 120, np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    data = buf.getvalue()
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(data)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not an image")
    with tarfile.open(tmp_path / "imgs" / "shard-0.tar", "w") as tar:
        for name in ("s/0001.png", "s/0002.png"):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    url = f"memory://report-{uuid.uuid4().hex}/b.png"
    with fsspec.open(url, "wb") as f:
        f.write(data)
    paths = ["a.png", "broken.png", "shard-0.tar/s/0002.png", url, "missing.png"]
    out = tmp_path / "page"
    made = thumbnails.make_thumbnails(out, str(tmp_path / "imgs"), paths, range(len(paths)))
    for row in (0, 2, 3):
        src, why = made[row]
        assert why == "" and src == f"thumbs/{row}.jpg"
        with Image.open(out / src) as im:
            assert max(im.size) == thumbnails.SIZE and im.format == "JPEG"
    for row in (1, 4):
        src, why = made[row]
        assert src == "thumbs/missing.png" and why and (out / src).is_file()


def test_the_number_of_thumbnails_is_capped(fitted, tmp_path, monkeypatch):
    from featpipe.report import build

    monkeypatch.setattr(build, "MAX_THUMBNAILS", 5)
    features, model, _ = fitted
    made = featpipe.report.from_model(features, model, tmp_path / "small")
    assert made.thumbnails <= 5 + 1  # the placeholder
    assert len(list((tmp_path / "small" / "thumbs").glob("*.jpg"))) <= 5


def test_a_model_tested_on_another_file_needs_that_file(fitted, tmp_path):
    features, _, _ = fitted
    model = tmp_path / "m.skops"
    fit(FitConfig(features, model, ("logreg",), test=features))
    assert load_classifier(model).split == {"test_file": features.name}
    with pytest.raises(UsageError, match="give that file"):
        featpipe.report.from_model(features, model, tmp_path / "r")


def test_cli_fit_report_and_the_report_command(fitted, tmp_path):
    features, model, _ = fitted
    runner = CliRunner()
    r = runner.invoke(app, ["fit", str(features), "-o", str(tmp_path / "m.skops"), "--report", str(tmp_path / "fit")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "fit" / "index.html").is_file() and (tmp_path / "fit" / "metrics.json").is_file()
    page = (tmp_path / "fit" / "index.html").read_text()
    assert "confusion_logreg.png" in page  # fit's own plots are on the page
    r = runner.invoke(app, ["report", str(features), str(model), "-o", str(tmp_path / "again")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "again" / "index.html").is_file() and (tmp_path / "again" / "map.png").stat().st_size > 5000
    r = runner.invoke(app, ["report", str(features), str(model), "-o", str(tmp_path / "no" / "such")])
    assert r.exit_code == 2 and "does not exist" in r.output


def _chromium(*args: str, tmp: Path, timeout: int = 120) -> subprocess.CompletedProcess:
    profile = tmp / f"chromium-{uuid.uuid4().hex}"
    profile.mkdir()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=timeout)


# Runs in the page once everything has loaded, and writes what it found into the DOM for --dump-dom.
CHECK = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener("load", () => {
  const imgs = [...document.images];
  const out = document.createElement("pre");
  out.id = "check";
  out.textContent = JSON.stringify({
    images: imgs.length,
    broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute("src")),
    mistakes: document.querySelectorAll("#mistakes figure.thumb").length,
    mistakes_count: Number(document.querySelector("#mistakes").dataset.count),
    issues: document.querySelectorAll("#label-issues figure.thumb").length,
    injected: document.querySelectorAll('img[src="x"]').length,
    xss_text: document.body.innerText.includes(%s),
    errors: window.__errors,
  });
  document.body.appendChild(out);
});
</script>"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (apt-get install chromium)")
def test_the_page_in_chromium(report, tmp_path):
    """Every image loads, the mistakes section holds every mistake, no script error, the markup-like class
    name is text; and a screenshot of the page."""
    folder = report.path.parent
    checked = folder / "checked.html"  # the page with a checking script added; the page itself has none
    checked.write_text(report.path.read_text().replace("<head>", "<head>" + CHECK % json.dumps(XSS), 1))
    r = _chromium("--virtual-time-budget=10000", "--dump-dom", checked.as_uri(), tmp=tmp_path)
    found = re.search(r'<pre id="check">(.*?)</pre>', r.stdout, re.S)
    assert found, r.stderr[-2000:]
    check = json.loads(html.unescape(found.group(1)))
    assert check["images"] > report.mistakes and check["broken"] == []
    assert check["mistakes"] == check["mistakes_count"] == report.mistakes
    assert check["issues"] == min(report.label_issues, 40)
    assert check["injected"] == 0 and check["xss_text"]
    assert check["errors"] == [] and "Uncaught" not in r.stderr
    shot = tmp_path / "report.png"
    r = _chromium("--window-size=1280,2400", f"--screenshot={shot}", report.path.as_uri(), tmp=tmp_path)
    assert shot.is_file(), r.stderr[-2000:]
    with Image.open(shot) as im:
        assert im.size == (1280, 2400) and len(np.unique(np.asarray(im.convert("L")))) > 50  # a page, not a blank


def test_the_guide_report_shows_its_evidence_and_the_sample_out_of_fold(tmp_path):
    from featpipe.guide import GuideConfig, guide

    images = make_confusable_images(tmp_path / "images", per_class=10)
    result = guide(GuideConfig(images, models=("test_resnet",), weights="random", sample=32, cv=3,
                               cache_dir=tmp_path / "cache", finetune=False))
    runner = CliRunner()
    r = runner.invoke(app, ["guide", "--no-finetune", str(images), "--model", "test_resnet", "--weights", "random", "--sample", "32",
                            "--folds", "3", "--cache-dir", str(tmp_path / "cache"), "-q", "--report", str(tmp_path / "g")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "g" / "index.html").read_text()
    assert '<section id="guide">' in text and 'src="sweep.png"' in text and 'src="learning_curve.png"' in text
    assert html.escape(result.decision.quadrant) in text
    data = gather.from_guide(result)
    assert len(data.held_out) == 32 and data.judged_on.startswith("the guide's sample")
    wrong = int((data.proba.argmax(axis=1) != data.labels).sum())
    assert f'data-count="{wrong}"' in text

    # A feature file as the guide's input: the report samples the same rows the guide did.
    features = featpipe.extract(featpipe.ExtractConfig(images, tmp_path / "f.h5", model="test_resnet",
                                                       weights="random", layers=("layer2", "pooled"))).output
    on_file = guide(GuideConfig(features, sample=24, cv=3, finetune=False))
    data = gather.from_guide(on_file)
    from featpipe.guide.sample import stratified_sample

    fs = featpipe.load(features)
    assert np.array_equal(data.file_rows, stratified_sample(np.where(fs.valid, fs.y, -1), 24, 0, min_per_class=3))
    assert featpipe.report.from_guide(on_file, tmp_path / "g2").mistakes == int(
        (data.proba.argmax(axis=1) != data.labels).sum())


def test_the_finetune_report_judges_the_validation_images_as_the_run_did(tmp_path):
    from featpipe.finetune import FinetuneConfig, finetune

    images = make_confusable_images(tmp_path / "images", per_class=8)
    config = FinetuneConfig(images, tmp_path / "ft.pt", model="test_resnet", weights="random", unfreeze="head",
                            epochs=1, batch_size=8, image_size=64)
    result = finetune(config)
    data = gather.from_finetune(result, config, tmp_path / "r")
    assert len(data.held_out) == result.val_images
    accuracy = float((data.proba.argmax(axis=1) == data.labels[data.held_out]).mean())
    assert accuracy == pytest.approx(result.best.val_accuracy, abs=1e-9)  # the same images, the same network
    assert (tmp_path / "r" / "features.h5").is_file() and featpipe.load(tmp_path / "r" / "features.h5").dim("logits") == 4

    runner = CliRunner()
    r = runner.invoke(app, ["finetune", str(images), "-o", str(tmp_path / "cli.pt"), "--model", "test_resnet",
                            "--weights", "random", "--unfreeze", "head", "--epochs", "1", "--batch-size", "8",
                            "--image-size", "64", "-q", "--report", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    text = (tmp_path / "cli" / "index.html").read_text()
    assert 'src="curves.png"' in text and "validation images" in text


def test_labels_fixed_from_label_issues_csv_recompute_nothing(fitted, report, tmp_path):
    """The loop the page suggests: relabel the flagged images in a CSV list, extract again, fit again."""
    features, _, _ = fitted
    fs = featpipe.load(features)
    root = Path(fs.meta["image_root"])
    with open(report.path.parent / "label_issues.csv", newline="") as f:
        fixes = {r["path"]: r["suggested"] for r in csv.DictReader(f)}
    assert fixes
    listing = root / "labels.csv"
    with open(listing, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows((p, fixes.get(p, fs.classes[c])) for p, c in zip(fs.paths, fs.y.tolist(), strict=True))
    out = tmp_path / "relabelled.h5"
    shutil.copy(features, out)
    summary = featpipe.extract(featpipe.ExtractConfig(listing, out, model="test_resnet", weights="random"))
    assert summary.computed == 0
    again = featpipe.load(out)
    assert np.array_equal(again.X(), fs.X())
    relabelled = {p: again.classes[c] for p, c in zip(again.paths, again.y.tolist(), strict=True)}
    assert all(relabelled[p] == label for p, label in fixes.items())


def test_a_large_feature_file_is_reported_from_a_sample(fitted, tmp_path, monkeypatch):
    features, model, _ = fitted
    full = gather.from_model(features, model)
    monkeypatch.setattr(gather, "MAX_ROWS", 30)
    data = gather.from_model(features, model)
    assert len(data.labels) == 30 and len(full.labels) == 64 and data.notes and "random 30" in data.notes[0]
    # The held-out rows of the sample are the sample's rows among the full report's held-out rows.
    assert set(data.file_rows[data.held_out]) == set(data.file_rows) & set(full.file_rows[full.held_out])
    assert "random 30" in featpipe.report.from_model(features, model, tmp_path / "r").path.read_text()
