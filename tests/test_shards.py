"""WebDataset tar shards: brace patterns, labels, broken shards, features equal to a folder's, resume per shard."""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featpipe
from featpipe import ExtractConfig, extract
from featpipe.errors import UsageError
from featpipe.extraction import parts
from featpipe.extraction import shards as tar_shards
from featpipe.extraction.sources import discover

from .conftest import TINY_MODEL, make_images

MTIME = 1_700_000_000


def add_member(t: tarfile.TarFile, name: str, data: bytes, mtime: int = MTIME) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime = len(data), mtime
    t.addfile(info, io.BytesIO(data))


def make_shards(images: Path, out: Path, per_shard: int = 4) -> list[tuple[str, str]]:
    """The ImageFolder ``images`` as WebDataset shards 00000.tar ... with .cls (class index), .txt (class name)
    and .json ({"name": class name}) members. Returns (row path in the shards, path in the folder) pairs."""
    out.mkdir(parents=True, exist_ok=True)
    classes = sorted(p.name for p in images.iterdir() if p.is_dir())
    files = sorted((p for p in images.rglob("*") if p.is_file()), key=lambda p: p.relative_to(images).as_posix())
    rows = []
    for s in range(0, len(files), per_shard):
        shard = f"{s // per_shard:05d}.tar"
        with tarfile.open(out / shard, "w") as t:
            for k, p in enumerate(files[s:s + per_shard]):
                key = f"sample{s + k:06d}"
                name = p.parent.name
                add_member(t, f"{key}{p.suffix}", p.read_bytes())
                add_member(t, f"{key}.cls", str(classes.index(name)).encode())
                add_member(t, f"{key}.txt", name.encode())
                add_member(t, f"{key}.json", json.dumps({"name": name, "n": k}).encode())
                rows.append((f"{shard}/{key}{p.suffix}", p.relative_to(images).as_posix()))
    return rows


def jpeg(size: tuple[int, int] = (64, 48), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


# --- no network needed -------------------------------------------------------------------------


def test_brace_patterns_expand_like_webdataset():
    assert tar_shards.expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert tar_shards.expand_braces("s/{8..11}.tar") == ["s/8.tar", "s/9.tar", "s/10.tar", "s/11.tar"]
    assert tar_shards.expand_braces("{a,b}/{0..1}.tar") == ["a/0.tar", "a/1.tar", "b/0.tar", "b/1.tar"]
    assert tar_shards.expand_braces("s3://b/x.tar") == ["s3://b/x.tar"]
    assert tar_shards.split_key("dir/abc.seg.JPG") == ("dir/abc", "seg.jpg")
    assert tar_shards.split_key("dir/.hidden")[0] is None


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    images = make_images(root / "images", classes=3, per_class=4)
    rows = make_shards(images, root / "shards")
    return root, images, rows


def test_shards_list_in_order_with_labels_from_cls_txt_or_json(shard_set):
    root, images, rows = shard_set
    folder = discover(images)
    pattern = str(root / "shards" / "{00000..00002}.tar")
    for key in (None, ".cls", ".txt", "name"):
        s = discover(pattern, label_key=key)
        assert s.paths == tuple(r for r, _ in rows)
        assert s.root == (root / "shards").resolve()
        names = [s.classes[k] for k in s.labels]
        want = [str(folder.classes.index(f.split("/")[0])) if key in (None, ".cls") else f.split("/")[0]
                for _, f in rows]
        assert names == want
    assert discover(pattern, label_key="n").classes == ("0", "1", "2", "3")  # ints, in numeric order
    with pytest.raises(UsageError, match="ExtractConfig.label_key 'missing': no sample"):
        discover(pattern, label_key="missing")
    with pytest.raises(UsageError, match="shards do not exist"):
        discover(str(root / "shards" / "{00000..00009}.tar"))


def _broken_shards(folder: Path) -> Path:
    """good.tar is fine; cut-*.tar are truncated inside a member, inside a header and at a member's end
    (no end-of-archive blocks); corrupt.tar has a damaged header mid-archive; notatar.tar is a JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for k in range(3):
            add_member(t, f"s{k}.jpg", jpeg(seed=k))
            add_member(t, f"s{k}.cls", b"1")
    data = buf.getvalue()
    (folder / "good.tar").write_bytes(data)
    offsets = []
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        offsets = [(m.name, m.offset, m.offset_data, m.size) for m in t.getmembers()]
    s1_jpg = next(o for o in offsets if o[0] == "s1.jpg")
    s2_jpg = next(o for o in offsets if o[0] == "s2.jpg")
    (folder / "cut-member.tar").write_bytes(data[:s1_jpg[2] + 100])
    (folder / "cut-header.tar").write_bytes(data[:s1_jpg[1] + 200])
    (folder / "cut-end.tar").write_bytes(data[:s2_jpg[1]])
    damaged = bytearray(data)
    damaged[s1_jpg[1] + 10:s1_jpg[1] + 20] = b"\xff" * 10  # in the name field: the checksum fails
    (folder / "corrupt.tar").write_bytes(bytes(damaged))
    (folder / "notatar.tar").write_bytes(jpeg())
    return folder


def test_broken_shards_list_what_they_can_and_fail_the_rest(tmp_path):
    folder = _broken_shards(tmp_path / "broken")
    good = tar_shards.list_shard(str(folder / "good.tar"))
    assert [m.name for m in good.members] == ["s0.jpg", "s1.jpg", "s2.jpg"] and good.broken is None
    assert [m.label for m in good.members] == ["1", "1", "1"]
    for name, kept, word in [("cut-member", 1, "truncated"), ("cut-header", 1, "truncated"),
                             ("cut-end", 2, "truncated"), ("corrupt", 1, "corrupt"), ("notatar", 0, "corrupt")]:
        listing = tar_shards.list_shard(str(folder / f"{name}.tar"))
        if listing.broken_in_member:  # the cut member is listed: its row carries the error
            assert listing.members[-1].sha256 == "" and listing.members[-1].name == "s1.jpg"
            listing.members.pop()
        assert len(listing.members) == kept, name
        assert word in listing.broken, (name, listing.broken)
        assert listing.broken_in_member == (name == "cut-member")
        got = dict(tar_shards.read_members(str(folder / f"{name}.tar"), None,
                                           [m.name for m in listing.members] + [None]))
        assert all(isinstance(got[i], bytes) for i in range(kept)), name
        assert word in got[kept], (name, got[kept])

    # Read again later, a member the listing saw but the shard no longer has fails as missing.
    got = dict(tar_shards.read_members(str(folder / "good.tar"), None, ["s1.jpg", "gone.jpg", "s0.jpg"]))
    assert isinstance(got[0], bytes) and isinstance(got[2], bytes) and "missing" in got[1]


def test_shard_identity_follows_the_shard_file(shard_set, tmp_path):
    root, _, _ = shard_set
    shard = tmp_path / "00000.tar"
    shard.write_bytes((root / "shards" / "00000.tar").read_bytes())
    before = discover(str(shard)).image_stats()
    again = discover(str(shard)).image_stats()
    np.testing.assert_array_equal(before["version"], again["version"])
    with tarfile.open(shard, "a") as t:  # a sample appended: the shard is another file now
        add_member(t, "extra.jpg", jpeg())
    after = discover(str(shard)).image_stats(verify_content=True)
    assert (after["version"][:4] != before["version"]).all()
    assert after["sha256"][0] and after["size"][0] == before["size"][0]


# --- extraction -------------------------------------------------------------------------------


def _by_folder_path(fs, rows):
    index = {p: i for i, p in enumerate(fs.paths)}
    return np.asarray([index[f] for _, f in rows])


def test_shards_give_the_folders_features_and_bad_members_fail_alone(shard_set, tmp_path):
    root, images, rows = shard_set
    bad = tmp_path / "bad"
    bad.mkdir()
    big = io.BytesIO()
    Image.new("RGB", (200, 200), "red").save(big, "PNG")  # 40,000 pixels: over this test's limit
    with tarfile.open(bad / "00003.tar", "w") as t:
        add_member(t, "x0.jpg", jpeg(seed=5)[:300])  # a corrupt member: a JPEG cut short
        add_member(t, "x1.png", big.getvalue())  # a decompression bomb, for this test's limit
        add_member(t, "x2.jpg", jpeg())
        add_member(t, "x3.jpg", jpeg(seed=3))
    with tarfile.open(bad / "00003.tar") as t:
        cut = t.getmember("x3.jpg").offset_data + 100
    (bad / "00003.tar").write_bytes((bad / "00003.tar").read_bytes()[:cut])  # cut inside x3's bytes
    for k in range(3):
        (bad / f"{k:05d}.tar").symlink_to(root / "shards" / f"{k:05d}.tar")

    cfg = dict(model=TINY_MODEL, weights="random", max_pixels=20_000, batch_size=4)
    folder = extract(ExtractConfig(input=images, output=tmp_path / "folder.h5", **cfg))
    shards = extract(ExtractConfig(input=str(bad / "{00000..00003}.tar"), output=tmp_path / "shards.h5", **cfg))
    a, b = featpipe.load(folder.output), featpipe.load(shards.output)
    assert b.paths[:len(rows)] == [r for r, _ in rows]
    assert b.paths[len(rows):] == ["00003.tar/x0.jpg", "00003.tar/x1.png", "00003.tar/x2.jpg", "00003.tar/x3.jpg"]
    order = _by_folder_path(a, rows)
    np.testing.assert_allclose(b.X()[:len(rows)], a.X()[order], rtol=1e-5, atol=1e-6)  # same bytes, same features
    assert b.valid.tolist() == [True] * len(rows) + [False, False, True, False]
    reasons = dict(zip(b.errors["path"], b.errors["reason"], strict=True))
    assert "truncated file" in reasons["00003.tar/x0.jpg"]  # the member's own bytes: an error row, as for a file
    assert "decompression bomb" in reasons["00003.tar/x1.png"]
    assert "truncated shard" in reasons["00003.tar/x3.jpg"]
    assert [b.classes[k] for k in b.y[:len(rows)]] == [str(a.y[i]) for i in order]  # .cls holds the class index


def test_resume_runs_only_unfinished_shards_and_updates_only_changed_ones(shard_set, tmp_path, monkeypatch):
    root, images, rows = shard_set
    shards = tmp_path / "shards"
    shards.mkdir()
    for k in range(3):
        (shards / f"{k:05d}.tar").write_bytes((root / "shards" / f"{k:05d}.tar").read_bytes())
    cfg = ExtractConfig(input=str(shards / "{00000..00002}.tar"), output=tmp_path / "f.h5", model=TINY_MODEL,
                        weights="random", batch_size=2, streams=1)
    real_write = parts.write_part
    written = []

    def write_then_die(*args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt  # the client dies after two finished shards
        written.append(real_write(*args, **kwargs))
        return written[-1]

    monkeypatch.setattr(parts, "write_part", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        extract(cfg)
    monkeypatch.setattr(parts, "write_part", real_write)
    assert len(list((tmp_path / "f.h5.parts").glob("part-*.h5"))) == 2
    resumed = extract(cfg)
    assert resumed.resumed_partitions == 2 and resumed.computed == 4  # one shard of four images: the third

    # Rewrite one shard: its rows are computed again, the others come from the file.
    data = (shards / "00001.tar").read_bytes()
    (shards / "00001.tar").write_bytes(data)  # same bytes, new modification time: another shard file
    updated = extract(cfg)
    assert updated.computed == 4 and updated.changes["unchanged"] == 8
    assert extract(cfg).already_complete
    fs = featpipe.load(cfg.output)
    assert fs.paths == [r for r, _ in rows] and fs.valid.all()
    assert fs.meta["image_root"] == str(shards.resolve())


def test_commands_that_open_files_themselves_refuse_shards_in_one_line(shard_set):
    root, images, _ = shard_set
    assert discover(images).files("guide")[0].is_file()
    with pytest.raises(UsageError, match="guide reads local image files; .* `featpipe extract` only"):
        discover(str(root / "shards" / "{00000..00002}.tar")).files("guide")


def test_unchanged_shards_are_not_read_again(shard_set, tmp_path, monkeypatch):
    root, _, _ = shard_set
    for k in range(3):
        (tmp_path / f"{k:05d}.tar").write_bytes((root / "shards" / f"{k:05d}.tar").read_bytes())
    pattern, cache = str(tmp_path / "{00000..00002}.tar"), tmp_path / "f.h5.shards.json"
    read = []
    real = tar_shards._walk

    def spy(location, *args):
        read.append(Path(location).name)
        return real(location, *args)

    monkeypatch.setattr(tar_shards, "_walk", spy)
    first = discover(pattern, listings=cache)
    assert sorted(read) == ["00000.tar", "00001.tar", "00002.tar"] and cache.is_file()
    read.clear()
    again = discover(pattern, listings=cache)
    assert read == []  # one stat per shard, no read
    assert again.paths == first.paths and again.classes == first.classes
    np.testing.assert_array_equal(again.labels, first.labels)
    for key, value in first.image_stats(verify_content=True).items():
        np.testing.assert_array_equal(again.image_stats(verify_content=True)[key], value)
    st = (tmp_path / "00001.tar").stat()
    os.utime(tmp_path / "00001.tar", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    discover(pattern, listings=cache)
    assert read == ["00001.tar"]  # only the shard that changed
    read.clear()
    assert discover(pattern, label_key=".txt", listings=cache).classes == ("class_0", "class_1", "class_2")
    assert len(read) == 3  # labels from another member: every shard is read again


def test_a_shard_read_by_many_decode_threads_gives_each_its_own_member(shard_set):
    """GPU decoding asks for a partition's rows from a pool of threads, in any order; the shard is still
    streamed once, and each row gets its own member's bytes."""
    from concurrent.futures import ThreadPoolExecutor

    from featpipe.extraction.inputs import open_partition

    root, _, _ = shard_set
    shard = str(root / "shards" / "00001.tar")
    names = [m.name for m in tar_shards.list_shard(shard).members]
    with tarfile.open(shard) as t:
        want = {name: t.extractfile(name).read() for name in names}
    read = open_partition(str(root / "shards"), tuple(names), shard, {})
    order = [3, 0, 2, 1]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda i: (i, read(i).read()), order))
    read.close()
    assert all(data == want[names[i]] for i, data in got) and len(got) == 4
