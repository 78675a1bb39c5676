#!/usr/bin/env python3
"""CPU backends (extract --backend, --precision), measured side by side in one run, as ratios to torch fp32.

For each model (random weights), prints:

* featpipe extract with each backend and precision: images/s in process (compute phase) and for the whole
  call (model build, conversion, merge), peak RSS, and the conversion's one-time cost (a second run must not
  pay it: its row says 0.0 s);
* each backend's pure forward on pre-decoded batches (F), arranged as featpipe arranges its CPU streams;
* the single-thread decode+resize seconds per image (d), and the pipeline limit L = 1 / (1/F + d/cores) of the
  fastest fp32 backend, with featpipe auto's share of it;
* the hand-written baseline (bench/baseline_extract.py).

    python bench/backends_speed.py [--n 1000] [--rounds 3] [--models resnet18,tf_efficientnet_lite0]

Each setting runs --rounds times, the rounds alternating the settings, and its best round is shown (load from
other jobs only ever slows a run; every round's in-process figure is printed too). Each measurement runs in its
own process, with converted networks cached in --workdir (emptied first, so the
first run pays the conversion). Only ratios measured in the same run mean anything on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_speed import baseline, images  # noqa: E402 - bench/ is no package

COMBOS = [("torch", "fp32"), ("openvino", "fp32"), ("auto", "fp32"), ("torch", "bf16"), ("openvino", "bf16")]


def child(workdir: Path, *args: str, small_pages: bool = False) -> dict:
    """One measurement in a fresh process; ``small_pages``: torch's own allocator behaviour, without the huge
    pages featpipe asks for (THP_MEM_ALLOC_ENABLE, featpipe/__init__.py), as featpipe's torch backend ran before."""
    env = {**os.environ, "XDG_CACHE_HOME": str(workdir / "cache"), "THP_MEM_ALLOC_ENABLE": "0" if small_pages else "1"}
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"child {args[0]} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_featpipe(folder: str, output: str, model: str, backend: str, precision: str) -> dict:
    import featpipe

    t0 = time.perf_counter()
    s = featpipe.extract(featpipe.ExtractConfig(folder, output, model=model, weights="random", device="cpu",
                                                backend=backend, precision=precision, overwrite=True))
    wall = time.perf_counter() - t0
    return {"images_per_s": s.images_per_s, "wall_images_per_s": s.images / wall, "backend": s.backend,
            "conversion_s": s.conversion_seconds, "timings": s.timings,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_pure(folder: str, model: str, backend: str, precision: str, n: str) -> dict:
    """Pure forward of featpipe's network on ``backend`` at ``precision``, pre-decoded uint8 crops (normalised inside the network),
    in featpipe's CPU streams and threads; and (with fp32 torch) the one-thread decode+resize time per image."""
    import threading

    import numpy as np
    import torch

    from featpipe.extraction.config import ExtractConfig
    from featpipe.extraction.executors import work_plan
    from featpipe.extraction.extractor import Extractor, ExtractorSpec
    from featpipe.extraction.sources import discover

    n, bs = int(n), 32
    plan, streams = work_plan(ExtractConfig(folder, "unused.h5", model=model), on_cpu=True)
    ex = Extractor(ExtractorSpec(model, "random", 0, ("pooled",), "avg", "cpu", precision, backend=backend))
    samples = discover(folder)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    crops = np.stack([ex.preprocess.load(samples.root / p) for p in samples.paths[: 4 * bs]])
    decode_s = (time.perf_counter() - t0) / len(crops)
    batches = [torch.from_numpy(crops[i:i + bs]) for i in range(0, len(crops), bs)]

    def stream(count: int) -> None:
        torch.set_num_threads(plan.torch_threads)
        with torch.inference_mode(), ex._autocast():
            for i in range(0, count, bs):
                ex.network(batches[(i // bs) % len(batches)][: count - i])

    stream(bs)  # warm-up (and OpenVINO's compile for these threads)
    workers = [threading.Thread(target=stream, args=(n // streams,)) for _ in range(streams)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return {"images_per_s": streams * (n // streams) / (time.perf_counter() - t0), "decode_s": decode_s,
            "backend": ex.backend, "streams": streams, "threads": plan.torch_threads}


def best(measured: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """The best of a setting's rounds: its fastest featpipe run and fastest pure forward (load from other jobs
    only ever slows a run down), the fastest decode time, the highest peak memory and the conversion that was
    paid (the first round's)."""
    fp = dict(max((m[0] for m in measured), key=lambda r: r["images_per_s"]))
    fp["wall_images_per_s"] = max(m[0]["wall_images_per_s"] for m in measured)
    fp["maxrss_mib"] = max(m[0]["maxrss_mib"] for m in measured)
    fp["conversion_s"] = max(m[0]["conversion_s"] for m in measured)
    pure = dict(max((m[1] for m in measured), key=lambda r: r["images_per_s"]))
    pure["decode_s"] = min(m[1]["decode_s"] for m in measured)
    return fp, pure


def bf16_ok() -> bool:
    from featpipe.extraction.backends import cpu_has_bf16

    return cpu_has_bf16()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *args = sys.argv[2:]
        print(json.dumps({"featpipe": run_featpipe, "pure": run_pure}[kind](*args)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--models", default="resnet18,tf_efficientnet_lite0")
    ap.add_argument("--rounds", type=int, default=3, help="each setting's best of this many runs is shown")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "featpipe-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(args.workdir / "cache", ignore_errors=True)
    folder = images(args.workdir, args.n)
    cores = os.cpu_count() or 1
    combos = [c for c in COMBOS if c[1] == "fp32" or bf16_ok()]
    print(f"CPU backends: {args.n} JPEGs, batch 32, {cores} CPUs, random weights; ratios to torch fp32 of the "
          "same run")
    for model in args.models.split(","):
        print(f"\n{model}: baseline (hand-written loop, torch eager) "
              f"{baseline(folder, args.workdir, model, 32):.1f} img/s")
        runs: dict = {combo: [] for combo in combos}
        for _ in range(args.rounds):  # rounds alternate the settings, so a burst of load hits them all alike
            for backend, precision in combos:
                fp = child(args.workdir, "featpipe", str(folder), str(args.workdir / "b.h5"), model, backend, precision)
                pure = child(args.workdir, "pure", str(folder), model, backend, precision, str(min(args.n, 256)))
                runs[backend, precision].append((fp, pure))
        rows = {combo: best(measured) for combo, measured in runs.items()}
        again = child(args.workdir, "featpipe", str(folder), str(args.workdir / "b.h5"), model, "openvino", "fp32")
        small = max(child(args.workdir, "featpipe", str(folder), str(args.workdir / "b.h5"), model, "torch", "fp32",
                           small_pages=True)["images_per_s"] for _ in range(args.rounds))
        ref_fp, ref_pure = rows["torch", "fp32"]
        print(f"  {'backend':9} {'precision':9} {'in process':>16} {'whole call':>16} {'pure forward F':>18} "
              f"{'peak RSS':>14} {'conversion':>10}")
        for (backend, precision), (fp, pure) in rows.items():
            print(f"  {backend:9} {precision:9} {fp['images_per_s']:6.1f} ({fp['images_per_s'] / ref_fp['images_per_s']:4.2f}x)"
                  f" {fp['wall_images_per_s']:6.1f} ({fp['wall_images_per_s'] / ref_fp['wall_images_per_s']:4.2f}x)"
                  f" {pure['images_per_s']:7.1f} ({pure['images_per_s'] / ref_pure['images_per_s']:4.2f}x)"
                  f" {fp['maxrss_mib']:5.0f} MiB ({fp['maxrss_mib'] / ref_fp['maxrss_mib']:4.2f}x)"
                  f" {fp['conversion_s']:8.1f} s  [{fp['backend']}]")
        spread = {combo: [m[0]["images_per_s"] for m in measured] for combo, measured in runs.items()}
        print("  in process, every round: " + "; ".join(
            f"{b} {p} " + " ".join(f"{v:.0f}" for v in values) for (b, p), values in spread.items()))
        print(f"  second openvino fp32 run: conversion {again['conversion_s']:.1f} s (read from the cache), "
              f"{again['images_per_s']:.1f} img/s in process")
        d = ref_pure["decode_s"]
        f_best = max(pure["images_per_s"] for (b, p), (_, pure) in rows.items() if p == "fp32")
        limit = 1 / (1 / f_best + d / cores)
        auto = rows["auto", "fp32"][0]["images_per_s"]
        print(f"  decode+resize d = {1000 * d:.1f} ms/image (one thread); fastest fp32 F = {f_best:.1f} img/s; "
              f"limit L = 1/(1/F + d/cores) = {limit:.1f} img/s; featpipe auto = {auto / limit:.2f} L")
        print(f"  auto / torch in process: {auto / ref_fp['images_per_s']:.2f}x; the most this decode time allows "
              f"(L / torch in process): {limit / ref_fp['images_per_s']:.2f}x")
        print(f"  torch fp32 without huge pages (THP_MEM_ALLOC_ENABLE=0, featpipe's torch backend before them): "
              f"{small:.1f} img/s in process; auto / that: {auto / small:.2f}x")
        if ("openvino", "bf16") in rows:
            bf = rows["openvino", "bf16"][0]["images_per_s"]
            print(f"  --precision bf16 (openvino) / auto fp32: {bf / auto:.2f}x in process")

if __name__ == "__main__":
    main()
