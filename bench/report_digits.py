#!/usr/bin/env python3
"""The HTML report on the digits demo: what it costs on top of the fit, how big it is, and whether
cleanlab finds deliberately wrong labels.

1. `fit` as the demo runs it (pipelines/digits.toml: logreg, svm, knn, nb, linear; test size 0.2,
   seed 0) on out/digits.h5, timed; then the report of the saved model (`featpipe report`), timed in
   the same process: the report's share of the fit's time (target: at most 10%), and the page's size
   with its images.
2. Label errors: the labels of 20 random digits changed to another class, then the report's own
   functions (out-of-fold logistic regression, cleanlab's find_label_issues): how many of the 20 are
   in cleanlab's top 40 (its recall), over several draws of the 20; and how many digits it flags
   with no label changed.

    make demo    # out/digits.h5: EfficientNet-Lite0 features of data/digits
    python bench/report_digits.py [--features out/digits.h5] [--out FOLDER (default: a new temporary one)]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def fit_and_report(features: Path, out: Path) -> None:
    import featpipe.report
    from featpipe.classify import FitConfig, fit

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result = fit(FitConfig(features, out / "digits.skops", ("logreg", "svm", "knn", "nb", "linear"), test_size=0.2,
                           seed=0, report=out / "report"))
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = featpipe.report.from_model(features, result.output, out / "report", command="fit")
    report_s = time.perf_counter() - t0
    print(f"fit (5 classifiers, metrics.json and plots): {fit_s:.1f} s; chosen {result.best}, test accuracy "
          f"{next(r for r in result.rows if r.classifier == result.best).metrics['accuracy']:.4f}")
    print(f"report: {report_s:.1f} s ({100 * report_s / fit_s:.1f}% of the fit), {report.bytes / 1e6:.2f} MB with "
          f"{report.thumbnails} images; {report.mistakes} mistakes, {report.label_issues} likely label errors; "
          f"{report.path}")
    phases = {"load the model, read and predict": report_s - report.seconds, **report.timings}
    print("report phases: " + ", ".join(f"{k} {v:.1f} s" for k, v in phases.items()))


def flipped_labels(features: Path, flips: int, top: int, draws: int) -> None:
    import featpipe
    from featpipe.report import label_issues

    fs = featpipe.load(features)
    keep = np.flatnonzero(fs.valid & (fs.y >= 0))
    X, y = fs.X("pooled")[keep], fs.y[keep]
    k = len(fs.classes)
    before = label_issues.find(y, label_issues.out_of_fold_proba(X, y, k))
    print(f"label errors: {len(before.rows)} of {len(y)} digits flagged with no label changed")
    recalls = []
    for seed in range(draws):
        rng = np.random.default_rng(seed)
        flipped = rng.choice(len(y), flips, replace=False)
        given = y.copy()
        given[flipped] = (y[flipped] + rng.integers(1, k, flips)) % k
        t0 = time.perf_counter()
        issues = label_issues.find(given, label_issues.out_of_fold_proba(X, given, k, seed=seed))
        seconds = time.perf_counter() - t0
        at = {int(r): i for i, r in enumerate(issues.rows)}
        found = [int(f) for f in flipped if at.get(int(f), top) < top]
        right = sum(int(issues.suggested[at[f]] == y[f]) for f in found)
        recalls.append(len(found) / flips)
        print(f"  draw {seed}: {flips} labels changed; cleanlab flags {len(issues.rows)}, {len(found)} of the {flips} in "
              f"its top {top} ({right} with the true digit suggested); {seconds:.1f} s")
    if recalls:
        print(f"recall in the top {top}: mean {np.mean(recalls):.2f} over {draws} draws "
              f"(min {min(recalls):.2f}, max {max(recalls):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=Path, default=Path("out/digits.h5"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--flips", type=int, default=20)
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--draws", type=int, default=5, help="sets of changed labels, each with its own seed")
    args = ap.parse_args()
    fit_and_report(args.features, args.out or Path(tempfile.mkdtemp(prefix="featpipe-report-")))
    flipped_labels(args.features, args.flips, args.top, args.draws)


if __name__ == "__main__":
    main()
