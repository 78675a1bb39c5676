#!/usr/bin/env python3
"""PyTorch on the CPU with and without transparent huge pages for its large buffers (THP_MEM_ALLOC_ENABLE, which
featpipe sets on Linux as it is imported): images/s, the kernel's share of the CPU time, page faults, peak RSS.

For each model (random weights), in fresh processes that alternate the two settings for --rounds rounds:

* extract: `featpipe.extract` of --n JPEGs on the torch backend (in process, compute phase);
* train: fine-tuning steps as `featpipe finetune` and the guide take them (forward and backward of the whole
  network, AdamW, batch 16 at 96 px), seconds per step.

    python bench/torch_cpu_memory.py [--n 500] [--rounds 2] [--models tf_efficientnet_lite0,resnet18]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extract_speed import images  # noqa: E402 - bench/ is no package


def child_extract(folder: str, model: str) -> dict:
    import featpipe

    s = featpipe.extract(featpipe.ExtractConfig(folder, f"{folder}.h5", model=model, weights="random", device="cpu",
                                                backend="torch", overwrite=True))
    return {"rate": s.images_per_s}


def child_train(model: str, steps: int = 12) -> dict:
    import timm  # THP_MEM_ALLOC_ENABLE comes from run(): this child's environment
    import torch

    torch.manual_seed(0)
    net = timm.create_model(model.removeprefix("timm:"), pretrained=False, num_classes=10)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    x, y = torch.randn(16, 3, 96, 96), torch.randint(0, 10, (16,))
    net.train()
    for step in range(steps + 2):  # two warm-up steps
        if step == 2:
            t0 = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return {"rate": steps / (time.perf_counter() - t0)}


def run(kind: str, thp: str, *args: str) -> dict:
    env = {**os.environ, "THP_MEM_ALLOC_ENABLE": thp}
    out = subprocess.run([sys.executable, __file__, "--child", kind, *args], capture_output=True, text=True, env=env)
    if out.returncode:
        sys.exit(f"child {kind} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, *args = sys.argv[2:]
        t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        result = {"extract": child_extract, "train": child_train}[kind](*args)
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
        print(json.dumps({**result, "sys_share": (r1.ru_stime - r0.ru_stime) / max(cpu, 1e-9),
                          "faults": r1.ru_minflt - r0.ru_minflt, "maxrss_mib": r1.ru_maxrss / 1024,
                          "wall": time.perf_counter() - t0}))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--models", default="tf_efficientnet_lite0,resnet18")
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "featpipe-bench")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    folder = str(images(args.workdir, args.n))
    print(f"torch on the CPU, THP_MEM_ALLOC_ENABLE 0 (torch's default) vs 1 (featpipe's); {args.n} JPEGs; "
          f"best of {args.rounds} rounds")
    for model in args.models.split(","):
        for kind, unit, extra in (("extract", "img/s", (folder, model)), ("train", "steps/s", (model,))):
            best = {}
            for _ in range(args.rounds):
                for thp in ("0", "1"):
                    r = run(kind, thp, *extra)
                    if thp not in best or r["rate"] > best[thp]["rate"]:
                        best[thp] = r
            off, on = best["0"], best["1"]
            print(f"  {model:22} {kind:7} off {off['rate']:6.2f} {unit} (kernel {100 * off['sys_share']:3.0f}% of CPU, "
                  f"{off['faults'] / 1e6:4.2f}M faults, {off['maxrss_mib']:5.0f} MiB)  on {on['rate']:6.2f} {unit} "
                  f"(kernel {100 * on['sys_share']:3.0f}%, {on['faults'] / 1e6:4.2f}M faults, {on['maxrss_mib']:5.0f} MiB)"
                  f"  {on['rate'] / off['rate']:4.2f}x, peak RSS {on['maxrss_mib'] / off['maxrss_mib']:4.2f}x", flush=True)


if __name__ == "__main__":
    main()
