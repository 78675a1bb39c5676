"""Each shared helper is written once (featpipe/_util.py, featpipe/remote.py): a second copy is where two
answers to one question start to drift (issue 19 found a temporary name that the clean-up did not know)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "featpipe"

# What only its home may write, and that home (relative to featpipe/).
HOMES = [
    (r"\bos\.(replace|rename)\(|\.rename\(", "_util.py", "a file written whole: atomic_write / replace_durably"),
    (r"\.read\(1 << 20\)", "_util.py", "a digest of bytes: sha256_file / sha256_stream"),
    (r"sched_getaffinity|\bcpu\.max\b", "_util.py", "this process's cores: cpu_cores"),
    (r"\bmemory\.max\b|MemAvailable", "_util.py", "this process's memory: available_memory"),
    (r"XDG_CACHE_HOME\"|XDG_CACHE_HOME'", "_util.py", "the cache folder: user_cache / cache_dir"),
    (r"matplotlib\.use\(", "_util.py", "a pyplot without a display: pyplot"),
    (r"^def is_url\(", "remote.py", "whether a location is a URL: remote.is_url"),
    (r"\.tmp-|\"\.tmp\"|'\.tmp'", "_util.py", "a temporary name: temporary_name (remove_temporaries knows it)"),
]


@pytest.mark.parametrize("pattern, home, helper", HOMES, ids=[h for _, _, h in HOMES])
def test_a_helper_is_written_only_in_its_home(pattern, home, helper):
    elsewhere = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            code = line.split("#", 1)[0]
            if re.search(pattern, code, re.MULTILINE) and path.relative_to(PACKAGE).as_posix() != home \
                    and not code.lstrip().startswith(('"', "'", "``")):
                elsewhere.append(f"featpipe/{path.relative_to(PACKAGE).as_posix()}:{number}: {line.strip()}")
    assert not elsewhere, f"{helper} belongs in featpipe/{home}; written again at:\n" + "\n".join(elsewhere)
