#!/usr/bin/env bash
# Wheels for bench/gpu_check.sh on a GPU machine without a package index: an image that holds Python 3.12,
# PyTorch, torchvision, scikit-learn, h5py, pandas, matplotlib, typer and rich but neither Dask nor skops.
# Downloads, where pip works, what featpipe needs beyond such an image (Dask, distributed, skops and what
# they need that such images lack; timm too, in case the image's is older than featpipe's minimum), at the
# versions installed here when there are any, as x86-64 Linux wheels for that Python. About 7 MB.
#
#   bench/gpu_wheels.sh DIR                 # then, on the GPU machine: WHEELS=DIR bench/gpu_check.sh
#
# Environment: PY_VERSION (the GPU machine's Python, 3.12), PYTHON (python3).
# If the install there still names something missing, add it to PACKAGES.
set -euo pipefail

DIR="${1:?usage: bench/gpu_wheels.sh DIR}"
PY_VERSION="${PY_VERSION:-3.12}"
PYTHON="${PYTHON:-python3}"
PACKAGES="dask distributed partd locket tblib tornado zict skops prettytable wcwidth timm"

# name==version where this machine has the package (a combination known to work together), else the newest
mapfile -t pins < <("$PYTHON" - $PACKAGES <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version

for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(name)
EOF
)
mkdir -p "$DIR"
"$PYTHON" -m pip download --disable-pip-version-check -q --no-deps --only-binary=:all: -d "$DIR" \
  --python-version "$PY_VERSION" --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 "${pins[@]}"
ls "$DIR"
