"""What pyproject.toml declares holds for the code (finding 11 of issue 8: Python 3.10 was declared, and the
CLI imported tomllib, which 3.10 lacks)."""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Standard-library modules newer than the oldest Python anyone might declare, and the release that added them.
ADDED_IN = {"tomllib": (3, 11), "graphlib": (3, 9), "zoneinfo": (3, 9)}


def lowest_python() -> tuple[int, int]:
    text = (ROOT / "pyproject.toml").read_text()
    major, minor = re.search(r'requires-python\s*=\s*">=\s*(\d+)\.(\d+)', text).groups()
    return int(major), int(minor)


def test_every_standard_module_imported_exists_in_the_lowest_declared_python():
    low = lowest_python()
    too_new = []
    for path in sorted((ROOT / "featpipe").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names and ADDED_IN.get(top, (0, 0)) > low:
                    too_new.append(f"{path.relative_to(ROOT)} imports {top} (Python {ADDED_IN[top]})")
    assert not too_new, f"requires-python says >={low}, but " + "; ".join(too_new)


def test_every_file_beside_the_code_ships_in_the_wheel():
    """setuptools packs only .py files unless package-data names the others (the report's template)."""
    import fnmatch
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"].get("package-data", {})
    missing = []
    for path in sorted((ROOT / "featpipe").rglob("*")):
        if not path.is_file() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        package = path.parent
        while not (package / "__init__.py").exists():
            package = package.parent
        name = ".".join(package.relative_to(ROOT).parts)
        inside = path.relative_to(package).as_posix()
        if not any(fnmatch.fnmatch(inside, glob) for glob in declared.get(name, [])):
            missing.append(str(path.relative_to(ROOT)))
    assert not missing, f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"
