#!/usr/bin/env python3
"""Start-up time of featpipe's entry points, each printed against its floor.

The floor is the least any program doing the same job pays, measured in the same
run (these machines are shared and noisy; only numbers measured side by side mean
anything). Each entry point runs in a fresh process, --repeat times; the best time counts.

1. reading a feature file, ``import featpipe; featpipe.load(p).X()``, against
   ``import h5py, numpy`` and the same read with h5py: target within 2x;
2. ``featpipe --help`` against ``import typer`` and an empty Typer app's help: target within 2x;
3. an extraction's fixed cost (process start to first batch, plus the merge: a
   whole `featpipe extract` of one batch, and of one image, which leaves out the
   batch's own compute) against ``import torch, timm`` (then ``gc.freeze()``, the exit featpipe's
   CLI takes: see featpipe/cli/__init__.py): target within 1.5 s of it.
   The three alternate, and their CPU seconds are printed too: on a shared machine
   wall time measures the neighbours as much as featpipe;
4. a rerun of a finished extraction (a no-op): target under 1 s.

    python bench/start_time.py [--model resnet18] [--repeat 3]

Images are made once by bench/make_images.py and cached in --workdir.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from extract_speed import images  # noqa: E402

CPU = {}  # argv -> the CPU seconds (user + system) of its fastest run: far less sensitive to a busy machine


def timed(argv: list[str], repeat: int, cwd: Path) -> float:
    """Best wall time of ``argv`` in a fresh process, over ``repeat`` runs (its CPU time goes to CPU)."""
    best = float("inf")
    for _ in range(repeat):
        before = os.times()
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        after = os.times()
        if wall < best:
            best = wall
            CPU[tuple(argv)] = (after.children_user - before.children_user) + (after.children_system
                                                                              - before.children_system)
    return best


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--weights", default="random", help="random needs no download; pretrained reads the caches")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "featpipe-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="start-", dir=args.workdir))
    folder = images(args.workdir, args.batch_size)
    featpipe = [sys.executable, "-m", "featpipe"]
    out = work / "f.h5"
    extract = featpipe + ["extract", str(folder), "-o", str(out), "--model", args.model, "--weights", args.weights,
                          "--batch-size", str(args.batch_size), "-q"]
    subprocess.run(extract, check=True, stdout=subprocess.DEVNULL)  # warms the disk cache and the model table
    rows = []

    floor = timed(py(f"import h5py, numpy; h5py.File({str(out)!r}, 'r')['features/pooled'][:]"), args.repeat, work)
    t = timed(py(f"import featpipe; featpipe.load({str(out)!r}).X()"), args.repeat, work)
    rows.append(("load(p).X()", t, "import h5py, numpy + read", floor, t / floor, "<= 2x", t <= 2 * floor))

    floor = timed(py("import sys, typer; sys.argv = ['x', '--help']; app = typer.Typer(); app.command()(lambda: 0); "
                     "app.command('y')(lambda: 0); app()"), args.repeat, work)
    t = timed(featpipe + ["--help"], args.repeat, work)
    rows.append(("featpipe --help", t, "typer app --help", floor, t / floor, "<= 2x", t <= 2 * floor))

    # The floor and the extractions alternate, so that all see the same machine.
    # featpipe's CLI skips the interpreter's last garbage collection (gc.freeze(); it walks torch's, timm's and
    # sympy's objects for about 2 s of CPU): the floor exits the same way, so that the difference stays
    # featpipe's own work.
    floor_argv = py("import gc, torch, timm; gc.freeze()")
    one = images(args.workdir, 1)
    extract_one = featpipe + ["extract", str(one), "-o", str(work / "one.h5"), "--model", args.model,
                              "--weights", args.weights, "-q"]
    best = {"floor": float("inf"), "batch": float("inf"), "one": float("inf")}
    cpu = {}
    for _ in range(args.repeat):
        for key, argv, target in (("floor", floor_argv, None), ("batch", extract, out),
                                  ("one", extract_one, work / "one.h5")):
            if target is not None:
                target.unlink(missing_ok=True)
            t = timed(argv, 1, work)
            if t < best[key]:
                best[key], cpu[key] = t, CPU[tuple(argv)]
    floor, fixed, fixed_one = best["floor"], best["batch"], best["one"]
    rows.append((f"extract {args.batch_size} images", fixed, "import torch, timm*", floor, fixed - floor,
                 "<= +1.5 s", fixed - floor <= 1.5))
    rows.append(("extract 1 image", fixed_one, "import torch, timm*", floor, fixed_one - floor,
                 "<= +1.5 s", fixed_one - floor <= 1.5))

    t = timed(extract, args.repeat, work)
    rows.append(("extract, already complete", t, "", float("nan"), t, "< 1 s", t < 1.0))

    print(f"{'entry point':28} {'seconds':>8}   {'floor':28} {'seconds':>8}   {'measure':>8} {'target':>10}")
    for name, t, floor_name, floor_t, measure, target, ok in rows:
        unit = "x" if "x" in target else " s"
        shown = f"{floor_t:8.2f}" if floor_t == floor_t else f"{'':8}"
        print(f"{name:28} {t:8.2f}   {floor_name:28} {shown}   {measure:7.2f}{unit} {target:>10}  {'ok' if ok else 'MISSED'}")
    print("* then gc.freeze(): the floor exits as featpipe's CLI does, without the last garbage collection")
    print(f"CPU seconds (user + system) of the same runs: import torch, timm* {cpu['floor']:.2f}; extract "
          f"{args.batch_size} images {cpu['batch']:.2f} (+{cpu['batch'] - cpu['floor']:.2f}); extract 1 image "
          f"{cpu['one']:.2f} (+{cpu['one'] - cpu['floor']:.2f})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
