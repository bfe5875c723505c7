"""The HAM10000 loader on a metadata csv and JPEGs laid out as the release lays them out
(uverify.testing.images)."""

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
from uverify.datasets import ham10000
from uverify.datasets.base import Splits, format_class_balance
from uverify.errors import DataError
from uverify.specs.load import load_spec
from uverify.specs.schema import Ham10000Data
from uverify.study import study
from uverify.testing.images import write_ham10000

from helpers import assert_one_line_error, assert_study_is_whole, tiny_image_study_spec

N_IMAGES = 120
SOURCE = "https://doi.org/10.7910/DVN/DBW86T"
CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_ham10000(tmp_path_factory.mktemp("ham"), N_IMAGES, seed=0).parent


def spec(path: Path, **overrides: Any) -> Ham10000Data:
    return Ham10000Data(dataset="ham10000", path=path, **{"image_size": 16, **overrides})


def copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "ham"))


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "HAM10000_metadata.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_rows(folder: Path, table: list[dict[str, str]]) -> None:
    with open(folder / "HAM10000_metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)


def assert_same(a: Splits, b: Splits) -> None:
    for name in ("train", "test"):
        x, z = a.split(name), b.split(name)
        assert np.array_equal(x.ids, z.ids) and np.array_equal(x.y, z.y) and np.array_equal(x.X, z.X)


# ------------------------------------------------------------------------------------------ loading
def test_loads_every_row_with_its_diagnosis_and_row_number(folder: Path) -> None:
    splits = ham10000.load(spec(folder))
    table = rows(folder)
    ids = np.concatenate([splits.train.ids, splits.test.ids])
    assert np.array_equal(np.sort(ids), np.arange(len(table)))  # ids: the csv's data-row numbers
    for part in (splits.train, splits.test):
        assert part.X.shape == (len(part), 3, 16, 16) and part.X.dtype == np.float32
        assert part.y.dtype == np.int64 and part.ids.dtype == np.int64 and np.all(np.diff(part.ids) > 0)
        assert part.X.min() >= 0.0 and part.X.max() <= 1.0 and part.domain.contains(part.X).all()
        assert part.class_names == CLASSES
        assert [CLASSES[k] for k in part.y] == [table[i]["dx"] for i in part.ids]
    assert set(splits.train.y) == set(range(7)) and set(splits.test.y) == set(range(7))
    assert "ham10000" in uverify.datasets.registered()
    assert_same(uverify.datasets.load(spec(folder)), splits)


def test_no_lesion_is_on_both_sides(folder: Path) -> None:
    table = rows(folder)
    lesion = np.array([r["lesion_id"] for r in table])
    assert len(set(lesion)) < len(lesion)  # the fixture has lesions with several images
    for seed in range(5):
        splits = ham10000.load(spec(folder, seed=seed))
        train, test = set(lesion[splits.train.ids]), set(lesion[splits.test.ids])
        assert not train & test, seed
        assert 0.1 < len(splits.test) / N_IMAGES < 0.35
        assert splits.train.preprocessing["lesions"] == {"train": len(train), "test": len(test)}
    assert not np.array_equal(
        ham10000.load(spec(folder, seed=0)).test.ids, ham10000.load(spec(folder, seed=1)).test.ids
    )


def test_images_are_the_files_resized(folder: Path) -> None:
    splits = ham10000.load(spec(folder, image_size=8))
    assert splits.train.input_shape == (3, 8, 8)
    table = rows(folder)
    for k in (0, 5, len(splits.train) - 1):
        image_id = table[splits.train.ids[k]]["image_id"]
        file = next(folder.glob(f"*/{image_id}.jpg"))
        with Image.open(file) as img:
            assert img.format == "JPEG" and img.size == (64, 48)
            original = np.asarray(img.convert("RGB"), dtype=np.float64) / 255
        # a shrunken image keeps the original's mean colour
        assert np.abs(splits.train.X[k].mean(axis=(1, 2)) - original.mean(axis=(0, 1))).max() < 0.03


def test_same_spec_same_arrays(folder: Path) -> None:
    assert_same(ham10000.load(spec(folder)), ham10000.load(spec(folder)))


def test_one_folder_or_two_and_either_csv_header_read_the_same(tmp_path: Path, folder: Path) -> None:
    one = write_ham10000(tmp_path / "one", N_IMAGES, seed=0, two_parts=False, dataset_column=True).parent
    assert (one / "HAM10000_images").is_dir() and not (one / "HAM10000_images_part_1").exists()
    assert list(rows(one)[0]) == ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
    assert list(rows(folder)[0])[-1] == "localization"
    assert len(list((folder / "HAM10000_images_part_1").glob("ISIC_*.jpg"))) == N_IMAGES // 2
    assert len(list((folder / "HAM10000_images_part_2").glob("ISIC_*.jpg"))) == N_IMAGES // 2
    assert_same(ham10000.load(spec(one)), ham10000.load(spec(folder)))
    assert_same(ham10000.load(spec(one / "HAM10000_metadata.csv")), ham10000.load(spec(one)))  # a csv path works


def test_a_second_copy_of_an_image_is_ignored(tmp_path: Path, folder: Path) -> None:
    """Some archives hold the image folders twice, in two spellings: the first in sorted order is read."""
    data = copy(folder, tmp_path)
    image_id = rows(data)[0]["image_id"]
    original = next(data.glob(f"*/{image_id}.jpg"))
    (data / "ham10000_images_part_1").mkdir()
    Image.new("RGB", (64, 48), (0, 255, 0)).save(data / "ham10000_images_part_1" / f"{image_id}.jpg")
    assert original.parent.name < "ham10000_images_part_1"
    assert_same(ham10000.load(spec(data)), ham10000.load(spec(folder)))


def test_class_balance_is_recorded_and_printable(folder: Path) -> None:
    splits = ham10000.load(spec(folder))
    counts = splits.train.preprocessing["class_counts"]
    assert counts == {
        "train": {c: int((splits.train.y == k).sum()) for k, c in enumerate(CLASSES)},
        "test": {c: int((splits.test.y == k).sum()) for k, c in enumerate(CLASSES)},
    }
    assert splits.test.preprocessing == splits.train.preprocessing
    json.dumps(splits.train.preprocessing)  # lands in the exported model's metadata
    table = format_class_balance(splits.train.preprocessing).splitlines()
    assert table[0].split() == ["class", "train", "test"] and len(table) == 2 + len(CLASSES)
    assert table[1].split()[:2] == ["akiec", str(counts["train"]["akiec"])]
    assert table[-1].split() == ["total", str(len(splits.train)), str(len(splits.test))]


def test_subsample_keeps_a_seeded_subset_with_unchanged_ids(folder: Path) -> None:
    full = ham10000.load(spec(folder))
    small = ham10000.load(spec(folder, subsample=60, seed=2))
    ids = np.concatenate([small.train.ids, small.test.ids])
    assert len(ids) == 60 and set(ids) <= set(range(N_IMAGES))
    lookup = {
        int(i): (x, y) for part in (full.train, full.test) for i, x, y in zip(part.ids, part.X, part.y, strict=True)
    }
    for i, x, y in zip(small.train.ids, small.train.X, small.train.y, strict=True):
        assert np.array_equal(lookup[int(i)][0], x) and lookup[int(i)][1] == y
    assert_same(small, ham10000.load(spec(folder, subsample=60, seed=2)))


def test_the_shipped_spec_is_valid() -> None:
    shipped = load_spec("ham10000")
    assert isinstance(shipped.data, Ham10000Data) and shipped.data.path.is_absolute() and shipped.model.arch == "cnn"
    assert shipped.property.epsilon == [0.002, 0.005, 0.01] and shipped.unlearning.method == "sisa"


# ------------------------------------------------------------------------------------------ errors
def test_missing_data_names_the_files_and_the_source(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        ham10000.load(spec(tmp_path / "nowhere"))
    assert_one_line_error(info, "HAM10000_metadata.csv", "HAM10000_images_part_1", SOURCE, "no such folder")
    with pytest.raises(DataError) as info:
        ham10000.load(spec(tmp_path))
    assert_one_line_error(info, "no HAM10000_metadata.csv", str(tmp_path), SOURCE)


def test_missing_images_are_counted_and_the_first_named(tmp_path: Path, folder: Path) -> None:
    data = copy(folder, tmp_path)
    table = rows(data)
    gone = [table[i]["image_id"] for i in (3, 10, 40)]
    for image_id in gone:
        next(data.glob(f"*/{image_id}.jpg")).unlink()
    with pytest.raises(DataError) as info:
        ham10000.load(spec(data))
    assert_one_line_error(info, "3 of the 120 images", f"(first: {gone[0]})", SOURCE)
    shutil.rmtree(data / "HAM10000_images_part_2")  # only one of the release's two archives unpacked
    with pytest.raises(DataError) as info:
        ham10000.load(spec(data))
    assert_one_line_error(info, "HAM10000_images_part_2", "missing")


@pytest.mark.parametrize("column", ["lesion_id", "image_id", "dx"])
def test_a_csv_without_a_needed_column_is_named(tmp_path: Path, folder: Path, column: str) -> None:
    data = copy(folder, tmp_path)
    write_rows(data, [{k: v for k, v in r.items() if k != column} for r in rows(data)])
    with pytest.raises(DataError) as info:
        ham10000.load(spec(data))
    assert_one_line_error(info, f"no column {column}", "HAM10000_metadata.csv")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda r: r[0].update(dx="melanoma"), "unknown dx 'melanoma'"),
        (lambda r: r[1].update(lesion_id=""), "data row 1 has no lesion_id"),
        (lambda r: r[2].update(image_id=r[0]["image_id"]), "appears in more than one row"),
        (lambda r: r.clear(), "no rows"),
    ],
    ids=["unknown-dx", "no-lesion", "duplicate-image", "no-rows"],
)
def test_bad_rows_are_one_line_errors(tmp_path: Path, folder: Path, change: Any, needle: str) -> None:
    data = copy(folder, tmp_path)
    table = rows(data)
    header = list(table[0])
    change(table)
    with open(data / "HAM10000_metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
    with pytest.raises(DataError) as info:
        ham10000.load(spec(data))
    assert_one_line_error(info, needle)


@pytest.mark.parametrize("content", [b"this is not a jpeg", b"\xff\xd8\xff\xe0" + bytes(40)], ids=["text", "truncated"])
def test_a_file_that_is_no_image_is_named(tmp_path: Path, folder: Path, content: bytes) -> None:
    data = copy(folder, tmp_path)
    file = next(data.glob(f"*/{rows(data)[0]['image_id']}.jpg"))
    file.write_bytes(content)
    with pytest.raises(DataError) as info:
        ham10000.load(spec(data))
    assert_one_line_error(info, str(file), "cannot read it as an image")


def test_an_unreadable_csv_is_a_one_line_error(tmp_path: Path, folder: Path) -> None:
    data = copy(folder, tmp_path)
    (data / "HAM10000_metadata.csv").write_bytes(b"")
    with pytest.raises(DataError) as info:
        ham10000.load(spec(data))
    assert_one_line_error(info, "HAM10000_metadata.csv")


# -------------------------------------------------------------------------------------------- study
def test_the_study_runs_on_ham10000(tmp_path: Path) -> None:
    """The whole grid on HAM10000-format files (8x8 images): the tables exist, every cell keeps
    certified <= PGD <= clean, and the models beat chance."""
    write_ham10000(tmp_path / "data", 240, seed=0)
    run_spec = tiny_image_study_spec(
        "ham10000-tiny", {"dataset": "ham10000", "path": str(tmp_path / "data"), "image_size": 8, "samples": 10}, 0.005
    )
    result = study(run_spec, tmp_path / "out", progress=False, echo=lambda _: None)
    assert_study_is_whole(result, 1.5 / len(CLASSES))  # well above chance
