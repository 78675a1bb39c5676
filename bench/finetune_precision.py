#!/usr/bin/env python3
"""Does bf16 autocast pay for fine-tuning on this CPU? fp32 against bf16, measured in one run.

For each model and input size: the seconds of one training step (forward, backward, Adam) on a batch of 32,
and of one inference forward pass (what the linear probe's features and the validation cost), under
`torch.autocast("cpu", dtype=torch.bfloat16)` and without it. Random weights and random pixels: only time is
measured here. Rounds alternate the order (the machine is shared and noisy: only the ratios mean much).

`finetune --precision auto` takes bf16 only where it trains faster; on a CPU whose training step is slower in
bf16 (autocast's casts and the backward pass's fp32 master gradients) it stays fp32, and this script is the
evidence for that choice.

    python bench/finetune_precision.py [--models tf_efficientnet_lite0,resnet18] [--sizes 96,224] [--rounds 2]
"""
from __future__ import annotations

import argparse
import time

import timm
import torch
from torch import nn


def seconds(fn, repeat: int) -> float:
    for _ in range(2):
        fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def measure(net: nn.Module, opt, size: int, rounds: int, repeat: int) -> dict[str, float]:
    """The fastest of ``rounds`` timings of a training step and of an inference pass, fp32 and bf16."""
    x = torch.randn(32, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (32,))

    def step(bf16: bool) -> None:
        net.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def forward(bf16: bool) -> None:
        net.eval()
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            net(x)

    t = {k: [] for k in ("train32", "train16", "fwd32", "fwd16")}
    for r in range(rounds):
        for bf16 in ((False, True) if r % 2 == 0 else (True, False)):
            t["train16" if bf16 else "train32"].append(seconds(lambda b=bf16: step(b), repeat))
            t["fwd16" if bf16 else "fwd32"].append(seconds(lambda b=bf16: forward(b), repeat))
    return {k: min(v) for k, v in t.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="tf_efficientnet_lite0,resnet18")
    ap.add_argument("--sizes", default="96,224")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=6)
    args = ap.parse_args()
    cpu_bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, oneDNN bf16 supported: {cpu_bf16}")
    print(f"{'model':24} {'px':>4} {'train fp32':>11} {'train bf16':>11} {'ratio':>6} {'fwd fp32':>9} {'fwd bf16':>9} {'ratio':>6}")
    for name in args.models.split(","):
        torch.manual_seed(0)
        net = timm.create_model(name, num_classes=10).to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(net.parameters(), 1e-5)
        for size in map(int, args.sizes.split(",")):
            m = measure(net, opt, size, args.rounds, args.repeat)
            print(f"{name:24} {size:>4} {m['train32']:>10.3f}s {m['train16']:>10.3f}s {m['train32'] / m['train16']:>5.2f}x "
                  f"{m['fwd32']:>8.3f}s {m['fwd16']:>8.3f}s {m['fwd32'] / m['fwd16']:>5.2f}x")
    print("ratio: fp32 time / bf16 time (above 1: bf16 is faster)")


if __name__ == "__main__":
    main()
