"""Mini-ImageNet (Vinyals et al. 2016): 100 ImageNet classes of 600 images, in either common layout.

(a) csv: split files of `filename,label` rows over an `images/` folder, as Ravi & Larochelle's
    train.csv, val.csv and test.csv (https://github.com/twitter/meta-learning-lstm, data/miniImagenet)
    lay them out. Their three files hold disjoint classes (64/16/20, for few-shot learning), so the loader
    reads the UNION of the split files in the folder and makes its own seeded, stratified train/test split:
    train.csv, val.csv and test.csv where any exist, otherwise every *.csv in the folder. `spec.path` may
    also name one csv, and then only its rows are read. An image is looked up as images/<filename>,
    images/<label>/<filename> (some copies sort images/ by class) or <filename> beside the csv.
(b) folders: one folder per class (torchvision's ImageFolder), `path/<class>/*.jpg|jpeg|png`, any case.
    Files with other suffixes are skipped, as ImageFolder skips them, and so are hidden files (macOS's
    "._name.jpg" companions).

The csv layout is tried first (its images/ folder would otherwise pass for a class). The images come from
ImageNet (https://image-net.org); nothing is downloaded automatically.

Sample ids are positions in the sorted list of (label, filename) pairs of the whole data set, taken
before `classes` or `subsample` thin it, so an id names the same image under any spec on the same files.
`classes` keeps the first N class names in sorted order, `subsample` a seeded stratified share of their
images; the seeded split is stratified with `test_fraction`. Images are decoded and resized one at a time
as `uverify.datasets.images.read_image` does it (Pillow, BILINEAR, RGB), to float32 (3, S, S) in [0, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from uverify.datasets.base import Dataset, Domain, Splits, class_counts, stratified_split, stratified_subset
from uverify.datasets.images import IMAGE_SUFFIXES, RESAMPLE, read_images
from uverify.errors import DataError, one_line
from uverify.specs.schema import MiniImagenetData

SPLIT_FILES = ("train.csv", "val.csv", "test.csv")
IMAGE_FOLDER = "images"
COLUMNS = ("filename", "label")
SOURCE = (
    "images from ImageNet (https://image-net.org); split csvs from Ravi & Larochelle "
    "(https://github.com/twitter/meta-learning-lstm, data/miniImagenet)"
)


def find_layout(path: Path) -> tuple[str, list[Path]]:
    """("csv", the csv files) or ("folders", the class folders) for `path`; a DataError if neither."""
    path = Path(path).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path}: not a csv of filename,label rows nor a folder (Mini-ImageNet, {SOURCE})")
        return "csv", [path]
    if not path.is_dir():
        raise DataError(
            f"Mini-ImageNet data not found: no folder {path}; it should hold train.csv, val.csv, test.csv "
            f"(filename,label) and an images/ folder, or one folder of images per class ({SOURCE})"
        )
    named = [path / name for name in SPLIT_FILES if (path / name).is_file()]
    csvs = named or sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if csvs:
        return "csv", csvs
    classes = [d for d in sorted(path.iterdir()) if d.is_dir() and not d.name.startswith(".") and _images_in(d)]
    if classes:
        return "folders", classes
    raise DataError(
        f"no Mini-ImageNet in {path}: expected train.csv, val.csv, test.csv (filename,label) with an images/ "
        f"folder, or one folder of .jpg/.png images per class ({SOURCE})"
    )


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (ValueError, OSError) as err:  # pandas' parser and decoding errors are ValueErrors
        raise DataError(f"{path}: cannot read it as a Mini-ImageNet csv ({one_line(err)})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise DataError(f"{path}: no column {', '.join(missing)} (a Mini-ImageNet split csv has filename,label rows)")
    out = pd.DataFrame({c: table[c].astype(str).str.strip() for c in COLUMNS})
    empty = np.flatnonzero(((out["filename"] == "") | (out["label"] == "")).to_numpy())
    if len(empty):
        raise DataError(f"{path}: data row {empty[0]} has no filename or no label")
    return out


def from_csvs(csvs: list[Path]) -> list[tuple[str, str, Path]]:
    """(label, filename, file) for every row of the csvs; a file missing from images/ is an error."""
    root = csvs[0].parent
    table = pd.concat([_read_csv(p) for p in csvs], ignore_index=True).drop_duplicates()
    twice = table["filename"].duplicated()
    if twice.any():
        raise DataError(f"{root}: {table['filename'][twice].iloc[0]} is listed with two labels in {len(csvs)} csv(s)")
    images = root / IMAGE_FOLDER
    rows, missing = [], []
    for filename, label in zip(table["filename"], table["label"], strict=True):
        places = (images / filename, images / label / filename, root / filename)
        file = next((f for f in places if f.is_file()), None)
        if file is None:
            missing.append(filename)
        else:
            rows.append((label, filename, file))
    if missing:
        names = ", ".join(p.name for p in csvs)
        raise DataError(
            f"Mini-ImageNet: {len(missing)} of the {len(table)} images that {names} list are missing from "
            f"{images} (first: {missing[0]}; {SOURCE})"
        )
    if not rows:
        raise DataError(f"{root}: the csvs {', '.join(p.name for p in csvs)} list no images")
    return rows


def from_folders(folders: list[Path]) -> list[tuple[str, str, Path]]:
    return [(folder.name, file.name, file) for folder in folders for file in _images_in(folder)]


def load(spec: MiniImagenetData) -> Splits:
    """Train/test splits of the first `classes` classes, as the module says."""
    layout, sources = find_layout(spec.path)
    listed = from_csvs(sources) if layout == "csv" else from_folders(sources)
    listed.sort(key=lambda row: (row[0], row[1]))
    names = sorted({label for label, _, _ in listed})
    if spec.classes is not None:
        if spec.classes > len(names):
            raise DataError(f"Mini-ImageNet: data.classes is {spec.classes}, but {spec.path} holds {len(names)}")
        names = names[: spec.classes]
    index = {name: k for k, name in enumerate(names)}
    ids = np.asarray([i for i, row in enumerate(listed) if row[0] in index], dtype=np.int64)
    files = [listed[i][2] for i in ids]
    y = np.asarray([index[listed[i][0]] for i in ids], dtype=np.int64)
    if spec.subsample is not None and spec.subsample < len(ids):
        keep = stratified_subset(y, spec.subsample, spec.seed)
        ids, y, files = ids[keep], y[keep], [files[k] for k in keep]
    try:
        train_idx, test_idx = stratified_split(len(ids), y, spec.test_fraction, spec.seed)
    except ValueError as err:
        raise DataError(f"Mini-ImageNet: cannot split {len(ids)} images into train and test ({err})") from None

    size = int(spec.image_size)
    domain = Domain.box((3, size, size), 0.0, 1.0)
    prep: dict[str, Any] = {
        "kind": "mini_imagenet",
        "layout": layout,
        "sources": [p.name for p in sources] if layout == "csv" else f"{len(sources)} class folders",
        "image_size": size,
        "resample": RESAMPLE,
        "scale": 1.0 / 255.0,
        "clip": [0.0, 1.0],
        "ids": "position in the sorted (label, filename) list of every image, before classes and subsample",
        "classes": spec.classes,
        "subsample": spec.subsample,
        "seed": spec.seed,
        "class_counts": {"train": class_counts(y[train_idx], names), "test": class_counts(y[test_idx], names)},
    }

    def part(idx: np.ndarray) -> Dataset:
        X = read_images([files[k] for k in idx], size)
        return Dataset("mini_imagenet", ids[idx], X, y[idx], list(names), domain, prep)

    return Splits(part(train_idx), part(test_idx))
