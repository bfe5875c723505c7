"""The Mini-ImageNet loader on both common layouts: Ravi & Larochelle's split csvs over images/, and one
folder per class (uverify.testing.images)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import uverify.datasets
from uverify.datasets import mini_imagenet
from uverify.datasets.base import Splits
from uverify.errors import DataError
from uverify.specs.load import load_spec
from uverify.specs.schema import MiniImagenetData
from uverify.study import study
from uverify.testing.images import mini_imagenet_classes, write_mini_imagenet

from helpers import assert_one_line_error, assert_study_is_whole, tiny_image_study_spec

CLASSES, PER_CLASS = 5, 10
NAMES = mini_imagenet_classes(CLASSES)


@pytest.fixture(scope="module")
def csv_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mini_imagenet(tmp_path_factory.mktemp("mini_csv"), "csv", CLASSES, PER_CLASS, seed=0)


@pytest.fixture(scope="module")
def class_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mini_imagenet(tmp_path_factory.mktemp("mini_folders"), "folders", CLASSES, PER_CLASS, seed=0)


def spec(path: Path, **overrides: Any) -> MiniImagenetData:
    return MiniImagenetData(dataset="mini_imagenet", path=path, **{"image_size": 16, **overrides})


def csv_rows(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [(r["label"], r["filename"]) for r in csv.DictReader(handle)]


def assert_same(a: Splits, b: Splits) -> None:
    for name in ("train", "test"):
        x, z = a.split(name), b.split(name)
        assert np.array_equal(x.ids, z.ids) and np.array_equal(x.y, z.y) and np.array_equal(x.X, z.X)


def check_splits(splits: Splits, size: int) -> None:
    for part in (splits.train, splits.test):
        assert part.X.shape == (len(part), 3, size, size) and part.X.dtype == np.float32
        assert part.y.dtype == np.int64 and part.ids.dtype == np.int64 and np.all(np.diff(part.ids) > 0)
        assert part.X.min() >= 0.0 and part.X.max() <= 1.0 and part.domain.contains(part.X).all()
    assert not set(splits.train.ids) & set(splits.test.ids)
    json.dumps(splits.train.preprocessing)


# ------------------------------------------------------------------------------------------ loading
def test_csv_layout_reads_the_union_of_the_split_files(csv_folder: Path) -> None:
    splits = mini_imagenet.load(spec(csv_folder))
    check_splits(splits, 16)
    listed = sorted(row for name in ("train.csv", "val.csv", "test.csv") for row in csv_rows(csv_folder / name))
    assert len({label for label, _ in csv_rows(csv_folder / "val.csv")}) >= 1  # disjoint classes per file
    assert splits.train.class_names == NAMES == sorted({label for label, _ in listed})
    ids = np.concatenate([splits.train.ids, splits.test.ids])
    y = np.concatenate([splits.train.y, splits.test.y])
    assert np.array_equal(np.sort(ids), np.arange(len(listed)))  # ids: positions in sorted (label, filename)
    assert all(NAMES[k] == listed[i][0] for i, k in zip(ids, y, strict=True))
    assert np.array_equal(np.bincount(splits.test.y), [PER_CLASS // 5] * CLASSES)  # stratified, test_fraction 0.2
    assert splits.train.preprocessing["layout"] == "csv"
    assert splits.train.preprocessing["sources"] == ["train.csv", "val.csv", "test.csv"]
    assert "mini_imagenet" in uverify.datasets.registered()
    assert_same(uverify.datasets.load(spec(csv_folder)), splits)


def test_the_images_are_the_listed_files(csv_folder: Path) -> None:
    splits = mini_imagenet.load(spec(csv_folder, image_size=84))  # Ravi's size: no resizing at all
    listed = sorted(row for name in ("train.csv", "val.csv", "test.csv") for row in csv_rows(csv_folder / name))
    for k in (0, 7):
        with Image.open(csv_folder / "images" / listed[splits.train.ids[k]][1]) as img:
            expected = np.asarray(img.convert("RGB")).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        assert np.array_equal(splits.train.X[k], expected)


def test_one_csv_as_path_reads_only_its_rows(csv_folder: Path) -> None:
    splits = mini_imagenet.load(spec(csv_folder / "train.csv"))
    assert splits.train.class_names == sorted({label for label, _ in csv_rows(csv_folder / "train.csv")})
    assert len(splits.train) + len(splits.test) == len(csv_rows(csv_folder / "train.csv"))


def test_csv_images_may_sit_in_one_folder_per_class(tmp_path: Path, csv_folder: Path) -> None:
    data = Path(shutil.copytree(csv_folder, tmp_path / "data"))
    for label, filename in csv_rows(data / "train.csv"):
        (data / "images" / label).mkdir(exist_ok=True)
        (data / "images" / filename).rename(data / "images" / label / filename)
    assert_same(mini_imagenet.load(spec(data)), mini_imagenet.load(spec(csv_folder)))


def test_folder_layout_reads_one_folder_per_class(tmp_path: Path, class_folders: Path) -> None:
    splits = mini_imagenet.load(spec(class_folders))
    check_splits(splits, 16)
    assert splits.train.class_names == NAMES and splits.train.preprocessing["layout"] == "folders"
    assert len(splits.train) + len(splits.test) == CLASSES * PER_CLASS
    listed = sorted((d.name, f.name) for d in class_folders.iterdir() for f in d.iterdir())
    assert listed[0][1].endswith(".JPEG")
    ids = np.concatenate([splits.train.ids, splits.test.ids])
    y = np.concatenate([splits.train.y, splits.test.y])
    assert all(NAMES[k] == listed[i][0] for i, k in zip(ids, y, strict=True))

    data = Path(shutil.copytree(class_folders, tmp_path / "data"))
    Image.new("RGB", (84, 84), (255, 0, 0)).save(data / NAMES[0] / "extra.png")  # png counts
    (data / NAMES[0] / "notes.txt").write_text("not an image")  # other suffixes are skipped
    (data / NAMES[0] / "._extra.jpg").write_bytes(b"\x00\x05\x16\x07")  # and hidden files (macOS companions)
    (data / "empty").mkdir()  # a folder without images is no class
    more = mini_imagenet.load(spec(data))
    assert more.train.class_names == NAMES
    assert len(more.train) + len(more.test) == CLASSES * PER_CLASS + 1


def test_same_spec_same_arrays_and_the_seed_moves_the_split(csv_folder: Path) -> None:
    assert_same(mini_imagenet.load(spec(csv_folder)), mini_imagenet.load(spec(csv_folder)))
    other = mini_imagenet.load(spec(csv_folder, seed=1))
    assert not np.array_equal(other.test.ids, mini_imagenet.load(spec(csv_folder)).test.ids)


def test_classes_keeps_the_first_names_and_their_ids(csv_folder: Path) -> None:
    full = mini_imagenet.load(spec(csv_folder))
    two = mini_imagenet.load(spec(csv_folder, classes=2))
    assert two.train.class_names == NAMES[:2]
    ids = np.concatenate([two.train.ids, two.test.ids])
    assert len(ids) == 2 * PER_CLASS
    lookup = {int(i): x for part in (full.train, full.test) for i, x in zip(part.ids, part.X, strict=True)}
    for part in (two.train, two.test):  # ids name the same images as without `classes`
        assert all(np.array_equal(lookup[int(i)], x) for i, x in zip(part.ids, part.X, strict=True))
    with pytest.raises(DataError) as info:
        mini_imagenet.load(spec(csv_folder, classes=CLASSES + 1))
    assert_one_line_error(info, f"holds {CLASSES}")


def test_subsample_is_seeded_and_stratified(csv_folder: Path) -> None:
    small = mini_imagenet.load(spec(csv_folder, subsample=30, seed=4))
    y = np.concatenate([small.train.y, small.test.y])
    assert len(y) == 30 and np.array_equal(np.bincount(y), [6] * CLASSES)
    assert_same(small, mini_imagenet.load(spec(csv_folder, subsample=30, seed=4)))


def test_the_shipped_spec_is_valid() -> None:
    shipped = load_spec("mini_imagenet")
    assert (
        isinstance(shipped.data, MiniImagenetData) and shipped.data.path.is_absolute() and shipped.model.arch == "cnn"
    )
    assert shipped.property.epsilon == [0.002, 0.005, 0.01] and shipped.unlearning.method == "sisa"


# ------------------------------------------------------------------------------------------ errors
def test_missing_or_unrecognised_folders_say_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        mini_imagenet.load(spec(tmp_path / "nowhere"))
    assert_one_line_error(info, "no folder", "train.csv", "images/", "image-net.org", "meta-learning-lstm")
    (tmp_path / "stuff").mkdir()
    (tmp_path / "stuff" / "readme.txt").write_text("hello")
    with pytest.raises(DataError) as info:
        mini_imagenet.load(spec(tmp_path))
    assert_one_line_error(
        info, f"no Mini-ImageNet in {tmp_path}", "train.csv", "one folder of .jpg/.png images per class"
    )
    with pytest.raises(DataError) as info:
        mini_imagenet.load(spec(tmp_path / "stuff" / "readme.txt"))
    assert_one_line_error(info, "not a csv")


def test_a_csv_without_the_label_column_is_named(tmp_path: Path, csv_folder: Path) -> None:
    data = Path(shutil.copytree(csv_folder, tmp_path / "data"))
    (data / "val.csv").write_text("filename,class\nx.jpg,n0\n")
    with pytest.raises(DataError) as info:
        mini_imagenet.load(spec(data))
    assert_one_line_error(info, "val.csv", "no column label")


def test_an_image_listed_but_missing_is_counted_and_named(tmp_path: Path, csv_folder: Path) -> None:
    data = Path(shutil.copytree(csv_folder, tmp_path / "data"))
    first = sorted((data / "images").iterdir())[0]
    first.unlink()
    (data / "images" / "zz_unlisted.jpg").write_bytes(b"")  # files no csv lists are never opened
    with pytest.raises(DataError) as info:
        mini_imagenet.load(spec(data))
    assert_one_line_error(info, "1 of the 50 images", f"first: {first.name}", "image-net.org")


def test_a_file_that_is_no_image_is_named(tmp_path: Path, class_folders: Path) -> None:
    data = Path(shutil.copytree(class_folders, tmp_path / "data"))
    bad = sorted((data / NAMES[1]).iterdir())[0]
    bad.write_text("this is a text file with an image's name")
    with pytest.raises(DataError) as info:
        mini_imagenet.load(spec(data))
    assert_one_line_error(info, str(bad), "cannot read it as an image")


def test_one_label_per_file(tmp_path: Path, csv_folder: Path) -> None:
    data = Path(shutil.copytree(csv_folder, tmp_path / "data"))
    _, filename = csv_rows(data / "train.csv")[0]
    with open(data / "val.csv", "a", encoding="utf-8") as handle:
        handle.write(f"{filename},{NAMES[-1]}\n")
    with pytest.raises(DataError) as info:
        mini_imagenet.load(spec(data))
    assert_one_line_error(info, filename, "two labels")


# -------------------------------------------------------------------------------------------- study
def test_the_study_runs_on_mini_imagenet(tmp_path: Path) -> None:
    """The whole grid on class folders (8x8 images): the tables exist, every cell keeps
    certified <= PGD <= clean, and the models beat chance."""
    write_mini_imagenet(tmp_path / "data", "folders", 4, 40, seed=0)
    run_spec = tiny_image_study_spec(
        "mini-imagenet-tiny",
        {"dataset": "mini_imagenet", "path": str(tmp_path / "data"), "image_size": 8, "samples": 10},
        0.01,
    )
    result = study(run_spec, tmp_path / "out", progress=False, echo=lambda _: None)
    assert_study_is_whole(result, 1.5 / 4)  # well above chance
