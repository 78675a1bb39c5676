"""Fast start: each entry point imports only the heavy libraries it uses (finding 7 of issue 8).

Each check runs in a fresh interpreter and looks at ``sys.modules`` afterwards.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

HEAVY = ("torch", "timm", "torchvision", "dask", "distributed", "sklearn", "pandas", "matplotlib", "scipy", "skops")


def loaded_after(code: str, tmp_path, argv: list[str] | None = None) -> set[str]:
    """The heavy libraries a fresh interpreter has imported after running ``code`` (or the CLI with ``argv``)."""
    if argv is not None:
        code = textwrap.dedent(f"""
            import sys
            sys.argv = ["featpipe", *{argv!r}]
            from featpipe.cli import main
            try:
                main()
            except SystemExit as exc:
                assert exc.code in (0, None), exc.code
        """)
    probe = f"\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code) + probe], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return set(json.loads(r.stdout.strip().splitlines()[-1]))


@pytest.fixture
def feature_file(tmp_path):
    from featpipe.store import write_arrays

    return write_arrays(tmp_path / "f.h5", np.zeros((4, 3), np.float32), np.array([0, 1, 0, 1]), ["a", "b"])


def test_reading_a_feature_file_needs_no_torch_dask_or_sklearn(tmp_path, feature_file):
    loaded = loaded_after(f"import featpipe\nassert featpipe.load({str(feature_file)!r}).X().shape == (4, 3)",
                          tmp_path)
    assert not loaded & {"torch", "dask", "sklearn", "pandas"}, loaded


def test_the_public_names_still_load_on_use():
    import featpipe

    assert callable(featpipe.extract) and callable(featpipe.fit) and callable(featpipe.guide)
    assert callable(featpipe.predict) and callable(featpipe.load_classifier)
    assert featpipe.ExtractConfig.__name__ == "ExtractConfig" and "FeatureSet" in dir(featpipe)
    with pytest.raises(AttributeError):
        featpipe.no_such_name  # noqa: B018


def test_help_needs_no_torch(tmp_path):
    assert not loaded_after("", tmp_path, ["--help"]) & {"torch", "dask", "sklearn"}


def test_info_needs_no_torch(tmp_path, feature_file):
    assert not loaded_after("", tmp_path, ["info", str(feature_file)]) & {"torch", "dask", "sklearn"}


def test_models_needs_no_torch_once_its_table_is_cached(tmp_path):
    for argv in (["models"], ["models", "tv:squeeze*"]):
        loaded_after("", tmp_path, argv)  # the first listing computes the table, with torch
        assert not loaded_after("", tmp_path, argv) & {"torch", "dask", "sklearn"}


def test_extract_needs_no_sklearn_pandas_or_matplotlib(tmp_path, image_folder):
    loaded = loaded_after("", tmp_path, ["extract", str(image_folder), "-o", str(tmp_path / "f.h5"), "--model",
                                         "test_resnet", "--weights", "random", "-q"])
    assert "torch" in loaded and not loaded & {"sklearn", "pandas", "matplotlib"}, loaded


def test_a_local_extract_never_imports_distributed(tmp_path, image_folder):
    """Importing distributed (1.65 s of CPU) and starting a LocalCluster (0.5-1.2 s) were most of an extraction's
    fixed cost: without --scheduler the partitions run on threads, and no Dask is imported at all."""
    loaded = loaded_after("", tmp_path, ["extract", str(image_folder), "-o", str(tmp_path / "f.h5"), "--model",
                                         "test_resnet", "--weights", "random", "--streams", "2", "-q"])
    assert "torch" in loaded and not loaded & {"distributed", "dask"}, loaded
    assert (tmp_path / "f.h5").exists()


def test_the_cli_leaves_out_the_last_garbage_collection(tmp_path, feature_file):
    """After `import torch, timm` the interpreter's final collection costs about 2 s: the CLI freezes the heap
    as it ends (atexit handlers still run), also when the command failed."""
    for argv, code in ((["info", str(feature_file)], 0), (["info", str(tmp_path / "missing.h5")], 2)):
        probe = textwrap.dedent(f"""
            import atexit, gc, sys
            atexit.register(lambda: print("frozen", gc.get_freeze_count() > 0))
            sys.argv = ["featpipe", *{argv!r}]
            from featpipe.cli import main
            try:
                main()
            except SystemExit as exc:
                assert (exc.code or 0) == {code}, exc.code
        """)
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.strip().endswith("frozen True"), (r.stdout, r.stderr)


def test_help_lists_every_command_with_its_own_summary():
    """`featpipe --help` lists commands from a table, without importing them: it must match the commands."""
    import importlib

    from featpipe.cli import COMMANDS, app

    for module in {m for m, _ in COMMANDS.values()}:
        importlib.import_module(f"featpipe.cli.{module}")
    real = {c.name or c.callback.__name__: c for c in app.registered_commands}
    assert set(real) == set(COMMANDS), "update COMMANDS in featpipe/cli/__init__.py"
    for name, (module, text) in COMMANDS.items():
        first = (real[name].callback.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
        assert real[name].callback.__module__ == f"featpipe.cli.{module}"
        assert " ".join(first.split()) == text, f"update COMMANDS[{name!r}] in featpipe/cli/__init__.py"


def test_rerunning_a_finished_extract_needs_no_torch(tmp_path, image_folder):
    argv = ["extract", str(image_folder), "-o", str(tmp_path / "f.h5"), "--model", "test_resnet", "--weights",
            "random", "-q"]
    assert "torch" in loaded_after("", tmp_path, argv)
    assert not loaded_after("", tmp_path, argv) & {"torch", "dask", "sklearn"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="transparent huge pages are Linux's")
@pytest.mark.parametrize("given, expected", [(None, "1"), ("0", "0")])
def test_torch_gets_huge_pages_unless_the_user_said_otherwise(given, expected):
    """featpipe sets THP_MEM_ALLOC_ENABLE before torch loads (torch reads it once, as it loads); a value the user
    gave is kept."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if given is not None:
        env["THP_MEM_ALLOC_ENABLE"] = given
    code = "import sys, os, featpipe; assert 'torch' not in sys.modules; print(os.environ['THP_MEM_ALLOC_ENABLE'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == expected
