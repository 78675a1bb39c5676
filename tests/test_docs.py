"""docs/feature-file.md against real files: everything featpipe writes is specified, with its type,
everything specified is written, and the h5py example runs."""
from __future__ import annotations

import contextlib
import io
import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest

from featpipe import ExtractConfig, extract, store

from .conftest import TINY_MODEL, make_images

DOC = Path(__file__).resolve().parent.parent / "docs" / "feature-file.md"
ROW = re.compile(r"^\| ((?:`[^`]+`(?:, )?)+) \| ([^|]+?) \|", re.M)


def sections(text: str) -> dict[str, str]:
    """The text under each heading, keyed by every name in backticks in the heading, or by its words."""
    out: dict[str, str] = {}
    keys: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
            keys = re.findall(r"`([^`]+)`", title) or [title]
            for key in keys:
                out[key] = ""
        else:
            for key in keys:
                out[key] += line + "\n"
    return out


def table(section: str) -> dict[str, str]:
    """Rows of the markdown table in ``section``: name -> type (first and second cells)."""
    return {name: kind.strip() for names, kind in ROW.findall(section) for name in re.findall(r"`([^`]+)`", names)}


def type_name(value) -> str:
    """The name this document uses for the type of an attribute value or a dataset dtype."""
    if isinstance(value, np.dtype):
        return "string" if h5py.check_string_dtype(value) else value.name
    return "string" if isinstance(value, str | bytes) else np.asarray(value).dtype.name


def documented_name(name: str) -> str:
    if name.startswith("features/"):
        return "/features/<layer>"
    if name.startswith("augmented/") and name != "augmented/source_index":
        return "/augmented/<layer>"
    return "/" + name


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A real extraction (three kinds of layer, one failed image) and a file made from arrays."""
    tmp = tmp_path_factory.mktemp("docs")
    images = make_images(tmp / "images", classes=3, per_class=4)
    (images / "class_1" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    extracted = extract(ExtractConfig(images, tmp / "features.h5", model=TINY_MODEL, weights="random",
                                      layers=("pooled", "logits", "layer2"), augment=2, tta="flip")).output
    rng = np.random.default_rng(0)
    arrays = store.write_arrays(tmp / "arrays.h5", rng.normal(size=(6, 4)), np.arange(6) % 2, ["a", "b"])
    return {"extracted": extracted, "arrays": arrays}


@pytest.fixture(scope="module")
def doc() -> dict[str, str]:
    return sections(DOC.read_text(encoding="utf-8"))


@pytest.mark.parametrize("kind", ["extracted", "arrays"])
def test_everything_written_is_specified(files, doc, kind):
    missing = []
    with h5py.File(files[kind], "r") as f:
        root = table(doc["/"])
        for key, value in f.attrs.items():
            if root.get(key, "").split(" ")[0] != type_name(value):
                missing.append(f"root attribute {key!r} ({type_name(value)}): documented as {root.get(key)!r}")

        def check(name: str, obj) -> None:
            if isinstance(obj, h5py.Group):
                if f"/{name}/" not in doc["Layout"]:
                    missing.append(f"group /{name} not in the layout")
                return
            where = documented_name(name)
            if where not in doc:
                missing.append(f"dataset /{name}: no section {where!r}")
                return
            if f"`{type_name(obj.dtype)}`" not in doc[where]:
                missing.append(f"dataset /{name}: type {type_name(obj.dtype)} not in its section")
            attrs = table(doc[where])
            for key, value in obj.attrs.items():
                if attrs.get(key) != type_name(value):
                    missing.append(f"attribute {key!r} of /{name} ({type_name(value)}): documented as {attrs.get(key)!r}")

        f.visititems(check)
    assert not missing, "docs/feature-file.md is missing:\n" + "\n".join(missing)


def test_everything_specified_is_written(files, doc):
    with h5py.File(files["extracted"], "r") as f:
        attrs = dict(f.attrs)
        written = {documented_name(name) for name in _datasets(f)}
        layer_attrs = set(f["features/layer2"].attrs)
        view_attrs = set(f["augmented/layer2"].attrs)
    assert set(table(doc["/"])) == set(attrs)
    specified = {key for key in doc if key.startswith("/") and key != "/"}
    assert specified == written
    assert set(table(doc["/features/<layer>"])) == layer_attrs
    assert set(table(doc["/augmented/<layer>"])) == view_attrs
    assert set(table(doc["config"])) == set(json.loads(attrs["config"]))
    assert set(table(doc["request"])) == set(json.loads(attrs["request"]))
    assert set(table(doc["data_config"])) == set(json.loads(attrs["data_config"]))


def _datasets(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def test_invalid_rows_are_as_specified(files):
    with h5py.File(files["extracted"], "r") as f:
        valid = f["samples/valid"][:]
        assert list(f["errors/index"][:]) == list(np.flatnonzero(~valid)) and (~valid).sum() == 1
        for name in f["features"]:
            X = f["features"][name][:]
            assert np.isnan(X[~valid]).all() and not np.isnan(X[valid]).any()
        paths = f["samples/path"].asstr()[:]
        assert list(f["errors/path"].asstr()[:]) == list(paths[~valid])


def test_h5py_example_runs(files, tmp_path, monkeypatch):
    text = DOC.read_text(encoding="utf-8")
    example = re.search(r"## Reading a file with h5py\s+```python\n(.*?)```", text, re.S).group(1)
    assert len(example.strip().splitlines()) <= 12
    (tmp_path / "features.h5").symlink_to(files["extracted"])
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(example, str(DOC), "exec"), {})
    assert out.getvalue().startswith("(12, 96) ")
