"""discover: ImageFolder trees, flat folders and CSV lists become ordered sample lists."""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featpipe.errors import UsageError
from featpipe.extraction.samples import SampleList
from featpipe.extraction.sources import discover


def _img(path: Path, colour=(120, 60, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".gif": "GIF", ".bmp": "BMP"}[path.suffix.lower()]
    Image.new("RGB", (8, 8), colour).save(path, fmt)
    return path


def _text(path: Path, text: str = "hello\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- ImageFolder


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    # classes created out of order on purpose
    _img(root / "zebra" / "b.png")
    _img(root / "zebra" / "a.jpg")
    _img(root / "cat" / "c2.png")
    _img(root / "cat" / "c1.JPEG")  # upper-case extension still an image
    _img(root / "cat" / "deep" / "inner" / "n.png")  # nested folder inside a class
    _text(root / "cat" / "notes.txt")  # not an image
    _text(root / "cat" / "labels.csv", "path\n")  # not an image either
    _img(root / "cat" / ".hidden.png")  # hidden file
    _img(root / "cat" / ".cache" / "h.png")  # hidden folder inside a class
    _img(root / ".git" / "x.png")  # hidden top-level folder is not a class
    (root / "empty_class").mkdir()
    _text(root / "only_text" / "readme.txt")  # folder without images is not a class
    _text(root / "README.md")  # non-image file next to the class folders is fine
    return root


def test_imagefolder_classes_labels_paths(tree: Path) -> None:
    s = discover(tree)
    assert isinstance(s, SampleList)
    assert s.classes == ("cat", "zebra")
    assert s.root == tree.resolve()
    assert set(s.paths) == {
        "cat/c1.JPEG",
        "cat/c2.png",
        "cat/deep/inner/n.png",
        "zebra/a.jpg",
        "zebra/b.png",
    }
    assert len(s) == 5
    assert s.labels.dtype == np.int64
    assert s.labels.shape == (5,)
    for path, label in zip(s.paths, s.labels.tolist(), strict=True):
        assert s.classes[label] == path.split("/")[0], (path, label)
    # class order, then sorted within a class folder
    assert s.paths[:2] == ("cat/c1.JPEG", "cat/c2.png")
    assert s.paths[3:] == ("zebra/a.jpg", "zebra/b.png")
    assert s.labels.tolist() == [0, 0, 0, 1, 1]


def test_imagefolder_paths_relative_posix_and_exist(tree: Path) -> None:
    s = discover(tree)
    for p in s.paths:
        assert "\\" not in p
        assert not Path(p).is_absolute()
        assert not p.startswith(".")
        assert (s.root / p).is_file()


def test_imagefolder_ignores_hidden_nonimage_and_empty(tree: Path) -> None:
    s = discover(tree)
    assert not any(".hidden" in p or ".cache" in p or ".git" in p for p in s.paths)
    assert not any(p.endswith((".txt", ".csv", ".md")) for p in s.paths)
    assert "empty_class" not in s.classes
    assert "only_text" not in s.classes
    assert ".git" not in s.classes


def test_imagefolder_order_is_sorted_not_creation_order(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for name in ["m.png", "a.png", "z.png", "b.png"]:
        _img(root / "k" / name)
    for name in ["y.png", "c.png"]:
        _img(root / "b" / name)
    s = discover(root)
    assert s.classes == ("b", "k")
    assert s.paths == ("b/c.png", "b/y.png", "k/a.png", "k/b.png", "k/m.png", "k/z.png")
    assert list(s.paths) == sorted(s.paths)


def test_imagefolder_is_deterministic(tree: Path) -> None:
    a, b = discover(tree), discover(tree)
    assert a.paths == b.paths
    assert a.classes == b.classes
    assert np.array_equal(a.labels, b.labels)


# ---------------------------------------------------------------- flat folder


def test_flat_folder_unlabelled(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    for name in ["b.png", "a.jpg", "c.gif"]:
        _img(root / name)
    _text(root / "notes.txt")
    _img(root / ".hidden.png")
    s = discover(root)
    assert s.paths == ("a.jpg", "b.png", "c.gif")
    assert s.classes == ()
    assert s.labels.dtype == np.int64
    assert s.labels.tolist() == [-1, -1, -1]


def test_accepts_str_and_pathlike(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    _img(root / "a.png")
    assert discover(str(root)).paths == discover(root).paths == ("a.png",)


# ---------------------------------------------------------------- CSV


def test_csv_path_label(tmp_path: Path) -> None:
    folder = tmp_path / "lists"
    _img(folder / "imgs" / "one.png")
    _img(folder / "imgs" / "two.jpg")
    _img(folder / "three.png")
    absolute = _img(folder / "abs" / "four.png").resolve()
    csv_path = _text(
        folder / "list.csv",
        "path,label\n"
        "imgs/one.png,dog\n"
        "imgs/two.jpg,cat\n"
        "\n"  # blank line skipped
        "three.png,dog\n"
        f"{absolute},bird\n",
    )
    s = discover(csv_path)
    assert s.root == folder.resolve()
    assert s.classes == ("bird", "cat", "dog")
    # CSV order kept; absolute path inside the CSV's folder becomes relative
    assert s.paths == ("imgs/one.png", "imgs/two.jpg", "three.png", "abs/four.png")
    assert s.labels.dtype == np.int64
    assert s.labels.tolist() == [2, 1, 2, 0]
    for p in s.paths:  # relative paths resolve against the CSV's folder
        assert (s.root / p).is_file(), p


def test_csv_from_another_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "lists"
    _img(folder / "one.png")
    _text(folder / "list.csv", "path,label\none.png,a\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    s = discover(Path("..") / "lists" / "list.csv")
    assert s.root == folder.resolve()
    assert (s.root / s.paths[0]).is_file()


def test_csv_missing_label_gives_minus_one(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    _img(tmp_path / "c.png")
    csv_path = _text(tmp_path / "l.csv", "path,label\na.png,x\nb.png,\nc.png,  \n")
    s = discover(csv_path)
    assert s.classes == ("x",)
    assert s.labels.tolist() == [0, -1, -1]


def test_csv_header_case_column_order_and_bom(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    csv_path = tmp_path / "l.csv"
    csv_path.write_text("\ufeffLabel, Path\nq,a.png\np,b.png\n", encoding="utf-8")
    s = discover(csv_path)
    assert s.paths == ("a.png", "b.png")
    assert s.classes == ("p", "q")
    assert s.labels.tolist() == [1, 0]


def test_csv_path_only(tmp_path: Path) -> None:
    _img(tmp_path / "sub" / "a.png")
    _img(tmp_path / "b.png")
    csv_path = _text(tmp_path / "l.csv", "path\nsub/a.png\nb.png\n")
    s = discover(csv_path)
    assert s.paths == ("sub/a.png", "b.png")
    assert s.classes == ()
    assert s.labels.tolist() == [-1, -1]


# ---------------------------------------------------------------- errors


def _usage(source, *words: str) -> str:
    with pytest.raises(UsageError) as info:
        discover(source)
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)
    return msg


def test_missing_input(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    _usage(missing, "does not exist", str(missing))


def test_empty_folder(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    _usage(root, "no images")


def test_folder_without_images(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _text(root / "a.txt")
    (root / "empty_class").mkdir()
    _usage(root, "no images")


def test_folder_mixing_images_and_subfolders(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    _img(root / "loose.png")
    _img(root / "cls" / "a.png")
    _usage(root, "mixes images", "loose.png", "cls")


def test_csv_without_path_column(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    csv_path = _text(tmp_path / "l.csv", "file,label\na.png,x\n")
    _usage(csv_path, "'path' column")


def test_empty_csv(tmp_path: Path) -> None:
    csv_path = _text(tmp_path / "l.csv", "")
    _usage(csv_path, "empty")


def test_csv_header_only_holds_no_images(tmp_path: Path) -> None:
    csv_path = _text(tmp_path / "l.csv", "path,label\n")
    _usage(csv_path, "no images")


def test_neither_folder_nor_csv(tmp_path: Path) -> None:
    path = _text(tmp_path / "list.txt", "a.png\n")
    _usage(path, "neither a folder nor a .csv")
    image = _img(tmp_path / "single.png")
    _usage(image, "neither a folder nor a .csv")


def test_usage_error_exit_code() -> None:
    assert UsageError.exit_code == 2
    assert issubclass(UsageError, ValueError)


# ---------------------------------------------------------------- digest


def test_digest_stable_and_sensitive(tree: Path) -> None:
    d1 = discover(tree).digest()
    d2 = discover(tree).digest()
    assert d1 == d2
    assert len(d1) == 64 and int(d1, 16) >= 0
    _img(tree / "zebra" / "c.png")
    d3 = discover(tree).digest()
    assert d3 != d1
    assert discover(tree).digest() == d3


def test_digest_sensitive_to_labels(tmp_path: Path) -> None:
    _img(tmp_path / "a.png")
    one = _text(tmp_path / "one.csv", "path,label\na.png,x\n")
    two = _text(tmp_path / "two.csv", "path,label\na.png,y\n")
    three = _text(tmp_path / "three.csv", "path\na.png\n")
    digests = {discover(p).digest() for p in (one, two, three)}
    assert len(digests) == 3


def test_a_missing_cloud_package_names_the_extra(monkeypatch, tmp_path):
    from featpipe import remote

    registry = importlib.import_module("fsspec.registry")
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if s3fs were not installed
    for name in ("s3", "s3a"):
        monkeypatch.delitem(registry._registry, name, raising=False)  # nor imported before
    with pytest.raises(UsageError, match=r"needs s3fs: pip install 'featpipe\[cloud\]'"):
        discover("s3://bucket/images")
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "l.parquet").write_bytes(b"PAR1")
    with pytest.raises(UsageError, match=r"needs pyarrow: pip install 'featpipe\[cloud\]'"):
        discover(tmp_path / "l.parquet")
    assert remote.local_path("file:///data/a%20b.jpg") == "/data/a b.jpg"


def test_file_urls_are_local_paths(image_folder, tmp_path):
    by_url = discover(f"file://{image_folder}")
    assert by_url.paths == discover(image_folder).paths and by_url.root == image_folder.resolve()
    (tmp_path / "l.csv").write_text(f"path,label\nfile://{image_folder}/class_0/img_000.jpg,a\n")
    listed = discover(tmp_path / "l.csv")
    assert listed.paths == ("images/class_0/img_000.jpg",)


def test_parquet_list_like_a_csv(image_folder, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    files = sorted(p.relative_to(tmp_path).as_posix() for p in image_folder.rglob("*.jpg"))
    labels = [int(f.split("/")[1][-1]) * 5 for f in files]  # 0, 5, 10: numeric classes in numeric order
    pq.write_table(pa.table({"PATH": files, "Label": labels}), tmp_path / "l.parquet", row_group_size=2)
    s = discover(tmp_path / "l.parquet")
    assert s.paths == tuple(files) and s.root == tmp_path.resolve() and s.classes == ("0", "5", "10")
    assert [s.classes[k] for k in s.labels] == [str(x) for x in labels]
    pq.write_table(pa.table({"file": files}), tmp_path / "bad.parquet")
    with pytest.raises(UsageError, match="needs a 'path' column"):
        discover(tmp_path / "bad.parquet")
