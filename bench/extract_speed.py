#!/usr/bin/env python3
"""Extraction speed and memory of featpipe, measured against the baseline in one run.

Prints three ratios (these machines are shared and noisy; only ratios measured
side by side mean anything):

1. featpipe images/s / baseline images/s (bench/baseline_extract.py: the
   hand-written ImageFolder + DataLoader + h5py loop), same model and batch size;
2. featpipe images/s / pure forward images/s of the same network with the same
   settings (precision, memory format, threads, backend) on pre-decoded tensors;
3. peak memory (RSS) extracting 10x the images / peak memory for 1x.

    python bench/extract_speed.py [--n 1000] [--model resnet18] [--rounds 2] [--no-memory]

Each measurement runs in its own process. Images are made once by
bench/make_images.py and cached in --workdir (made again when that script changes).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def images(workdir: Path, n: int) -> Path:
    """``n`` images from bench/make_images.py, made once; the stamp names the generator's
    digest, so images cached by an earlier version of the generator are made again."""
    folder = workdir / f"images_{n}"
    stamp = folder / ".complete"
    generator = HERE / "make_images.py"
    digest = hashlib.sha256(generator.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"making {n} images in {folder} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(generator), str(folder), "--n", str(n),
                        "--classes", "10", "--seed", "0"], check=True)
        stamp.write_text(digest)
    return folder


def child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"child {args[0]} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def baseline(folder: Path, workdir: Path, model: str, batch_size: int) -> float:
    out = subprocess.run(
        [sys.executable, str(HERE / "baseline_extract.py"), str(folder), str(workdir / "baseline.h5"),
         "--model", model, "--batch-size", str(batch_size), "--workers", "2", "--device", "cpu"],
        capture_output=True, text=True, check=True,
    )
    return float(re.search(r"([\d.]+) img/s", out.stdout).group(1))


# --- children: each runs in a fresh process -------------------------------------


def run_featpipe(folder: str, output: str, model: str, batch_size: str) -> dict:
    import featpipe

    t0 = time.perf_counter()
    s = featpipe.extract(featpipe.ExtractConfig(
        folder, output, model=model, weights="random", batch_size=int(batch_size), device="cpu", overwrite=True,
    ))
    wall = time.perf_counter() - t0
    return {"images_per_s": s.images_per_s, "wall_images_per_s": s.images / wall, "timings": s.timings,
            "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_pure_forward(folder: str, model: str, batch_size: str, n: str) -> dict:
    """The same network and settings as featpipe's extractor, fed pre-decoded crops (the network normalises them, as in featpipe).

    Arranged as featpipe arranges its CPU work (the same streams, each with the
    same intra-op threads), and also as one stream using every core.
    """
    import threading

    import numpy as np
    import torch

    from featpipe._util import cpu_cores
    from featpipe.extraction.config import ExtractConfig
    from featpipe.extraction.decode import load_rgb
    from featpipe.extraction.executors import work_plan as _work_plan
    from featpipe.extraction.extractor import Extractor, ExtractorSpec
    from featpipe.extraction.sources import discover

    bs, n = int(batch_size), int(n)
    plan, streams = _work_plan(ExtractConfig(folder, "unused.h5", model=model, batch_size=bs), on_cpu=True)
    ex = Extractor(ExtractorSpec(model, "random", 0, ("pooled",), "avg", "cpu", "fp32", backend="auto"))
    samples = discover(folder)
    crops = np.stack([ex.preprocess.image(load_rgb(samples.root / p)) for p in samples.paths[: 4 * bs]])
    batches = [torch.from_numpy(crops[i:i + bs]) for i in range(0, len(crops), bs)]

    def stream(count: int) -> None:
        with torch.inference_mode():
            for i in range(0, count, bs):
                ex.network(batches[(i // bs) % len(batches)][: count - i])

    def timed(n_streams: int, threads: int) -> float:
        torch.set_num_threads(threads)
        stream(bs)  # warm-up
        workers = [threading.Thread(target=stream, args=(n // n_streams,)) for _ in range(n_streams)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return n_streams * (n // n_streams) / (time.perf_counter() - t0)

    return {
        "images_per_s": timed(streams, plan.torch_threads),
        "one_stream_images_per_s": timed(1, cpu_cores()),
        "streams": streams,
        "threads": plan.torch_threads,
        "backend": ex.backend + (" traced" if ex.optimized else ""),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *args = sys.argv[2:]
        result = {"featpipe": run_featpipe, "pure": run_pure_forward}[kind](*args)
        print(json.dumps(result))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-memory", action="store_true", help="skip the 10x-images memory run")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "featpipe-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = images(args.workdir, args.n)
    bs = str(args.batch_size)
    print(f"featpipe extract vs baseline: {args.model}, {args.n} JPEGs, batch {bs}, {os.cpu_count()} CPUs")
    rows = []
    for r in range(args.rounds):
        base = baseline(folder, args.workdir, args.model, args.batch_size)
        fp = child("featpipe", str(folder), str(args.workdir / "featpipe.h5"), args.model, bs)
        pure = child("pure", str(folder), args.model, bs, str(args.n))
        rows.append((base, fp, pure))
        t = fp["timings"]
        print(f"round {r + 1}: baseline {base:6.1f} img/s | featpipe {fp['images_per_s']:6.1f} img/s "
              f"(end to end incl. start-up {fp['wall_images_per_s']:5.1f}; forward {t['forward']:.1f} s, "
              f"decode {t['decode']:.1f} s, write {t['write']:.2f} s, start {t['start']:.1f} s) | pure forward "
              f"{pure['images_per_s']:6.1f} img/s ({pure['streams']} streams x {pure['threads']} threads; "
              f"one stream x all cores: {pure['one_stream_images_per_s']:.1f}; {pure['backend']})",
              flush=True)
    speedup = [fp["images_per_s"] / base for base, fp, _ in rows]
    speedup_e2e = [fp["wall_images_per_s"] / base for base, fp, _ in rows]
    efficiency = [fp["images_per_s"] / pure["images_per_s"] for _, fp, pure in rows]
    efficiency1 = [fp["images_per_s"] / pure["one_stream_images_per_s"] for _, fp, pure in rows]
    print(f"featpipe / baseline:      {' '.join(f'{v:.2f}x' for v in speedup)}   (target >= 1.40x)")
    print(f"featpipe / baseline:      {' '.join(f'{v:.2f}x' for v in speedup_e2e)}   (featpipe end to end: model "
          "build, cluster start and merge included; the baseline's own timer excludes its model build)")
    print(f"featpipe / pure forward:  {' '.join(f'{v:.2f}x' for v in efficiency)}   (target >= 0.90x; same streams and threads)")
    print(f"featpipe / pure forward:  {' '.join(f'{v:.2f}x' for v in efficiency1)}   (against one stream on all cores)")
    if not args.no_memory:
        big = images(args.workdir, 10 * args.n)
        small_rss = min(fp["maxrss_mib"] for _, fp, _ in rows)
        big_fp = child("featpipe", str(big), str(args.workdir / "featpipe_big.h5"), args.model, bs)
        ratio = big_fp["maxrss_mib"] / small_rss
        print(f"peak RSS: {args.n} images {small_rss:.0f} MiB, {10 * args.n} images {big_fp['maxrss_mib']:.0f} MiB "
              f"({big_fp['images_per_s']:.1f} img/s): {ratio:.3f}x   (target <= 1.10x)")


if __name__ == "__main__":
    main()
