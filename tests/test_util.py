"""The shared helpers (featpipe/_util.py) and the one answer to "is this a URL?"."""
from __future__ import annotations

import hashlib

import pytest

from featpipe import _util, remote
from featpipe.extraction.parts import PartStore


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with _util.atomic_write(path) as tmp:
        tmp.write_text("new")
        assert path.read_text() == "old"  # not yet
        assert _util.is_temporary(tmp.name)
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(RuntimeError), _util.atomic_write(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_the_clean_up_recognises_every_temporary_name(tmp_path):
    path = tmp_path / "features.h5"
    stale = tmp_path / _util.temporary_name(path.name)  # as a killed writer leaves it
    stale.write_text("half")
    other = tmp_path / _util.temporary_name("other.h5")
    other.write_text("someone else's")
    _util.remove_temporaries(path)
    assert not stale.exists() and other.exists()
    assert not _util.is_temporary("features.h5") and not _util.is_temporary("part-000001-ab.h5")


def test_sha256_file(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"x" * (3 << 20))  # more than one block
    assert _util.sha256_file(path) == hashlib.sha256(b"x" * (3 << 20)).hexdigest()


def test_cpu_cores_follow_the_cgroup_quota(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("100000 100000\n")
    monkeypatch.setattr(_util, "CGROUP", tmp_path)
    assert _util.cpu_cores() == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _util.cpu_cores() >= 1


def test_available_memory_follows_the_cgroup_limit(tmp_path, monkeypatch):
    (tmp_path / "memory.max").write_text("1000000\n")
    (tmp_path / "memory.current").write_text("400000\n")
    monkeypatch.setattr(_util, "CGROUP", tmp_path)
    assert _util.available_memory() == 600000


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _util.cache_dir("guide") == tmp_path / "featpipe" / "guide"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert _util.cache_dir().parts[-2:] == (".cache", "featpipe")


@pytest.mark.parametrize(("location", "url"), [
    ("s3://bucket/x.jpg", True), ("https://host/x.jpg", True), ("memory://parts", True),
    ("file:///data/x.jpg", False), ("/data/x.jpg", False), ("data/x.jpg", False),
])
def test_is_url_file_urls_are_local_paths(location, url):
    """One answer everywhere: a file:// URL is a local path, read without fsspec."""
    assert remote.is_url(location) is url


def test_a_file_url_part_folder_is_a_local_folder(tmp_path):
    store = PartStore(f"file://{tmp_path}/parts")
    assert store.local == tmp_path / "parts"
    store.makedirs()
    store.write_text("manifest.json", "{}")
    assert (tmp_path / "parts" / "manifest.json").read_text() == "{}"
