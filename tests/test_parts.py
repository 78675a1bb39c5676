"""Parts (featpipe/extraction/parts.py) and --shard-dir: parts in a folder or an fsspec URL of the user's choosing;
resume, "already complete", and a part cut short under its final name (a store without atomic uploads)."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

import featpipe
from featpipe import ExtractConfig, extract
from featpipe.extraction.parts import PartStore

from .conftest import make_images


def shard_dir(kind: str, tmp_path) -> tuple[str, PartStore]:
    """A --shard-dir of each kind, and a view of it for the test to look inside."""
    if kind == "path":
        location = str(tmp_path / "elsewhere" / "shards")  # not the output's folder
    elif kind == "file-url":
        location = (tmp_path / "shards").as_uri()
    else:  # an fsspec store without renames (the in-process workers share its memory)
        location = f"memory://featpipe-{uuid.uuid4().hex}/shards"
    return location, PartStore(location)


def partial_run(tmp_path, **kw):
    """A run stopped by --max-failures (the broken image sorts first), leaving finished shards behind."""
    images = make_images(tmp_path / "images", classes=2, per_class=4)
    bad = images / "class_0" / "aa.jpg"
    bad.write_bytes(b"")
    out = tmp_path / "out" / "features.h5"
    out.parent.mkdir()
    cfg = ExtractConfig(images, out, model="test_resnet", weights="random", partition_size=2, streams=1, **kw)
    with pytest.raises(featpipe.FeatpipeError, match="max-failures"):
        extract(ExtractConfig(**{**cfg.__dict__, "max_failures": 0}))
    return images, bad, cfg


def kept_shards(location: str) -> dict[str, int]:
    """The finished shards in the run's folder under ``location``, with their rows."""
    (folder,) = PartStore(location).names()  # one folder per output, named after it
    assert folder.startswith("features.h5-") and folder.endswith(".parts")
    store = PartStore(f"{location}/{folder}")
    kept = {}
    for name in sorted(n for n in store.names() if n.startswith("part-")):
        with store.open_h5(name) as f:
            kept[name] = int(f.attrs["rows"])
    assert kept, "the partition with the broken image finished first"
    return kept


@pytest.mark.parametrize("kind", ["path", "file-url", "memory"])
def test_shard_dir_holds_the_partial_run_and_resume_uses_it(tmp_path, kind):
    location, root = shard_dir(kind, tmp_path)
    images, bad, cfg = partial_run(tmp_path, shard_dir=location)
    assert not (cfg.output.parent / "features.h5.parts").exists(), "nothing next to the output"
    kept = kept_shards(location)

    resumed = extract(cfg)
    assert resumed.resumed_partitions == len(kept) and resumed.computed == 9 - sum(kept.values())
    assert resumed.failed == 1
    assert root.names() == [], "the run's shards are removed once the file is merged"
    again = extract(cfg)
    assert again.already_complete

    default = extract(ExtractConfig(images, tmp_path / "default.h5", model="test_resnet", weights="random"))
    a, b = featpipe.load(cfg.output), featpipe.load(default.output)
    assert a.paths == b.paths
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_allclose(a.X(), b.X(), rtol=1e-5, atol=1e-6)


def test_a_shard_cut_short_under_its_final_name_is_computed_again(tmp_path):
    """Where uploads are not atomic a shard can be truncated under its final name: HDF5 refuses it, and the
    next run computes its rows again instead of failing or trusting it."""
    location = str(tmp_path / "shards")
    images, bad, cfg = partial_run(tmp_path, shard_dir=location)
    kept = kept_shards(location)
    (folder,) = PartStore(location).names()
    first = tmp_path / "shards" / folder / next(iter(kept))
    first.write_bytes(first.read_bytes()[: first.stat().st_size // 2])
    resumed = extract(cfg)
    assert resumed.resumed_partitions == len(kept) - 1
    assert resumed.computed == 9 - sum(kept.values()) + kept[first.name] and resumed.failed == 1
    clean = extract(ExtractConfig(images, tmp_path / "clean.h5", model="test_resnet", weights="random"))
    np.testing.assert_allclose(featpipe.load(cfg.output).X(), featpipe.load(clean.output).X(), rtol=1e-5, atol=1e-6)


def test_shard_dir_that_is_a_file_is_refused(tmp_path):
    images = make_images(tmp_path / "images", classes=1, per_class=1)
    (tmp_path / "taken").write_text("")
    with pytest.raises(featpipe.errors.UsageError, match=r"ExtractConfig\.shard_dir .* is a file"):
        extract(ExtractConfig(images, tmp_path / "f.h5", model="test_resnet", weights="random",
                              shard_dir=str(tmp_path / "taken")))


def test_store_publishes_whole_files_only(tmp_path):
    """The store's one promise, for a local folder and for a store without renames."""
    for location in (str(tmp_path / "local"), f"memory://featpipe-{uuid.uuid4().hex}"):
        store = PartStore(location)
        store.makedirs()
        with pytest.raises(RuntimeError), store.writing("a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
        assert store.names() == []
        store.write_text("a.txt", "whole")
        assert store.names() == ["a.txt"] and store.read_text("a.txt") == "whole"
        store.remove()
        assert not store.exists() and store.names() == []


@pytest.fixture
def s3_bucket(monkeypatch):
    """s3://featpipe-shards on moto's S3 server on a free loopback port (a test dependency; skipped without it)."""
    s3fs = pytest.importorskip("s3fs")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir("featpipe-shards")
        yield "s3://featpipe-shards/runs"
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()


def s3fs_exists(path: str) -> bool:
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True).exists(path)


def test_shard_dir_on_s3(tmp_path, s3_bucket):
    """The same partial run and resume with the shards in a bucket, through a real S3 API (no renames there)."""
    images, bad, cfg = partial_run(tmp_path, shard_dir=s3_bucket)
    kept = kept_shards(s3_bucket)
    resumed = extract(cfg)
    assert resumed.resumed_partitions == len(kept) and resumed.computed == 9 - sum(kept.values())
    assert PartStore(s3_bucket).names() == [] and extract(cfg).already_complete
    clean = extract(ExtractConfig(images, tmp_path / "clean.h5", model="test_resnet", weights="random"))
    np.testing.assert_allclose(featpipe.load(cfg.output).X(), featpipe.load(clean.output).X(), rtol=1e-5, atol=1e-6)
    with pytest.raises(featpipe.errors.UsageError, match="'no-such-bucket' does not exist"):
        extract(ExtractConfig(images, tmp_path / "nowhere.h5", model="test_resnet", weights="random",
                              shard_dir="s3://no-such-bucket/x"))
    assert not s3fs_exists("no-such-bucket"), "no bucket is made by mistake"
