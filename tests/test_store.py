"""FeatureSet: eager and lazy reads, pandas, and refusal of files it cannot read."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

import featpipe
from featpipe import ExtractConfig, extract
from featpipe.errors import FormatError, UsageError


@pytest.fixture
def feature_file(tmp_path, image_folder):
    (image_folder / "class_2" / "broken.jpg").write_bytes(b"\xff\xd8garbage")
    return extract(ExtractConfig(image_folder, tmp_path / "f.h5", model="test_resnet", weights="random",
                                 layers=("pooled", "layer3"))).output


def test_featureset_columns(feature_file):
    fs = featpipe.load(feature_file)
    assert len(fs) == 13 and fs.layers == ["layer3", "pooled"]
    assert fs.X().shape == (13, 96) and fs.X("layer3").shape[0] == 13
    assert fs.classes == ["class_0", "class_1", "class_2"]
    assert fs.y.dtype == np.int64 and fs.valid.sum() == 12
    assert fs.paths[fs.errors["index"][0]] == "class_2/broken.jpg"
    assert fs.meta["data_config"]["crop"] == [160, 160] and fs.meta["model"] == "timm:test_resnet"
    assert "13 samples (12 valid)" in repr(fs)


def test_to_dask_is_lazy_and_equal(feature_file):
    fs = featpipe.load(feature_file)
    arr = fs.to_dask("pooled")
    assert arr.shape == (13, 96)
    np.testing.assert_array_equal(arr.compute(), fs.X("pooled"))
    np.testing.assert_array_equal(arr[3:7].compute(), fs.X("pooled")[3:7])


def test_to_pandas(feature_file):
    df = featpipe.load(feature_file).to_pandas()
    assert list(df.columns[:4]) == ["path", "label", "class", "valid"]
    assert df.shape == (13, 4 + 96)
    assert df.loc[0, "class"] == "class_0" and not df.loc[df.path == "class_2/broken.jpg", "valid"].item()


def test_unknown_layer_names_the_ones_there(feature_file):
    with pytest.raises(UsageError, match="layer3, pooled"):
        featpipe.load(feature_file).X("fc7")


def test_unknown_format_version_is_refused(feature_file):
    with h5py.File(feature_file, "a") as f:
        f.attrs["format_version"] = 7
    with pytest.raises(FormatError, match="format_version 7"):
        featpipe.load(feature_file)


def test_other_files_are_refused(tmp_path):
    plain = tmp_path / "plain.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(FormatError, match="not a featpipe feature file"):
        featpipe.load(plain)
    (tmp_path / "text.h5").write_text("hello")
    with pytest.raises(FormatError, match="not a readable HDF5"):
        featpipe.load(tmp_path / "text.h5")
    with pytest.raises(UsageError, match="does not exist"):
        featpipe.load(tmp_path / "missing.h5")


def test_to_dask_of_two_files_with_one_name_are_not_confused(tmp_path, image_folder):
    files = []
    for seed in (1, 2):
        (tmp_path / f"d{seed}").mkdir()
        files.append(extract(ExtractConfig(image_folder, tmp_path / f"d{seed}" / "f.h5", model="test_resnet",
                                           weights="random", seed=seed)).output)
    a, b = (featpipe.load(f).to_dask() for f in files)
    expected = np.abs(featpipe.load(files[0]).X() - featpipe.load(files[1]).X()).max()
    assert expected > 0 and float(abs(a - b).max().compute()) == pytest.approx(expected)


def test_incomplete_file_is_a_format_error(feature_file):
    with h5py.File(feature_file, "a") as f:
        del f["errors"]
    with pytest.raises(FormatError, match="incomplete"):
        featpipe.load(feature_file)
