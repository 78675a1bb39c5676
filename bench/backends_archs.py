#!/usr/bin/env python3
"""Is OpenVINO the faster fp32 backend across architectures? (why --backend auto takes it wherever it converts)

For each model (random weights), the pure forward pass of featpipe's network on uint8 crops, in featpipe's CPU
arrangement (one stream per core, one intra-op thread each), on torch (traced and frozen, featpipe's torch
backend) and on OpenVINO; the two alternate for --rounds rounds and each shows its best (load from other jobs
only ever slows a run). Prints images/s, the ratio, and the one-time conversion.

    python bench/backends_archs.py [--models resnet50,mobilenetv3_large_100,...] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time

MODELS = "resnet18,resnet50,tf_efficientnet_lite0,efficientnet_b0,mobilenetv3_large_100,convnext_tiny,densenet121,tv:vgg11"


def images_per_s(ex, batch_size: int, batches: int) -> float:
    import numpy as np
    import torch

    from featpipe._util import cpu_cores

    h, w = ex.data_config.crop
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (batch_size, h, w, 3), dtype=np.uint8))

    def stream(count: int) -> None:
        torch.set_num_threads(1)
        with torch.inference_mode():
            for _ in range(count):
                ex.network(crops)

    stream(1)  # warm-up (OpenVINO compiles for this thread count)
    streams = cpu_cores()
    workers = [threading.Thread(target=stream, args=(batches,)) for _ in range(streams)]
    t0 = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return streams * batches * batch_size / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--batches", type=int, default=3, help="batches per stream and round")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="featpipe-archs-")  # every conversion paid and shown

    from featpipe.extraction.extractor import Extractor, ExtractorSpec

    print(f"pure forward, fp32, batch {args.batch_size}, one stream per core; best of {args.rounds} rounds")
    for model in args.models.split(","):
        nets = {b: Extractor(ExtractorSpec(model, "random", 0, ("pooled",), "avg", "cpu", "fp32", backend=b))
                for b in ("torch", "openvino")}
        best = {b: 0.0 for b in nets}
        for _ in range(args.rounds):
            for b, ex in nets.items():
                best[b] = max(best[b], images_per_s(ex, args.batch_size, args.batches))
        ov = nets["openvino"]
        print(f"  {model:24} torch {best['torch']:7.1f} img/s  openvino {best['openvino']:7.1f} img/s  "
              f"{best['openvino'] / best['torch']:4.2f}x  (conversion {ov.converted.conversion_seconds:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
