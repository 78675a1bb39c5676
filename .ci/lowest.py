#!/usr/bin/env python3
"""Print pip pins of the lowest version pyproject.toml declares for each dependency (``name>=X`` -> ``name==X``).

``make test-min`` installs them in a virtual environment and runs the tests there, so a declared
minimum that no longer works fails a test run instead of a user's install. Packages named with
``--skip`` are left out (torch and torchvision: see the Makefile). The test tools that must match
a minimum (s3fs, pinned to its fsspec) are in .ci/lowest-tools.txt, checked here.

    python .ci/lowest.py [--skip torch,torchvision]
"""
from __future__ import annotations

import argparse
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def lowest(requirement: str) -> str | None:
    """'dask[distributed]>=2024.1  ' -> 'dask[distributed]==2024.1'; None without a lower bound."""
    m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)\s*>=\s*([^,;\s]+)\s*", requirement)
    return f"{m.group(1)}=={m.group(2)}" if m else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", default="", help="comma-separated names to leave out")
    args = ap.parse_args()
    skip = {s.strip().lower() for s in args.skip.split(",") if s.strip()}
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        name = re.split(r"[\[<>=!~ ;]", dep, maxsplit=1)[0].lower()
        if name in skip:
            continue
        pin = lowest(dep)
        if pin is None:
            raise SystemExit(f"pyproject.toml: {dep!r} has no '>=' lower bound to test")
        pins[name] = pin.split("==")[1]
        print(pin)
    check_tools(pins.get("fsspec"))


def check_tools(fsspec: str | None) -> None:
    """.ci/lowest-tools.txt's s3fs must be the fsspec minimum's own release (s3fs pins fsspec exactly)."""
    tools = dict(line.split("==") for line in (ROOT / ".ci" / "lowest-tools.txt").read_text().splitlines()
                 if line.strip() and not line.startswith("#"))
    if fsspec is not None and tools.get("s3fs", "").removesuffix(".0") != fsspec.removesuffix(".0"):
        raise SystemExit(f".ci/lowest-tools.txt pins s3fs=={tools.get('s3fs')} but the fsspec minimum is {fsspec}: "
                         "pin the s3fs of that release, and its aiobotocore, botocore and boto3")


if __name__ == "__main__":
    main()
