"""The SVHN loader on MATLAB v5 files in SVHN's own layout (uverify.testing.images)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io

import uverify.datasets
from uverify.datasets import svhn
from uverify.datasets.base import Splits
from uverify.errors import DataError
from uverify.specs.load import load_spec
from uverify.specs.schema import SvhnData
from uverify.study import study
from uverify.testing.images import write_svhn_mat

from helpers import assert_one_line_error, assert_study_is_whole, tiny_image_study_spec

N_TRAIN, N_TEST = 120, 30
SOURCE = "http://ufldl.stanford.edu/housenumbers/"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_svhn_mat(tmp_path_factory.mktemp("svhn"), N_TRAIN, N_TEST, seed=0)


def spec(path: Path, **overrides: Any) -> SvhnData:
    return SvhnData(dataset="svhn", path=path, **overrides)


def assert_same(a: Splits, b: Splits) -> None:
    for name in ("train", "test"):
        x, z = a.split(name), b.split(name)
        assert np.array_equal(x.ids, z.ids) and np.array_equal(x.y, z.y) and np.array_equal(x.X, z.X)


# ------------------------------------------------------------------------------------------ loading
def test_images_labels_and_ids_follow_the_files(folder: Path) -> None:
    splits = svhn.load(spec(folder))
    raw = {name: scipy.io.loadmat(folder / name) for name in ("train_32x32.mat", "test_32x32.mat")}
    for part, mat, offset in ((splits.train, raw["train_32x32.mat"], 0), (splits.test, raw["test_32x32.mat"], N_TRAIN)):
        n = mat["X"].shape[3]
        assert part.X.shape == (n, 3, 32, 32) and part.X.dtype == np.float32
        assert part.y.dtype == np.int64 and part.ids.dtype == np.int64
        assert part.X.min() >= 0.0 and part.X.max() <= 1.0 and part.domain.contains(part.X).all()
        assert np.array_equal(part.ids, np.arange(offset, offset + n))  # test ids follow the training ids
        # image n is X[row, col, channel, n]; pixel values are the file's bytes / 255
        assert np.array_equal(part.X, mat["X"].transpose(3, 2, 0, 1).astype(np.float32) / np.float32(255))
        assert np.array_equal(part.y, np.where(mat["y"][:, 0] == 10, 0, mat["y"][:, 0]))  # 10 is the digit 0
        assert part.class_names == [str(d) for d in range(10)]
    assert (raw["train_32x32.mat"]["y"] == 10).any() and 0 in splits.train.y
    assert set(splits.train.y) == set(range(10)) and not set(splits.train.ids) & set(splits.test.ids)
    counts = splits.train.preprocessing["class_counts"]
    assert counts["train"] == {str(d): int((splits.train.y == d).sum()) for d in range(10)}
    assert sum(counts["test"].values()) == N_TEST
    json.dumps(splits.train.preprocessing)  # lands in the exported model's metadata
    assert "svhn" in uverify.datasets.registered()
    assert_same(uverify.datasets.load(spec(folder)), splits)  # found through the registry


def test_fixture_is_a_real_svhn_file(folder: Path) -> None:
    head = (folder / "train_32x32.mat").read_bytes()[:128]
    assert head.startswith(b"MATLAB 5.0 MAT-file") and head[126:128] in (b"IM", b"MI")
    mat = scipy.io.loadmat(folder / "train_32x32.mat")
    assert mat["X"].dtype == np.uint8 and mat["X"].shape == (32, 32, 3, N_TRAIN)
    assert mat["y"].shape == (N_TRAIN, 1) and set(np.unique(mat["y"])) == set(range(1, 11))


def test_same_spec_same_arrays_and_a_file_path_works(folder: Path) -> None:
    assert_same(svhn.load(spec(folder)), svhn.load(spec(folder / "train_32x32.mat")))


def test_labels_stored_as_double_read_the_same(tmp_path: Path, folder: Path) -> None:
    write_svhn_mat(tmp_path, N_TRAIN, N_TEST, seed=0, y_dtype="double")
    assert scipy.io.loadmat(tmp_path / "test_32x32.mat")["y"].dtype == np.float64
    assert_same(svhn.load(spec(tmp_path)), svhn.load(spec(folder)))


def test_subsample_keeps_seeded_stratified_training_images_with_their_ids(folder: Path) -> None:
    full = svhn.load(spec(folder))
    small = svhn.load(spec(folder, subsample=50, seed=3))
    assert len(small.train) == 50 and np.array_equal(np.bincount(small.train.y), [5] * 10)  # stratified
    assert set(small.train.ids) <= set(full.train.ids)
    position = np.searchsorted(full.train.ids, small.train.ids)
    assert np.array_equal(small.train.X, full.train.X[position]) and np.array_equal(
        small.train.y, full.train.y[position]
    )
    assert_same(Splits(small.test, small.test), Splits(full.test, full.test))  # the test file is read whole
    assert_same(small, svhn.load(spec(folder, subsample=50, seed=3)))
    assert not np.array_equal(small.train.ids, svhn.load(spec(folder, subsample=50, seed=4)).train.ids)
    assert len(svhn.load(spec(folder, subsample=10_000)).train) == N_TRAIN


def test_the_shipped_spec_is_valid() -> None:
    shipped = load_spec("svhn")
    assert isinstance(shipped.data, SvhnData) and shipped.data.path.is_absolute() and shipped.model.arch == "cnn"
    assert shipped.property.epsilon == [0.002, 0.005, 0.01] and shipped.unlearning.method == "sisa"


# ------------------------------------------------------------------------------------------ errors
def test_missing_files_name_the_files_and_their_source(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        svhn.load(spec(tmp_path / "nowhere"))
    assert_one_line_error(info, "train_32x32.mat", "test_32x32.mat", SOURCE, "no such folder")
    write_svhn_mat(tmp_path, 10, 10)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DataError) as info:
        svhn.load(spec(tmp_path))
    message = assert_one_line_error(info, "no test_32x32.mat", SOURCE, str(tmp_path))
    assert "no train_32x32.mat" not in message


@pytest.mark.parametrize(
    "content",
    [b"", b"not a mat file at all" * 20, "truncated", "v7.3"],
    ids=["empty", "garbage", "truncated", "v7.3"],
)
def test_a_corrupt_mat_file_is_a_one_line_error(tmp_path: Path, content: bytes | str) -> None:
    write_svhn_mat(tmp_path, 20, 10)
    train = tmp_path / "train_32x32.mat"
    if content == "truncated":
        data = train.read_bytes()
        train.write_bytes(data[: len(data) // 2])
    elif content == "v7.3":
        header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, HDF5 schema 1.00 .".ljust(116) + bytes(8) + b"\x00\x02IM"
        train.write_bytes(header + b"\x89HDF\r\n\x1a\n" + bytes(512))
    else:
        assert isinstance(content, bytes)
        train.write_bytes(content)
    with pytest.raises(DataError) as info:
        svhn.load(spec(tmp_path))
    assert_one_line_error(info, str(train))


@pytest.mark.parametrize(
    ("arrays", "needle"),
    [
        ({"images": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((2, 1), np.uint8)}, "no variable X"),
        (
            {"X": np.zeros((32, 32, 2), np.uint8), "y": np.ones((2, 1), np.uint8)},
            "expected uint8 of shape (32, 32, 3, N)",
        ),
        ({"X": np.zeros((32, 32, 3, 2)), "y": np.ones((2, 1), np.uint8)}, "X is float64"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.ones((3, 1), np.uint8)}, "3 uint8 labels for 2 images"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]], np.uint8)}, "label 11 is not a digit"),
        ({"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[0], [1]], np.uint8)}, "label 0 is not a digit"),
    ],
    ids=["no-X", "3d-X", "float-X", "label-count", "label-11", "label-0"],
)
def test_a_mat_file_in_another_layout_is_a_one_line_error(tmp_path: Path, arrays: dict[str, Any], needle: str) -> None:
    write_svhn_mat(tmp_path, 20, 10)
    scipy.io.savemat(tmp_path / "test_32x32.mat", arrays)
    with pytest.raises(DataError) as info:
        svhn.load(spec(tmp_path))
    assert_one_line_error(info, "test_32x32.mat", needle)


# -------------------------------------------------------------------------------------------- study
def test_the_study_runs_on_svhn(tmp_path: Path) -> None:
    """The whole grid on SVHN-format files: the tables exist, every cell keeps certified <= PGD <= clean,
    and the models beat chance (the fixture is learnable). Kept small: 300 images, one epsilon, 10 samples."""
    write_svhn_mat(tmp_path / "data", 300, 40, seed=0)
    run_spec = tiny_image_study_spec(
        "svhn-tiny", {"dataset": "svhn", "path": str(tmp_path / "data"), "samples": 10}, 0.004
    )
    result = study(run_spec, tmp_path / "out", progress=False, echo=lambda _: None)
    assert_study_is_whole(result, 1.5 / 10)  # well above chance
