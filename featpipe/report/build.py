"""The report, built: from :class:`~featpipe.report.gather.ReportData` to ``index.html`` and its files.

It picks what the page shows (mistakes per class, the most confidently wrong, the most confused
pairs, the likely label errors), makes a thumbnail of each image shown, the map and the calibration
plot, and renders the page. The number of thumbnails is capped (:data:`MAX_THUMBNAILS`, at most a
few kB each), so the folder stays a few MB whatever the size of the data.
"""
from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError
from . import embedding, label_issues, page, thumbnails
from .gather import ReportData, extractor_summary

log = logging.getLogger(__name__)

MISTAKES_PER_CLASS = 16
CONFIDENT = 24
PAIRS = 6
PER_SIDE = 6
ISSUES_SHOWN = 40
# Thumbnails are 2-10 kB: 1,500 of them keep the folder well under 20 MB.
MAX_THUMBNAILS = 1500
TABLE_CLASSES = 200  # rows of the per-class table; the rest are counted
CALIBRATION = "calibration.png"


@dataclass
class Report:
    path: Path  # index.html
    seconds: float
    bytes: int  # the page and every file it shows
    mistakes: int
    label_issues: int
    thumbnails: int
    timings: dict  # seconds per phase: label_issues, thumbnails, map, page


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


class _Thumbs:
    """The images the page shows, under one cap: each section asks, in the page's order of importance."""

    def __init__(self, limit: int):
        self.limit, self.wanted = limit, []
        self._seen: set[int] = set()

    def room(self, positions) -> list[int]:
        """Those of ``positions`` that still fit (an image already shown costs nothing)."""
        taken = []
        for p in positions:
            p = int(p)
            if p not in self._seen:
                if len(self._seen) >= self.limit:
                    continue
                self._seen.add(p)
                self.wanted.append(p)
            taken.append(p)
        return taken


def _item(pos: int, caption: str, data: ReportData, made: dict) -> dict:
    row = int(data.file_rows[pos])
    src, failed = made[row]
    return {"src": src, "path": data.paths[row], "caption": caption, "failed": failed,
            "width": thumbnails.SIZE, "height": thumbnails.SIZE}


def _calibration_plot(folder: Path, proba: np.ndarray, y: np.ndarray) -> tuple[str, tuple[int, int]]:
    from .._util import pyplot

    plt = pyplot()
    from ..classify.metrics import ECE_BINS

    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == y
    which = np.minimum((confidence * ECE_BINS).astype(np.int64), ECE_BINS - 1)
    n = np.bincount(which, minlength=ECE_BINS)
    acc = np.bincount(which, correct, minlength=ECE_BINS) / np.maximum(n, 1)
    conf = np.bincount(which, confidence, minlength=ECE_BINS) / np.maximum(n, 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.6))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
    used = n > 0
    ax.bar(conf[used], acc[used], width=0.9 / ECE_BINS, color="#2f6fb3", alpha=0.8, label="accuracy per bin")
    for x, a, k in zip(conf[used], acc[used], n[used], strict=True):
        ax.annotate(str(int(k)), (x, a), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=6,
                    color="#555")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("top probability")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (images per bin above each bar)", fontsize=9)
    return CALIBRATION, embedding.save_png(fig, folder / CALIBRATION)


def _guide_context(g: dict, figures: list[tuple[str, str]]) -> dict:
    data = g.get("data", {})
    rows = []
    for s in g.get("layers", []) + [s for s in (g.get("concat"), g.get("pixels")) if s]:
        name = "raw pixels (32x32)" if s is g.get("pixels") else s["layer"]
        mark = "recommended" if s["layer"] == g.get("recommended_layer") and s is not g.get("pixels") else ""
        rows.append({"name": name, "dim": s["dim"], "cv": f"{s['cv_mean']:.3f} ± {s['cv_std']:.3f}",
                     "logme": f"{s['logme']:.3f}", "mark": mark})
    curve = ", ".join(f"{100 * r['fraction']:g}% {r['cv_mean']:.3f}" for r in g.get("learning_curve", []))
    return {
        "data": (f"{data.get('images')} labelled images, {data.get('classes')} classes; measured on a stratified "
                 f"sample of {data.get('sample')} with {g.get('model')} ({g.get('weights')}), {g.get('cv')}-fold CV "
                 "logistic regression on the same folds for every layer."),
        "rows": rows,
        "curve": f"{curve}: {g.get('learning_curve_verdict', '')}",
        "quadrant": g.get("quadrant", ""),
        "advice": f"{g.get('strategy_text', g.get('strategy', ''))} ({g.get('recommended_layer', '')})",
        "reasons": g.get("reasons", []),
        "settle": g.get("settle"),
        "commands": g.get("commands", []),
        "figures": figures,
    }


def _folder_size(folder: Path, files: list[str]) -> int:
    return sum((folder / f).stat().st_size for f in set(files) if (folder / f).is_file())


def _confused_pairs(cm: np.ndarray, y: np.ndarray, pred: np.ndarray, proba: np.ndarray, by_confidence: np.ndarray,
                    classes: list[str]) -> list[list[tuple[str, np.ndarray]]]:
    """The PAIRS pairs of classes most often confused (either way), each as its two sides: (title, held-out
    indices to show): the images of one class taken for the other, most confident first, or where there are
    none, correct images of that class for comparison."""
    off = cm - np.diag(np.diag(cm))
    both = np.triu(off + off.T, 1)
    pairs = [(int(a), int(b)) for a, b in zip(*np.unravel_index(np.argsort(-both, axis=None), both.shape), strict=True)
             if both[a, b] > 0][:PAIRS]
    out = []
    for a, b in pairs:
        sides = []
        for t, p in ((a, b), (b, a)):
            taken = by_confidence[(y[by_confidence] == t) & (pred[by_confidence] == p)]
            if len(taken):
                sides.append((f"{classes[t]} taken for {classes[p]}: {len(taken)}", taken[:PER_SIDE]))
            else:
                right = np.flatnonzero((y == t) & (pred == t))
                sides.append((f"{classes[t]} never taken for {classes[p]}; correct {classes[t]} for comparison",
                              right[np.argsort(-proba[right, t], kind="stable")][:PER_SIDE]))
        out.append(sides)
    return out


def _issues_context(issues, shown: list[int], data: ReportData, made: dict) -> dict:
    """The likely label errors as the page shows them: how they were found, and each shown one's labels."""
    classes = data.classes
    at = {int(r): i for i, r in enumerate(issues.rows)}
    return {
        "total": int(len(issues.rows)), "checked": issues.checked, "csv": label_issues.CSV_NAME,
        "how": (f"cleanlab's find_label_issues (confident learning) on out-of-fold probabilities of every labelled "
                f"image (logistic regression on the {data.layer} features, {issues.folds}-fold). Under each: the "
                "given label, the label the other images suggest, and the label's quality score (low: suspect)."),
        "items": [_item(p, f"{classes[issues.given[at[p]]]} → {classes[issues.suggested[at[p]]]} "
                           f"({issues.score[at[p]]:.2f})", data, made) for p in shown],
    }


def _class_table(labels: np.ndarray, metrics: dict, classes: list[str]) -> list[dict]:
    """The first TABLE_CLASSES classes: labelled images (with a bar), held-out support, recall, precision."""
    counts = np.bincount(labels, minlength=len(classes))
    top = max(int(counts.max()), 1)
    per = metrics["per_class"]
    return [{"name": name, "count": int(counts[i]), "support": per[name]["support"],
             "recall": f"{per[name]['recall']:.3f}" if per[name]["support"] else "-",
             "precision": f"{per[name]['precision']:.3f}" if per[name]["support"] else "-",
             "bar": int(round(60 * counts[i] / top))}
            for i, name in enumerate(classes)][:TABLE_CLASSES]


def _map_caption(the_map, layer: str) -> str:
    return (f"t-SNE of the {layer} features of {the_map.points} labelled images"
            + (f" (a random sample of the {the_map.of}, every mistake included)" if the_map.points < the_map.of else "")
            + f", coloured by their given class; the {the_map.marked} circled ones are held-out images the classifier "
            "gets wrong. Near points have similar features; the distances between clusters mean little.")


def _prepared(folder: Path) -> Path:
    """``folder``, made, without a previous report's thumbnails (they would only add up).

    Raises:
        UsageError: its parent does not exist.
    """
    if not folder.parent.is_dir():
        raise UsageError(f"report folder's parent {str(folder.parent)!r} does not exist; create it or choose "
                         "another --report")
    folder.mkdir(exist_ok=True)
    for old in (folder / thumbnails.FOLDER).glob("*.jpg"):
        old.unlink()
    return folder


def _headline(metrics: dict) -> list[dict]:
    return [{"name": name, "value": value} for name, value in (
        ("accuracy", _pct(metrics["accuracy"])), ("balanced accuracy", _pct(metrics["balanced_accuracy"])),
        ("macro F1", f"{metrics['macro_f1']:.3f}"), ("log loss", f"{metrics['log_loss']:.3f}"),
        ("ECE", f"{metrics['ece']:.3f}"), ("held-out images", str(metrics["n"])))]


# build() is one function of about 100 lines on purpose: its phases (label issues, thumbnails, the map, the
# page) share the held-out arrays and one thumbnail budget, and are timed one after the other; what each
# section shows is in the helpers above.
def build(data: ReportData, folder: Path, figures: list[tuple[str, str]] | None = None) -> Report:
    """Write ``folder/index.html``, its thumbnails, ``map.png``, ``calibration.png`` and ``label_issues.csv``.

    ``figures``: (caption, file name) of PNGs already in ``folder`` to show at the end.

    Raises:
        UsageError: ``folder``'s parent does not exist.
    """
    from .. import __version__
    from ..classify.metrics import evaluate_proba

    t0 = time.perf_counter()
    folder = _prepared(Path(folder))
    classes, k = data.classes, len(data.classes)
    y = data.labels[data.held_out]
    proba = data.proba
    metrics = evaluate_proba(proba, y, np.arange(k), classes)
    pred = proba.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    confidence = proba[wrong, pred[wrong]]
    by_confidence = wrong[np.argsort(-confidence, kind="stable")]  # held-out indices, most confident first
    thumbs = _Thumbs(MAX_THUMBNAILS)
    timings = {}
    lap = time.perf_counter()

    def took(phase: str) -> None:
        nonlocal lap
        now = time.perf_counter()
        timings[phase] = now - lap
        lap = now

    # Likely label errors come first: they are what a user acts on.
    oof = data.out_of_fold if data.out_of_fold is not None else label_issues.out_of_fold_proba(
        data.X, data.labels, k, seed=data.seed)
    issues = label_issues.find(data.labels, oof)
    label_issues.write_csv(folder / label_issues.CSV_NAME, issues, [data.paths[r] for r in data.file_rows], classes)
    took("label_issues")
    shown_issues = thumbs.room(issues.rows[:ISSUES_SHOWN])
    confident = thumbs.room(data.held_out[by_confidence[:CONFIDENT]])

    pair_sides = [[(title, thumbs.room(data.held_out[chosen])) for title, chosen in sides]
                  for sides in _confused_pairs(np.asarray(metrics["confusion_matrix"]), y, pred, proba, by_confidence,
                                               classes)]

    per_class = []
    counts_wrong = np.bincount(y[wrong], minlength=k)
    for c in np.argsort(-counts_wrong, kind="stable"):
        if not counts_wrong[c]:
            break
        mine = by_confidence[y[by_confidence] == c][:MISTAKES_PER_CLASS]
        per_class.append((int(c), thumbs.room(data.held_out[mine])))

    made = thumbnails.make_thumbnails(folder, str(data.fs.meta.get("image_root", "")), data.paths,
                                      [int(data.file_rows[p]) for p in thumbs.wanted])
    took("thumbnails")
    held_index = {int(p): i for i, p in enumerate(data.held_out)}  # labelled position -> held-out index

    def mistake(pos: int) -> dict:
        i = held_index[pos]
        return _item(pos, f"→ {classes[pred[i]]} {proba[i, pred[i]]:.2f}", data, made)

    def correct(pos: int) -> dict:
        i = held_index[pos]
        return _item(pos, f"✓ {classes[y[i]]} {proba[i, y[i]]:.2f}", data, made)

    mistakes_ctx = [{"name": classes[c], "wrong": int(counts_wrong[c]), "support": int((y == c).sum()),
                     "items": [mistake(p) for p in shown]} for c, shown in per_class]
    pairs_ctx = [{"sides": [{"title": title, "items": [
        mistake(p) if pred[held_index[p]] != y[held_index[p]] else correct(p) for p in shown]}
        for title, shown in sides]} for sides in pair_sides]
    issues_ctx = _issues_context(issues, shown_issues, data, made)

    on_map = embedding.choose_points(len(data.X), data.held_out[wrong], data.seed)
    the_map = embedding.make_map(folder, embedding.embed(data.X[on_map], data.seed), on_map, len(data.X),
                                 data.labels, classes, data.held_out[wrong], f"{data.layer} features")
    calibration, calibration_size = _calibration_plot(folder, proba, y)
    took("map")

    shown_mistakes = sum(len(c["items"]) for c in mistakes_ctx)
    figures = list(figures or data.figures)
    guide_figures = [f for f in figures if f[1] in ("sweep.png", "learning_curve.png")]
    context = {
        "version": __version__,
        "command": data.command,
        "title": f"{data.fs.meta.get('model', '')} · {data.layer} · {Path(data.source).name or data.fs.path.name}",
        "generated": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "judged_on": data.judged_on,
        "metrics": _headline(metrics),
        "notes": data.notes,
        "classifier": data.classifier,
        "extractor": extractor_summary(data.fs, data.layer, data.source),
        "data": {"images": int(len(data.labels)), "classes": _class_table(data.labels, metrics, classes),
                 "hidden": max(0, k - TABLE_CLASSES)},
        "calibration": calibration, "calibration_size": calibration_size,
        "guide": _guide_context(data.guide, guide_figures) if data.guide else None,
        "mistakes": {"total": int(len(wrong)), "judged": int(len(y)), "shown": shown_mistakes,
                     "per_class": MISTAKES_PER_CLASS, "classes": mistakes_ctx},
        "confident": [mistake(p) for p in confident],
        "pairs": pairs_ctx,
        "issues": issues_ctx,
        "map": {"src": the_map.file, "width": the_map.size[0], "height": the_map.size[1],
                "caption": _map_caption(the_map, data.layer)},
        "figures": [f for f in figures if f not in guide_figures],
    }
    path = page.write(folder, context)
    took("page")
    log.info("report phases: %s", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    files = [page.PAGE, label_issues.CSV_NAME, the_map.file, calibration, *(f for _, f in figures),
             *(src for src, _ in made.values())]
    return Report(path, time.perf_counter() - t0, _folder_size(folder, files), int(len(wrong)), int(len(issues.rows)),
                  len(made), timings)
