#!/usr/bin/env python3
"""Camera-sized photos: featpipe --decode exact and --decode fast against the baseline, in one run.

300 noisy JPEGs of 4000x3000 (about 5 MB each: the worst case for entropy decoding),
made by ``bench/make_images.py --size 4000x3000``; ``bench/baseline_extract.py`` (the
hand-written loop, 2 DataLoader workers) on the same files. Prints:

1. the decode time per image on one thread: exact (every pixel) and draft (libjpeg's
   scaled decoding to no less than the model's resize target, what --decode fast does);
2. images/s of the baseline and of featpipe with each decode, and the ratios
   (targets: fast >= 2.5x the baseline, exact >= 1.1x);
3. featpipe's peak RSS on these photos / on as many ImageNet-sized ones (target <= 1.5x).

    python bench/large_photos.py [--n 300] [--model resnet18]

Each measurement runs in its own process. Images are cached in $TMPDIR/featpipe-bench.
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
TARGET_FAST, TARGET_EXACT, TARGET_RSS = 2.5, 1.1, 1.5


def images(workdir: Path, n: int, size: str | None) -> Path:
    """``n`` images from bench/make_images.py, made once (the stamp names the generator and its arguments)."""
    folder = workdir / (f"photos_{n}_{size}" if size else f"photos_{n}")
    stamp = folder / ".complete"
    generator = HERE / "make_images.py"
    args = ["--n", str(n), "--classes", "10", "--seed", "0"] + (["--size", size] if size else [])
    digest = hashlib.sha256(generator.read_bytes() + " ".join(args).encode()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        shutil.rmtree(folder, ignore_errors=True)
        print(f"making {n} images{' of ' + size if size else ''} in {folder} ...", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, str(generator), str(folder), *args], check=True)
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


def run_featpipe(folder: str, output: str, model: str, batch_size: str, decode: str) -> dict:
    import featpipe

    t0 = time.perf_counter()
    s = featpipe.extract(featpipe.ExtractConfig(
        folder, output, model=model, weights="random", batch_size=int(batch_size), device="cpu", overwrite=True,
        decode=decode,
    ))
    wall = time.perf_counter() - t0
    return {"images_per_s": s.images_per_s, "wall_images_per_s": s.images / wall, "timings": s.timings,
            "failed": s.failed, "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_decode(folder: str, model: str, count: str) -> dict:
    """Milliseconds per image on one thread: Pillow decoding every pixel, and the draft decode of --decode fast."""
    import torch

    from featpipe import models
    from featpipe.extraction.decode import load_rgb
    from featpipe.extraction.sources import discover

    spec = models.resolve(model)
    with torch.device("meta"):
        resize = models.eval_config(models.create_architecture(spec), spec).resize
    samples = discover(Path(folder))
    paths = [samples.root / p for p in samples.paths[: int(count)]]
    out = {"resize": resize}
    for name, at_least in (("exact", None), ("draft", resize)):
        load_rgb(paths[0], at_least=at_least)  # warm the file cache and the code
        t0 = time.perf_counter()
        for p in paths:
            im = load_rgb(p, at_least=at_least)
        out[f"{name}_ms"] = (time.perf_counter() - t0) / len(paths) * 1000
        out[f"{name}_size"] = list(im.size)
    return out


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *args = sys.argv[2:]
        print(json.dumps({"featpipe": run_featpipe, "decode": run_decode}[kind](*args)))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="photos (default 300; e.g. --n 20 for a quick check)")
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR") or "/tmp") / "featpipe-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    large = images(args.workdir, args.n, "4000x3000")
    small = images(args.workdir, args.n, None)
    bs = str(args.batch_size)
    print(f"camera-sized photos: {args.n} JPEGs of 4000x3000, {args.model} (random weights), batch {bs}, "
          f"{os.cpu_count()} CPUs")
    d = child("decode", str(large), args.model, str(min(args.n, 20)))
    print(f"decode, one thread: exact {d['exact_ms']:.0f} ms/img ({d['exact_size'][0]}x{d['exact_size'][1]}), "
          f"draft {d['draft_ms']:.0f} ms/img (to {d['draft_size'][0]}x{d['draft_size'][1]}, resize target "
          f"{d['resize']}): {d['exact_ms'] / d['draft_ms']:.2f}x")
    base = baseline(large, args.workdir, args.model, args.batch_size)
    runs = {decode: child("featpipe", str(large), str(args.workdir / f"large_{decode}.h5"), args.model, bs, decode)
            for decode in ("exact", "fast")}
    ref = child("featpipe", str(small), str(args.workdir / "imagenet_sized.h5"), args.model, bs, "exact")
    print(f"baseline_extract.py (2 workers): {base:6.2f} img/s")
    for decode, r in runs.items():
        t = r["timings"]
        target = TARGET_FAST if decode == "fast" else TARGET_EXACT
        print(f"featpipe --decode {decode:5s}: {r['images_per_s']:6.2f} img/s (end to end incl. start-up "
              f"{r['wall_images_per_s']:.2f}; decode+resize {t['decode']:.1f} s, forward {t['forward']:.1f} s, "
              f"summed over streams) = {r['images_per_s'] / base:.2f}x the baseline (target >= {target}x); "
              f"peak RSS {r['maxrss_mib']:.0f} MiB, {r['failed']} failed")
    worst = max(r["maxrss_mib"] for r in runs.values())
    print(f"peak RSS: camera-sized {worst:.0f} MiB / ImageNet-sized {ref['maxrss_mib']:.0f} MiB "
          f"({ref['images_per_s']:.1f} img/s) = {worst / ref['maxrss_mib']:.2f}x (target <= {TARGET_RSS}x)")


if __name__ == "__main__":
    main()
