#!/usr/bin/env python3
"""The guide's cost against one plain extraction of the same images, measured in one run.

On 500 of the digits demo images (50 per class) with EfficientNet-Lite0's ImageNet
weights, each as a fresh command-line process:

1. `featpipe extract` of the 500 images (pooled features: what a user runs anyway);
2. `featpipe guide` of the same folder with --sample 500 and an empty cache: one
   forward pass per image for every compared layer, then the sweep, LogME, the
   learning curve and the fine-tuning measurement (its defaults).

Prints the time of each part; the guide's wall time without its fine-tuning measurement
against extract's (target <= 1.5x: the sweep adds under 50%, because every layer comes
out of the same forward pass); the whole guide's wall time (target <= 180 s on 2 CPU
cores, fine-tuning included, issue 23); and LogME's time against the
cross-validated logistic regression's over the same layers. Rounds alternate which
command runs first (the machine is shared and noisy: only side-by-side ratios mean much).

    python bench/guide_speed.py [--rounds 2] [--model tf_efficientnet_lite0]
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits


def digits_folder(root: Path, per_class: int) -> Path:
    """The demo's digits (data/make_digits.py's recipe: 8x8 scans to 64x64 PNGs), the first ``per_class`` of each."""
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    taken = dict.fromkeys(range(10), 0)
    for i, (img, label) in enumerate(zip(images, digits.target, strict=True)):
        if taken[label] == per_class:
            continue
        taken[label] += 1
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").resize((64, 64), Image.NEAREST).save(root / str(label) / f"digit_{i:04d}.png")
    return root


def timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return seconds, out.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--per-class", type=int, default=50)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="featpipe-guide-bench-"))
    try:
        folder = digits_folder(work / "digits", args.per_class)
        n = sum(1 for _ in folder.rglob("*.png"))
        featpipe = [sys.executable, "-m", "featpipe"]
        ratios, logme_vs_cv, walls = [], [], []
        for r in range(args.rounds):
            def extract(r=r) -> float:
                return timed([*featpipe, "extract", str(folder), "-o", str(work / f"plain-{r}.h5"),
                              "--model", args.model, "-q"])[0]

            def guide(r=r) -> tuple[float, dict]:
                seconds, out = timed([*featpipe, "guide", str(folder), "--model", args.model, "--sample", str(n),
                                      "--cache-dir", str(work / f"cache-{r}"), "--json", "-q"])
                return seconds, json.loads(out)

            if r % 2 == 0:
                t_extract = extract()
                t_guide, res = guide()
            else:
                t_guide, res = guide()
                t_extract = extract()
            t = res["timings"]
            compared = len(res["layers"]) + 2  # the layers, the best two side by side, raw pixels
            print(f"round {r + 1}: extract {t_extract:5.1f} s | guide {t_guide:5.1f} s (inside: extract the sample "
                  f"{t['extract']:.1f} s, CV {t['cv']:.2f} s, LogME {t['logme']:.2f} s, learning curve "
                  f"{t['learning_curve']:.2f} s over {compared} feature sets, fine-tuning {t['finetune']:.1f} s) -> "
                  f"{res['strategy']} ({res['recommended_layer']}; fine-tuning: {res['finetune_verdict']})", flush=True)
            ratios.append((t_guide - t["finetune"]) / t_extract)
            walls.append(t_guide)
            logme_vs_cv.append(t["logme"] / t["cv"])
        print(f"{n} digits, {args.model}, {args.rounds} rounds, each a fresh process")
        print(f"guide without its fine-tuning / extract wall time: {' '.join(f'{x:.2f}x' for x in ratios)}   "
              "(target <= 1.50x)")
        print(f"whole guide wall time: {' '.join(f'{x:.0f} s' for x in walls)}   (target <= 180 s)")
        print(f"LogME / 5-fold CV logistic regression, same layers: {' '.join(f'{x:.2f}x' for x in logme_vs_cv)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
