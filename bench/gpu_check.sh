#!/usr/bin/env bash
# Issue 22: the GPU path measured, in one run of under 8 minutes on one H100 or H200 with 16 cores
# (about 4 expected: the tests about 1, bench/gpu.sh with 20,000 images 2 to 3):
#   1. featpipe's requirements (pyproject.toml), installed where missing (pip skips what is satisfied);
#      featpipe itself runs from this checkout (PYTHONPATH): pure Python, nothing to build;
#   2. python -m pytest -m gpu tests/test_gpu.py, without -x so every GPU test reports; the figures the
#      tests measured (GPU- vs CPU-decoded features, bf16 vs fp32, fp32 GPU vs CPU, --batch-size auto
#      through a real out-of-memory error) are printed at the end, failing tests' figures included;
#   3. bench/gpu.sh: ResNet-50 bf16 images/s with --decode exact and gpu, the pure forward, the baseline;
#   4. nvidia-smi's GPU utilisation, sampled every 0.2 s during 2 and 3: its mean per stage.
# Everything printed also goes to $LOG. The exit status is 1 when any stage failed.
#
#   bench/gpu_check.sh                      # on the GPU machine
#   WHEELS=DIR bench/gpu_check.sh           # ... offline: wheels of what is missing (bench/gpu_wheels.sh DIR)
#   DEVICE=cpu N=64 bench/gpu_check.sh      # the tiny CPU mode: checks this script end to end (GPU tests skip)
#
# Environment: DEVICE (cuda), N (images for bench/gpu.sh: 20000, 64 on a CPU), WORKERS, BATCH, PRECISION
# (passed to bench/gpu.sh; on a CPU 2 workers and batch 16), LOG (default $WORKDIR/gpu_check.log), WHEELS,
# PYTHON (python3), WORKDIR (images and this run's files; default $TMPDIR/featpipe-bench).
# Stage limits (150 s for the tests, 300 s for bench/gpu.sh) keep a hung stage from eating a short GPU lease.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DEVICE="${DEVICE:-cuda}" PYTHON="${PYTHON:-python3}"
export WORKDIR="${WORKDIR:-${TMPDIR:-/tmp}/featpipe-bench}"
if [[ "$DEVICE" != cuda* ]]; then
  export N="${N:-64}" WORKERS="${WORKERS:-2}" BATCH="${BATCH:-16}"
fi
LOG="${LOG:-$WORKDIR/gpu_check.log}"
RUN="$WORKDIR/gpu_check"  # this run's figures, stage marks and nvidia-smi samples
export PHASES="$RUN/phases" FEATPIPE_GPU_FIGURES="$RUN/figures.json"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

stage() { echo; echo "== $* ($(date -u +%H:%M:%S) UTC, ${SECONDS} s in) =="; }
mark() { echo "$1 $(date +%s.%N)" >>"$PHASES"; }

main() {
  cd "$REPO" || return 1
  rm -rf "$RUN" && mkdir -p "$RUN" || return 1
  local failed=() sampler=""

  stage "1. featpipe's requirements"
  echo "checkout $(git rev-parse --short HEAD 2>/dev/null || echo '(not git)'), python $("$PYTHON" -V 2>&1)," \
       "$(nproc) cores, DEVICE=$DEVICE"
  local reqs
  mapfile -t reqs < <("$PYTHON" -c 'import tomllib
print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))')
  if ! "$PYTHON" -m pip install --disable-pip-version-check -q ${WHEELS:+--no-index --find-links "$WHEELS"} "${reqs[@]}"; then
    echo "error: featpipe's requirements are missing and pip could not install them; without a package index" \
         "pass WHEELS=DIR, a folder that bench/gpu_wheels.sh DIR filled where pip works"
    return 1
  fi
  "$PYTHON" -c 'import torch, featpipe
print(f"featpipe {featpipe.__version__}, torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}"
      + (f", {torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""))' \
    || failed+=("import")

  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=timestamp,name,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 \
      >"$RUN/samples.csv" 2>&1 &
    sampler=$!
  else
    echo "no nvidia-smi on PATH: GPU utilisation is not sampled"
  fi

  stage "2. GPU tests: python -m pytest -m gpu tests/test_gpu.py (skipped without CUDA)"
  mark tests
  timeout 150 "$PYTHON" -m pytest -m gpu -v -rA -p no:cacheprovider -o timeout=90 tests/test_gpu.py \
    || failed+=("tests (exit $?)")

  stage "3. bench/gpu.sh (N=${N:-20000})"
  timeout 300 bench/gpu.sh || failed+=("bench/gpu.sh (exit $?)")
  mark end

  [[ -n "$sampler" ]] && kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null
  stage "4. summary"
  "$PYTHON" bench/gpu_check_report.py "$FEATPIPE_GPU_FIGURES" "$PHASES" "$RUN/samples.csv" || failed+=("report")
  echo "bench/gpu_check.sh took ${SECONDS} s; log: $LOG"
  if ((${#failed[@]})); then
    echo "FAILED: ${failed[*]}"
    return 1
  fi
  echo "every stage passed"
}

mkdir -p "$WORKDIR" "$(dirname "$LOG")" || exit 1
main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
