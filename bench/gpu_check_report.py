#!/usr/bin/env python3
"""The summary at the end of bench/gpu_check.sh: what tests/test_gpu.py measured, and nvidia-smi's GPU
utilisation per stage of the run.

    python bench/gpu_check_report.py FIGURES.json PHASES SAMPLES.csv

FIGURES.json: written by tests/test_gpu.py ($FEATPIPE_GPU_FIGURES); a figure whose test was skipped or
failed before measuring is reported as missing. PHASES: lines "STAGE EPOCH-SECONDS", each the start of a
stage (the last, "end", ends the run). SAMPLES.csv: nvidia-smi --query-gpu=timestamp,name,utilization.gpu,
memory.used --format=csv,noheader,nounits (its timestamps are local time, like the epoch seconds read back).
A missing or empty file is reported as such, not as zeros.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime
from itertools import pairwise
from pathlib import Path

# (figure, what it is, the bound tests/test_gpu.py asserts)
FIGURES = [
    ("gpu_vs_cpu_crops_mean_abs_diff_worst_image", "GPU- vs CPU-decoded crops, worst image's mean |diff| (/255)",
     "<= 1.5"),
    ("gpu_vs_cpu_crops_max_abs_diff", "GPU- vs CPU-decoded crops, largest |diff| of any pixel (/255)", ""),
    ("gpu_vs_cpu_decoding_features_mean_abs_diff", "GPU- vs CPU-decoded features, mean |diff|", ""),
    ("gpu_vs_cpu_decoding_features_mean_rel_diff", "GPU- vs CPU-decoded features, mean relative diff per row", ""),
    ("gpu_vs_cpu_decoding_features_min_cosine", "GPU- vs CPU-decoded features, min cosine per row", ">= 0.999"),
    ("bf16_vs_fp32_min_cosine", "bf16 vs fp32 on the GPU, min cosine per row", ">= 0.999"),
    ("fp32_gpu_vs_cpu_max_rel_diff", "fp32 GPU vs CPU, max relative diff per row", "<= 1e-4"),
    ("batch_auto_vs_fixed_max_rel_diff", "--batch-size auto vs 8, max relative diff per row", "<= 1e-4"),
    ("batch_auto_real_oom", "--batch-size auto under a memory cap: a real out-of-memory error survived",
     "at least one halving; rel diff <= 1e-4"),
    ("devices_all_vs_one_max_rel_diff", "--devices all vs one GPU, max relative diff per row", "<= 1e-4"),
]


def report_figures(path: Path) -> None:
    print(f"== figures measured by tests/test_gpu.py ({path}) ==")
    figures = json.loads(path.read_text()) if path.is_file() and path.stat().st_size else {}
    for key, label, bound in FIGURES:
        value = figures.pop(key, None)
        shown = "MISSING (skipped, or failed before measuring)" if value is None else json.dumps(value)
        print(f"  {label}: {shown}" + (f"   [test: {bound}]" if bound else ""))
    for key, value in figures.items():  # a figure added to the tests but not to this list
        print(f"  {key}: {json.dumps(value)}")


def read_samples(path: Path) -> tuple[str, list[tuple[float, float, float]]]:
    """The GPU's name and (epoch seconds, utilisation %, memory MiB) per nvidia-smi sample."""
    name, rows = "", []
    for line in path.read_text().splitlines() if path.is_file() else []:
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            when = datetime.strptime(parts[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
            rows.append((when, float(parts[2]), float(parts[3])))
        except ValueError:  # "[N/A]" or a line cut off when the sampler stopped
            continue
        name = parts[1]
    return name, rows


def report_utilisation(phases_path: Path, samples_path: Path) -> None:
    name, samples = read_samples(samples_path)
    print(f"== nvidia-smi GPU utilisation, sampled during the run ({name or 'no GPU'}) ==")
    if not samples:
        print(f"  no samples in {samples_path}: no nvidia-smi here, or it failed (see the log above)")
        return
    lines = phases_path.read_text().split("\n") if phases_path.is_file() else []
    marks = [(line.split()[0], float(line.split()[1])) for line in lines if line.strip()]
    if len(marks) < 2:
        print(f"  fewer than two stage marks in {phases_path}: no stage to report")
        return
    stages = list(pairwise(marks)) + [(("whole run", marks[0][1]), ("", marks[-1][1]))]
    print(f"  {'stage':24s} {'seconds':>8s} {'samples':>8s} {'mean %':>7s} {'max %':>6s} {'max MiB':>8s}")
    for (stage, start), (_, end) in stages:
        inside = [s for s in samples if start <= s[0] < end]
        if not inside:
            print(f"  {stage:24s} {end - start:8.1f} {0:8d}       -      -        -")
            continue
        util = [s[1] for s in inside]
        print(f"  {stage:24s} {end - start:8.1f} {len(inside):8d} {sum(util) / len(util):7.1f} {max(util):6.0f} "
              f"{max(s[2] for s in inside):8.0f}")


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit("usage: python bench/gpu_check_report.py FIGURES.json PHASES SAMPLES.csv")
    figures, phases, samples = map(Path, sys.argv[1:])
    report_figures(figures)
    report_utilisation(phases, samples)


if __name__ == "__main__":
    main()
