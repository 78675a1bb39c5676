#!/usr/bin/env python3
"""Scaling over Dask worker processes: images/s with 1 and with 2 workers, and the scaling efficiency.

For each count of workers a loopback Dask cluster is started (LocalCluster,
one process per worker, one task thread each), every worker builds the model
on a small warm-up run, and then `featpipe extract --scheduler ADDRESS` runs
the same images. It prints the images/s of the compute phase (from the first
partition sent to the last one back; model build and merge excluded) for each
count, and the scaling efficiency throughput_2 / (2 x throughput_1). Rounds
alternate the order (1, 2 then 2, 1), since only numbers measured side by side
mean anything on a shared machine.

    python bench/scaling.py [--n 240] [--model resnet18] [--batch-size 16] [--rounds 2]

On a machine with C cores, two workers get C/2 torch threads each (featpipe
sizes a worker's threads by every Dask worker thread on its host), so the ideal
is 1.0 only when one worker cannot keep all cores busy on its own. Images are
made once by bench/make_images.py and cached in --workdir.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from extract_speed import images  # noqa: E402  (bench/ is not a package)


def throughput(workers: int, folder: Path, warm: Path, workdir: Path, args) -> tuple[float, dict]:
    import distributed

    import featpipe
    from featpipe._util import cpu_cores

    common = dict(model=args.model, weights="random", batch_size=args.batch_size, device="cpu", overwrite=True)
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  silence_logs=logging.ERROR) as cluster:
        address = cluster.scheduler_address
        # Every worker builds its network now, not inside the timed run: one small partition each.
        featpipe.extract(featpipe.ExtractConfig(warm, workdir / "warm.h5", scheduler=address,
                                                partition_size=max(1, 8 // workers // 2), **common))
        t0 = time.perf_counter()
        s = featpipe.extract(featpipe.ExtractConfig(folder, workdir / f"scaling_{workers}.h5", scheduler=address,
                                                    partition_size=args.partition_size, **common))
        wall = time.perf_counter() - t0
        with distributed.Client(address) as client:
            threads = client.run(lambda: __import__("torch").get_num_threads())
    return s.images_per_s, {"wall": s.images / wall, "torch_threads": sorted(threads.values()),
                            "cores": cpu_cores()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=240, help="images per measurement (default 240)")
    ap.add_argument("--model", default="resnet18", help="default resnet18 (random weights)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--partition-size", type=int, default=16, help="rows per Dask task (default 16)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "featpipe-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder, warm = images(args.workdir, args.n), images(args.workdir, 8)
    load = os.getloadavg()[0]
    print(f"featpipe extract --scheduler on a loopback LocalCluster: {args.model} (random weights), {args.n} JPEGs, "
          f"batch {args.batch_size}, partitions of {args.partition_size}; this machine: {os.cpu_count()} CPUs, "
          f"load average {load:.1f} at start (a shared machine: other jobs take cores too)", flush=True)
    ratios = []
    for r in range(args.rounds):
        got = {}
        for workers in ((1, 2) if r % 2 == 0 else (2, 1)):
            got[workers] = throughput(workers, folder, warm, args.workdir, args)
            ips, info = got[workers]
            print(f"round {r + 1}: {workers} worker process{'es' if workers > 1 else ''}: {ips:6.1f} img/s "
                  f"(end to end {info['wall']:.1f}; torch threads per worker {info['torch_threads']}, "
                  f"{info['cores']} cores)", flush=True)
        ratios.append(got[2][0] / (2 * got[1][0]))
        print(f"round {r + 1}: 2 workers / 1 worker = {got[2][0] / got[1][0]:.2f}x, "
              f"scaling efficiency throughput_2 / (2 x throughput_1) = {ratios[-1]:.2f}", flush=True)
    print(f"scaling efficiency: {' '.join(f'{v:.2f}' for v in ratios)}   (1.00 = linear; two workers on the same "
          f"{os.cpu_count()} cores share them, so ~0.5 means no loss, and more means one worker alone left cores idle)")
    print(f"load average now {os.getloadavg()[0]:.1f}: on a shared machine, read the ratios, not the images/s")


if __name__ == "__main__":
    main()
