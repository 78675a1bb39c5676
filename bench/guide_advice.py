#!/usr/bin/env python3
"""Does the guide's advice hold? Its fine-tuning measurement on far and near data, and its command run verbatim.

1. The digits (data/make_digits.py), split once 80/20, stratified, seed 0 (bench/finetune_digits.py's split):
   `featpipe guide train.csv` (its defaults: fine-tuning measured), on the 1,437 training digits only; then the `featpipe finetune`
   command it prints, run verbatim on the same training digits, scored once on the 360 test digits, which
   nothing before touched.
2. Textures close to ImageNet (data/make_textures.py: patches of nine photographs): `featpipe guide`; the advice should stay on frozen features, fine-tuning not paying by more than the noise.

Prints each guide's advice, its fine-tuning line, the parts of its time, and the finetune command's test
accuracy. Target (issue 23): the digits' guide advises fine-tuning and its command reaches >= 0.975; the
textures keep the frozen advice; each guide under 3 minutes on 2 CPU cores.

    python bench/guide_advice.py [--skip-finetune] [--model tf_efficientnet_lite0]
"""
from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}): {shlex.join(cmd)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0, done.stdout


def guide(target: Path, work: Path, model: str) -> tuple[float, dict]:
    seconds, out = run([sys.executable, "-m", "featpipe", "guide", str(target), "--model", model,
                        "--json", "-q", "--cache-dir", str(work / "cache")], work)
    return seconds, json.loads(out)


def summary(name: str, seconds: float, res: dict) -> None:
    ft = res["finetune"]
    print(f"{name}: {res['quadrant']}; advice: {res['strategy_text']} ({res['recommended_layer']}); "
          f"guide {seconds:.0f} s wall ({', '.join(f'{k} {v:.0f} s' for k, v in res['timings'].items())})")
    if ft and ft["measured"]:
        print(f"  fine-tuned {ft['mean']:.3f} +- {ft['std']:.3f} (folds {', '.join(f'{a:.3f}' for a in ft['accuracies'])})"
              f" against {ft['frozen_mean']:.3f} for {ft['layer']}; noise {ft['noise']:.3f}: {res['finetune_verdict']}; "
              f"{ft['what']}")
    else:
        print(f"  fine-tuning not measured: {ft and ft['why_not']}")
    print(f"  learning curve: {res['learning_curve_verdict']}; commands:")
    for c in res["commands"]:
        print(f"    {c}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tf_efficientnet_lite0")
    ap.add_argument("--skip-finetune", action="store_true", help="do not run the digits' printed finetune command")
    args = ap.parse_args()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="featpipe-guide-advice-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, str(REPO / "data" / "make_digits.py"), str(work / "digits")], check=True,
                       capture_output=True)
        subprocess.run([sys.executable, str(REPO / "data" / "make_textures.py"), str(work / "textures")], check=True,
                       capture_output=True)
        files = sorted((work / "digits").rglob("*.png"), key=lambda p: int(p.stem.split("_")[1]))
        labels = np.array([int(p.parent.name) for p in files])
        train, test = train_test_split(np.arange(len(files)), test_size=0.2, stratify=labels, random_state=0)
        with open(work / "train.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows((str(files[i]), str(labels[i])) for i in train)

        seconds, digits = guide(work / "train.csv", work, args.model)
        summary(f"digits ({len(train)} training images)", seconds, digits)
        seconds, textures = guide(work / "textures", work, args.model)
        summary("textures (540 patches of 9 photographs)", seconds, textures)

        command = next((c for c in digits["commands"] if c.startswith("featpipe finetune")), None)
        if command and not args.skip_finetune:
            seconds, _ = run([sys.executable, "-m", *shlex.split(command), "-q"], work)
            from featpipe.finetune.checkpoint import load, predict_proba

            tuned = load(work / "finetuned.pt")
            probs, _ = predict_proba(tuned, [files[i] for i in test])
            predicted = np.array(tuned.classes)[probs.argmax(1)]
            accuracy = float((predicted == labels[test].astype(str)).mean())
            print(f"the digits' printed command, verbatim ({seconds:.0f} s): test accuracy {accuracy:.4f} on "
                  f"{len(test)} test digits touched once")
        elif not command:
            print("the digits' guide printed no finetune command")
    print(f"wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
