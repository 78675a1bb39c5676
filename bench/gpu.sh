#!/usr/bin/env bash
# The GPU path end to end (issue 12): featpipe ResNet-50 bf16 with CPU and with GPU decoding, the same
# network's pure forward throughput, and bench/baseline_extract.py with 16 DataLoader workers, on the
# same 20,000 ImageNet-sized JPEGs (bench/make_images.py). Prints images/s and the ratios against the
# targets: >= 5,000 img/s end to end, >= 0.8x the pure forward, >= 3x the baseline.
#
#   bench/gpu.sh                      # one GPU, < 8 minutes on an H200 with 16 cores
#   N=64 DEVICE=cpu bench/gpu.sh      # a tiny run on the CPU: checks the script, measures nothing
#
# ResNet-50 has random weights (no hub access on the GPU machine): throughput does not depend on them.
# Environment: N (images, 20000), DEVICE (cuda), PRECISION (bf16 on a GPU; fp32 on a CPU, where bf16 is
# emulated and slow), BATCH (256), WORKERS (baseline DataLoader workers, 16), WORKDIR (image cache), PYTHON,
# PHASES (a file to append "STAGE EPOCH-SECONDS" to as each stage starts; bench/gpu_check.sh reads it and
# marks the end).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${N:-20000}"
DEVICE="${DEVICE:-cuda}"
BATCH="${BATCH:-256}"
if [[ "$DEVICE" == cuda* ]]; then PRECISION="${PRECISION:-bf16}"; else PRECISION="${PRECISION:-fp32}"; fi
WORKERS="${WORKERS:-16}"
PYTHON="${PYTHON:-python}"
WORKDIR="${WORKDIR:-${TMPDIR:-/tmp}/featpipe-bench}"
TOOLS="$REPO/bench"
mark() { [[ -z "${PHASES:-}" ]] || echo "$1 $(date +%s.%N)" >>"$PHASES"; }
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
CORES="$("$PYTHON" -c 'import os; print(len(os.sched_getaffinity(0)))')"
IMAGES="$WORKDIR/gpu_${N}"
T0=$SECONDS

# --- images: bench/make_images.py, one process per core, each its own seed, gathered into one tree -------
mark images
if [[ ! -f "$IMAGES/.complete" ]]; then
  rm -rf "$IMAGES" "$IMAGES.parts"
  mkdir -p "$IMAGES.parts"
  per=$(( (N + CORES - 1) / CORES ))
  pids=()
  for ((k = 0; k < CORES; k++)); do
    n=$(( N - k * per < per ? N - k * per : per ))
    (( n > 0 )) || break
    "$PYTHON" "$TOOLS/make_images.py" "$IMAGES.parts/$k" --n "$n" --classes 10 --seed "$k" &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done  # a generator that failed stops the script
  # part k's class_c/img_i.jpg becomes class_c/pk_img_i.jpg, in one process (not a mv per file)
  "$PYTHON" - "$IMAGES.parts" "$IMAGES" <<'EOF'
import sys
from pathlib import Path

parts, out = Path(sys.argv[1]), Path(sys.argv[2])
for f in parts.glob("*/*/*.jpg"):
    (out / f.parent.name).mkdir(parents=True, exist_ok=True)
    f.rename(out / f.parent.name / f"p{f.parent.parent.name}_{f.name}")
EOF
  rm -rf "$IMAGES.parts"
  touch "$IMAGES/.complete"
fi
echo "$N ImageNet-sized JPEGs in $IMAGES ($(( SECONDS - T0 )) s to make or find); ResNet-50, random weights, $PRECISION," \
     "batch $BATCH, device $DEVICE, $CORES cores"

# --- featpipe end to end --------------------------------------------------------------------------------
rate() { grep -oE '^[0-9.]+ images/s' | head -1 | cut -d' ' -f1; }
featpipe_run() {  # $1: --decode choice
  local out
  out="$("$PYTHON" -m featpipe extract "$IMAGES" -o "$WORKDIR/gpu_bench_$1.h5" --model timm:resnet50 \
        --weights random --precision "$PRECISION" --device "$DEVICE" --batch-size "$BATCH" --decode "$1" \
        --overwrite --quiet 2>&1)" || { echo "$out" >&2; exit 1; }
  echo "$out" | sed 's/^/    /' >&2
  echo "$(echo "$out" | rate)/$(echo "$out" | grep -oE '[0-9.]+ s in all' | cut -d' ' -f1)"
}
echo "featpipe, CPU decoding (--decode exact):" >&2
mark featpipe_decode_exact
CPU_DECODE="$(featpipe_run exact)"
if [[ "$DEVICE" == cuda* ]]; then
  echo "featpipe, GPU decoding (--decode gpu):" >&2
  mark featpipe_decode_gpu
  GPU_DECODE="$(featpipe_run gpu)"
else
  GPU_DECODE=""
fi

# --- the same network's pure forward pass, on pre-decoded batches already on the device -----------------
mark pure_forward
PURE="$("$PYTHON" - "$DEVICE" "$BATCH" "$PRECISION" <<'EOF'
import sys, time
import torch
from featpipe.extraction.extractor import Extractor, ExtractorSpec

device, bs = sys.argv[1], int(sys.argv[2])
ex = Extractor(ExtractorSpec("timm:resnet50", "random", 0, ("pooled",), "avg", device, sys.argv[3]))
x = ex.preprocess.batch(torch.randint(0, 256, (bs, *ex.data_config.crop, 3), dtype=torch.uint8).to(ex.device))
sync = torch.cuda.synchronize if ex.device.type == "cuda" else (lambda: None)
rounds = 40 if ex.device.type == "cuda" else 2
with torch.inference_mode(), ex._cuda_flags(), ex._autocast():
    for _ in range(3):
        ex.network(x)
    sync()
    t0 = time.perf_counter()
    for _ in range(rounds):
        ex.network(x)
    sync()
print(f"{rounds * bs / (time.perf_counter() - t0):.1f}")
EOF
)"

# --- the baseline: ImageFolder + DataLoader workers + timm + h5py (fp32: what the tutorial writes) -------
mark baseline
BASE="$("$PYTHON" "$TOOLS/baseline_extract.py" "$IMAGES" "$WORKDIR/gpu_bench_baseline.h5" --model resnet50 \
       --batch-size "$BATCH" --workers "$WORKERS" --device "$DEVICE" | grep -oE '[0-9.]+ img/s' | cut -d' ' -f1)"

# --- results --------------------------------------------------------------------------------------------
"$PYTHON" - "$CPU_DECODE" "${GPU_DECODE:-nan/nan}" "$PURE" "$BASE" "$WORKERS" "$(( SECONDS - T0 ))" "$N" <<'EOF'
import math, sys
(cpu, cpu_wall), (gpu, gpu_wall) = ((float(x) for x in (v + "/nan").split("/")[:2]) for v in sys.argv[1:3])
pure, base = float(sys.argv[3]), float(sys.argv[4])
workers, wall, n = sys.argv[5], sys.argv[6], int(sys.argv[7])
print(f"featpipe, CPU decoding:  {cpu:8.1f} img/s   ({n / cpu_wall:.1f} img/s counting model build, "
      f"cluster start and merge: {cpu_wall:.1f} s in all)")
print(f"featpipe, GPU decoding:  {gpu:8.1f} img/s   ({n / gpu_wall:.1f} img/s counting start-up: {gpu_wall:.1f} s)"
      if not math.isnan(gpu) else "featpipe, GPU decoding:       -- (no CUDA device: --decode gpu needs one)")
print(f"pure forward:            {pure:8.1f} img/s (the same network, precision and batch, inputs on the device)")
print(f"baseline_extract.py:     {base:8.1f} img/s ({workers} DataLoader workers, fp32)")
best = max(v for v in (cpu, gpu) if not math.isnan(v))
print(f"featpipe best end to end: {best:.1f} img/s   (target >= 5000)")
print(f"featpipe / pure forward:  {best / pure:.2f}x   (target >= 0.80x)")
print(f"featpipe / baseline:      {best / base:.2f}x   (target >= 3.00x)")
print(f"bench/gpu.sh took {wall} s (target < 480 s on one H200 with 16 cores)")
EOF
