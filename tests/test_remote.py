"""Images in object storage, against a real S3 API on loopback (moto's server, started here; IAM
authentication on where keys matter): a bucket folder, a CSV of s3:// URLs and tar shards in the bucket give the features of
the same images on local disk; missing keys, missing buckets and wrong credentials fail as they should."""
from __future__ import annotations

import io
import json
import os

import h5py
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

import featpipe
from featpipe import ExtractConfig, extract, remote
from featpipe.cli import app
from featpipe.errors import UsageError
from featpipe.extraction.sources import discover

from .conftest import TINY_MODEL, make_images
from .test_shards import make_shards

s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")
boto3 = pytest.importorskip("boto3")
requests = pytest.importorskip("requests")

WRONG_SECRET = "wR0ngS3cretThatMustNeverBeShown"
CFG = dict(model=TINY_MODEL, weights="random", batch_size=4, max_pixels=20_000)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free loopback port; a user with an access key; the bucket
    's3://featpipe-test' with images/ (an ImageFolder), lists/ and shards/; credentials in the environment."""
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                       aws_access_key_id="setup", aws_secret_access_key="setup")
    iam.create_user(UserName="featpipe")
    iam.put_user_policy(UserName="featpipe", PolicyName="all", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="featpipe")["AccessKey"]
    env = {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
           "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(k, raising=False)
        root = tmp_path_factory.mktemp("s3")
        images = make_images(root / "images", classes=3, per_class=4)
        shard_rows = make_shards(images, root / "shards")
        fs = s3fs.S3FileSystem()
        fs.mkdir("featpipe-test")
        fs.put(str(images) + "/", "featpipe-test/images/", recursive=True)
        fs.put(str(root / "shards") + "/", "featpipe-test/shards/", recursive=True)
        files = sorted(p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file())
        big = io.BytesIO()
        Image.new("RGB", (200, 200), "red").save(big, "PNG")  # 40,000 pixels: over CFG's max_pixels
        fs.pipe("featpipe-test/other/bomb.png", big.getvalue())
        lines = ["path,label"] + [f"s3://featpipe-test/images/{f},{f.split('/')[0]}" for f in files]
        lines += ["s3://featpipe-test/images/class_0/no-such-key.jpg,class_0", "s3://featpipe-test/other/bomb.png,"]
        fs.pipe("featpipe-test/lists/list.csv", ("\n".join(lines) + "\n").encode())
        yield {"endpoint": endpoint, "key": key, "images": images, "files": files, "shard_rows": shard_rows,
               "root": root, "fs": fs}
        s3fs.S3FileSystem.clear_instance_cache()
    server.stop()


@pytest.fixture
def authentication(s3):
    """moto checks keys and signatures while this lasts. (Not for the whole module: moto 5.2 miscomputes
    the signature of a listing whose prefix holds a '/', so folders cannot be listed with it on.)"""
    requests.post(f"{s3['endpoint']}/moto-api/reset-auth", data=b"0", timeout=10)
    try:
        yield
    finally:
        requests.post(f"{s3['endpoint']}/moto-api/reset-auth", data=b"inf", timeout=10)


@pytest.fixture(scope="module")
def local_features(s3, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "local.h5"
    extract(ExtractConfig(input=s3["images"], output=out, **CFG))
    return featpipe.load(out)


def _rows(fs, paths):
    index = {p: i for i, p in enumerate(fs.paths)}
    return np.asarray([index[p] for p in paths])


def _same(a, rows_a, b, rows_b):
    np.testing.assert_allclose(a.X()[rows_a], b.X()[rows_b], rtol=1e-5, atol=1e-6)


def test_bucket_folder_gives_local_features_and_updates_by_etag(s3, local_features, tmp_path):
    out = tmp_path / "bucket.h5"
    s = extract(ExtractConfig(input="s3://featpipe-test/images", output=out, **CFG))
    fs = featpipe.load(out)
    assert fs.paths == local_features.paths and fs.classes == local_features.classes
    np.testing.assert_array_equal(fs.y, local_features.y)
    _same(fs, slice(None), local_features, slice(None))
    assert s.computed == len(fs) and fs.valid.all()
    assert fs.meta["image_root"] == "s3://featpipe-test/images"
    with h5py.File(out, "r") as f:  # the objects' ETags are the rows' versions
        versions = [v.decode() for v in f["samples/version"][:]]
    assert all(len(v) == 32 for v in versions)

    assert extract(ExtractConfig(input="s3://featpipe-test/images", output=out, **CFG)).already_complete
    changed = s3["files"][5]
    img = io.BytesIO()
    Image.new("RGB", (50, 40), "blue").save(img, "PNG")
    # Changed by another client: this process's fsspec listings must not hide it.
    boto3.client("s3").put_object(Bucket="featpipe-test", Key=f"images/{changed}", Body=img.getvalue())
    try:
        update = extract(ExtractConfig(input="s3://featpipe-test/images", output=out, **CFG))
    finally:
        s3["fs"].put(str(s3["images"] / changed), f"featpipe-test/images/{changed}")
    assert update.computed == 1 and update.changes["changed"] == 1 and update.changes["unchanged"] == len(fs) - 1


def test_csv_of_s3_urls_with_a_missing_key_and_a_bomb(s3, local_features, tmp_path):
    out = tmp_path / "list.h5"
    extract(ExtractConfig(input="s3://featpipe-test/lists/list.csv", output=out, **CFG))
    fs = featpipe.load(out)
    n = len(s3["files"])
    assert fs.paths[:n] == [f"s3://featpipe-test/images/{f}" for f in s3["files"]]
    _same(fs, slice(0, n), local_features, _rows(local_features, s3["files"]))
    assert fs.valid.tolist() == [True] * n + [False, False]
    reasons = dict(zip(fs.errors["path"], fs.errors["reason"], strict=True))
    assert reasons["s3://featpipe-test/images/class_0/no-such-key.jpg"].startswith("missing")
    assert "decompression bomb" in reasons["s3://featpipe-test/other/bomb.png"]


def test_shards_in_the_bucket_give_local_features(s3, local_features, tmp_path):
    out = tmp_path / "shards.h5"
    # Credentials as storage options this time: they must not end up in the file.
    options = {"key": s3["key"]["AccessKeyId"], "secret": s3["key"]["SecretAccessKey"]}
    extract(ExtractConfig(input="s3://featpipe-test/shards/{00000..00002}.tar", output=out, storage_options=options,
                          **CFG))
    fs = featpipe.load(out)
    rows = s3["shard_rows"]
    assert fs.paths == [r for r, _ in rows] and fs.valid.all()
    assert fs.meta["image_root"] == "s3://featpipe-test/shards"
    _same(fs, slice(None), local_features, _rows(local_features, [f for _, f in rows]))
    assert s3["key"]["SecretAccessKey"].encode() not in out.read_bytes()


def test_parquet_list_reads_in_chunks_like_the_csv(s3, tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from featpipe.extraction import lists

    csv_list = discover("s3://featpipe-test/lists/list.csv")
    table = pa.table({"Path": list(csv_list.paths), "label": [csv_list.classes[k] if k >= 0 else None
                                                              for k in csv_list.labels]})
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=4)
    s3["fs"].pipe("featpipe-test/lists/list.parquet", buf.getvalue())
    batches = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        for batch in real(self, *args, **kwargs):
            batches.append(batch.num_rows)
            yield batch

    monkeypatch.setattr(lists, "LIST_CHUNK", 5)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    parquet_list = discover("s3://featpipe-test/lists/list.parquet")
    assert parquet_list.paths == csv_list.paths and parquet_list.classes == csv_list.classes
    np.testing.assert_array_equal(parquet_list.labels, csv_list.labels)
    assert max(batches) <= 5 and sum(batches) == len(csv_list)


def test_query_strings_and_user_info_are_never_stored(tmp_path):
    assert remote.clean_url("https://user:pw@host/a/b.jpg?X-Amz-Signature=abc#f") == "https://host/a/b.jpg"
    (tmp_path / "l.csv").write_text("path\nhttps://host/a/b.jpg?token=SECRET\n")
    s = discover(tmp_path / "l.csv")
    assert s.paths == ("https://host/a/b.jpg",) and s.location(0) == "https://host/a/b.jpg?token=SECRET"
    assert "SECRET" not in remote.describe_error(OSError("GET https://host/a/b.jpg?token=SECRET failed"))


runner = CliRunner()


def _extract_cli(tmp_path, source, *options):
    return runner.invoke(app, ["extract", source, "-o", str(tmp_path / "out.h5"), "--model", TINY_MODEL,
                               "--weights", "random", "--quiet", *options])


def test_missing_bucket_is_one_line(s3, tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        discover("s3://no-such-bucket/images")
    r = _extract_cli(tmp_path, "s3://no-such-bucket/images")
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "no-such-bucket" in lines[0] and "does not exist" in lines[0], r.output


def test_wrong_credentials_are_one_line_that_names_no_secret(s3, authentication, tmp_path):
    good = {"key": s3["key"]["AccessKeyId"], "secret": s3["key"]["SecretAccessKey"]}
    assert len(discover("s3://featpipe-test/shards/00000.tar", good)) == 4  # the right key is let in
    r = _extract_cli(tmp_path, "s3://featpipe-test/images", "--storage-option", f"key={s3['key']['AccessKeyId']}",
                     "--storage-option", f"secret={WRONG_SECRET}")
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "access" in lines[0] and "credentials" in lines[0], r.output
    assert WRONG_SECRET not in r.output
    assert not (tmp_path / "out.h5").exists()
    for dirpath, _, names in os.walk(tmp_path):
        for name in names:
            assert WRONG_SECRET.encode() not in open(os.path.join(dirpath, name), "rb").read()

    # The same one line when a shard or a list is what cannot be read.
    for source in ("s3://featpipe-test/shards/00000.tar", "s3://featpipe-test/lists/list.csv"):
        with pytest.raises(UsageError, match="access to .* was refused") as err:
            discover(source, {"key": s3["key"]["AccessKeyId"], "secret": WRONG_SECRET})
        assert WRONG_SECRET not in str(err.value) and "\n" not in str(err.value)


def test_workers_read_the_images_themselves(s3, local_features, tmp_path, monkeypatch):
    """On a cluster (a scheduler and a worker process on loopback) the client lists the bucket and reads no
    image: the worker process fetches the bytes from S3 itself."""
    from featpipe.extraction import inputs

    from .test_distributed import loopback_cluster

    fetched = []
    real = remote.read_bytes
    monkeypatch.setattr(remote, "read_bytes", lambda *a, **k: fetched.append(a[0]) or real(*a, **k))
    inputs.FileReader("s3://featpipe-test/images", (s3["files"][0],), {})(0)
    assert len(fetched) == 1  # the spy sees a read where a partition's reader makes it
    fetched.clear()
    with loopback_cluster(tmp_path, workers=1, nthreads=1) as (address, _):  # the worker inherits the environment
        out = tmp_path / "cluster.h5"
        extract(ExtractConfig(input="s3://featpipe-test/images", output=out, scheduler=address, **CFG))
    fs = featpipe.load(out)
    assert fetched == [] and fs.valid.all()
    _same(fs, slice(None), local_features, slice(None))


def test_a_rerun_in_the_same_process_sees_objects_changed_by_others(s3):
    """fsspec keeps listings per process (a notebook's): an object changed by another client after the bucket
    was listed must not keep its old identity."""
    discover("s3://featpipe-test/images")  # a recursive listing, which s3fs keeps
    before = discover("s3://featpipe-test/lists/list.csv").image_stats()
    img = io.BytesIO()
    Image.new("RGB", (50, 40), "blue").save(img, "PNG")
    changed = s3["files"][0]
    boto3.client("s3").put_object(Bucket="featpipe-test", Key=f"images/{changed}", Body=img.getvalue())
    try:
        after = discover("s3://featpipe-test/lists/list.csv").image_stats()
        again = discover("s3://featpipe-test/images").image_stats()
    finally:
        s3["fs"].put(str(s3["images"] / changed), f"featpipe-test/images/{changed}")
    assert after["size"][0] == len(img.getvalue()) != before["size"][0]
    assert after["version"][0] != before["version"][0]
    assert again["size"][0] == len(img.getvalue())
