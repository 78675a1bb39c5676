#!/usr/bin/env python3
"""Where the images live: extraction speed from a local folder, local WebDataset shards, and the same
folder and shards in S3 (moto's server on loopback), measured side by side in one run.

Prints images/s (the compute phase) and wall seconds (listing, model, merge included) for each, and
the ratio to the local folder. moto is a Python server on the same machine: it costs CPU that a real
object store would not, so the S3 rows are a pessimistic bound on featpipe's own overhead, not a
network measurement.

    python bench/inputs_speed.py [--n 400] [--model resnet18] [--per-shard 100]

Each extraction runs in its own process. Needs s3fs and moto[server] (pip install -e '.[dev]').
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from extract_speed import images  # noqa: E402 - bench/ is not a package


def make_shards(folder: Path, out: Path, per_shard: int) -> int:
    """The folder as WebDataset shards with .cls members; returns how many shards."""
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(folder.rglob("*.jpg"))
    classes = sorted({p.parent.name for p in files})
    count = 0
    for s in range(0, len(files), per_shard):
        with tarfile.open(out / f"{count:05d}.tar", "w") as t:
            for k, p in enumerate(files[s:s + per_shard]):
                for ext, data in (("jpg", p.read_bytes()), ("cls", str(classes.index(p.parent.name)).encode())):
                    info = tarfile.TarInfo(f"{s + k:08d}.{ext}")
                    info.size = len(data)
                    t.addfile(info, io.BytesIO(data))
        count += 1
    return count


def child(source: str, output: str, model: str, env: dict) -> dict:
    code = (
        "import json, sys, time\n"
        "from featpipe import ExtractConfig, extract\n"
        f"s = extract(ExtractConfig(input={source!r}, output={output!r}, model={model!r}, weights='random'))\n"
        "print(json.dumps({'images': s.images, 'failed': s.failed, 'ips': s.images_per_s, 'wall': s.wall_seconds}))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env})
    if r.returncode:
        sys.exit(f"{source} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--per-shard", type=int, default=100)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "featpipe-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = images(args.workdir, args.n)
    work = Path(tempfile.mkdtemp(prefix="inputs-", dir=args.workdir))
    shards = make_shards(folder, work / "shards", args.per_shard)
    pattern = f"{{00000..{shards - 1:05d}}}.tar"

    import logging

    import s3fs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    os.environ.update(env)
    fs = s3fs.S3FileSystem()
    fs.mkdir("bench")
    fs.put(str(folder) + "/", "bench/images/", recursive=True)
    fs.put(str(work / "shards") + "/", "bench/shards/", recursive=True)
    runs = [("local folder", str(folder)), ("local shards", str(work / "shards" / pattern)),
            ("S3 folder (moto)", "s3://bench/images"), ("S3 shards (moto)", f"s3://bench/shards/{pattern}")]
    print(f"{args.n} images ({args.model}, random weights, CPU), {shards} shards of {args.per_shard}")
    print(f"{'input':<18} {'images/s':>9} {'wall s':>7} {'vs local folder':>16}")
    first = None
    try:
        for k, (name, source) in enumerate(runs):
            r = child(source, str(work / f"out{k}.h5"), args.model, env)
            assert r["images"] == args.n and r["failed"] == 0, r
            first = first or r
            print(f"{name:<18} {r['ips']:>9.1f} {r['wall']:>7.1f} {r['ips'] / first['ips']:>15.2f}x", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
