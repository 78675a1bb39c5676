"""One identity for images (issue 8, findings 1-3): changed images are seen, a finished file grows in place,
and resume keeps every finished partition, failures included."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import featpipe
from featpipe import ExtractConfig, extract
from featpipe.errors import RunConflictError

from .conftest import make_images


def config(images, out, **kw) -> ExtractConfig:
    return ExtractConfig(images, out, model="test_resnet", weights="random", **kw)


def rows(fs) -> dict[str, np.ndarray]:
    return dict(zip(fs.paths, fs.X(), strict=True))


def test_an_image_replaced_under_its_name_is_computed_again(tmp_path):
    """Finding 1: the digest covered paths and labels only, so a replaced image kept its stale features."""
    images = make_images(tmp_path / "images", classes=2, per_class=3)
    out = tmp_path / "f.h5"
    extract(config(images, out))
    before = rows(featpipe.load(out))
    target = images / "class_0" / "img_000.jpg"
    shutil.copy(images / "class_1" / "img_002.jpg", target)  # other content, same name
    again = extract(config(images, out))
    assert not again.already_complete and again.computed == 1
    assert again.changes == {"unchanged": 5, "added": 0, "changed": 1, "removed": 0, "retried": 0}
    after = rows(featpipe.load(out))
    assert not np.allclose(after["class_0/img_000.jpg"], before["class_0/img_000.jpg"])
    np.testing.assert_allclose(after["class_0/img_000.jpg"], after["class_1/img_002.jpg"], rtol=1e-5, atol=1e-6)
    for path in before:
        if path != "class_0/img_000.jpg":
            np.testing.assert_array_equal(after[path], before[path])  # kept, not recomputed


def test_verify_content_sees_what_size_and_time_cannot(tmp_path):
    images = make_images(tmp_path / "images", classes=1, per_class=2)
    out = tmp_path / "f.h5"
    extract(config(images, out, verify_content=True))
    target = images / "class_0" / "img_000.jpg"
    st = target.stat()
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF  # a flipped byte near the end: same size
    target.write_bytes(bytes(data))
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same modification time
    again = extract(config(images, out, verify_content=True))
    assert again.changes["changed"] == 1 and again.computed == 1


def test_a_grown_folder_updates_the_file_in_place(tmp_path):
    """Finding 2: 'exists from another run ... pass --overwrite', and everything computed again."""
    images = make_images(tmp_path / "images", classes=2, per_class=4)
    out = tmp_path / "f.h5"
    extract(config(images, out, partition_size=3))
    before = rows(featpipe.load(out))
    make_images(tmp_path / "more", classes=3, per_class=2, seed=5)
    shutil.copytree(tmp_path / "more" / "class_2", images / "class_2")  # a new class
    shutil.copy(tmp_path / "more" / "class_0" / "img_000.jpg", images / "class_0" / "img_900.jpg")
    (images / "class_1" / "img_003.png").unlink()
    s = extract(config(images, out, partition_size=3))
    assert s.updated and s.computed == 3
    assert s.changes == {"unchanged": 7, "added": 3, "changed": 0, "removed": 1, "retried": 0}
    fs = featpipe.load(out)
    fresh = featpipe.load(extract(config(images, tmp_path / "fresh.h5")).output)
    assert fs.paths == fresh.paths and fs.classes == fresh.classes == ["class_0", "class_1", "class_2"]
    np.testing.assert_array_equal(fs.y, fresh.y)
    np.testing.assert_allclose(fs.X(), fresh.X(), rtol=1e-5, atol=1e-6)
    after = rows(fs)
    for path, value in before.items():
        if path in after:
            np.testing.assert_array_equal(after[path], value)
    assert extract(config(images, out)).already_complete


def test_adding_a_layer_keeps_the_layers_there_are(tmp_path):
    images = make_images(tmp_path / "images", classes=2, per_class=2)
    out = tmp_path / "f.h5"
    extract(config(images, out))
    pooled = featpipe.load(out).X("pooled")
    s = extract(config(images, out, layers=("pooled", "logits")))
    assert s.updated and s.layers_added == ("logits",) and s.changes["unchanged"] == 4
    fs = featpipe.load(out)
    np.testing.assert_array_equal(fs.X("pooled"), pooled)
    fresh = featpipe.load(extract(config(images, tmp_path / "fresh.h5", layers=("pooled", "logits"))).output)
    np.testing.assert_allclose(fs.X("logits"), fresh.X("logits"), rtol=1e-5, atol=1e-5)
    with pytest.raises(RunConflictError, match="--layer logits too"):  # leaving one out would throw it away
        extract(config(images, out))
    with pytest.raises(RunConflictError, match="dtype float32 -> float16"):  # another extractor: in words
        extract(config(images, out, layers=("pooled", "logits"), dtype="float16"))


def test_resume_keeps_partitions_that_hold_failures(tmp_path):
    """Finding 3: every shard holding a failed image was computed again on resume."""
    images = make_images(tmp_path / "images", classes=2, per_class=4)
    (images / "class_0" / "bad.jpg").write_bytes(b"")  # sorts first: its partition finishes first
    out = tmp_path / "f.h5"
    with pytest.raises(featpipe.FeatpipeError, match="max-failures"):
        extract(config(images, out, partition_size=3, max_failures=0, streams=1))
    assert list((tmp_path / "f.h5.parts").glob("part-000000-*.h5"))
    s = extract(config(images, out, partition_size=3))
    assert s.resumed_partitions >= 1 and s.computed <= 9 - 3 and s.failed == 1
    again = extract(config(images, out, retry_failed=True))  # still broken: tried, and failed again
    assert not again.already_complete and again.computed == 1 and again.changes["retried"] == 1
    assert again.failed == 1
    shutil.copy(images / "class_0" / "img_000.jpg", images / "class_0" / "bad.jpg")  # fixed: a changed image
    fixed = extract(config(images, out))
    assert fixed.computed == 1 and fixed.failed == 0 and featpipe.load(out).valid.all()
