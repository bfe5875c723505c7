"""HAM10000 dermatoscopic images (https://doi.org/10.7910/DVN/DBW86T): seven diagnoses, split by lesion.

Files: HAM10000_metadata.csv (columns lesion_id, image_id, dx, dx_type, age, sex, localization; later
releases add `dataset`, and either header is read) and the images ISIC_<number>.jpg. The Harvard Dataverse
release puts the images in HAM10000_images_part_1/ and HAM10000_images_part_2/, other copies in one folder,
so every image is looked up by its image_id in any folder below `spec.path` (a copy found twice, as in
archives that hold the folders in two spellings, is read from the first path in sorted order). Nothing is
downloaded automatically.

Classes are the seven `dx` codes in a fixed order (CLASS_NAMES). Several images often show one lesion,
so the split is by lesion_id: each lesion, labelled by its diagnosis, goes wholly to train or to test, a
seeded split stratified by class over lesions, so that test accuracy is never measured on a lesion the
model saw. Images are decoded one at a time (JPEGs at reduced scale with Pillow's draft mode, never below
twice the target size), converted to RGB and resized to image_size x image_size with Pillow's BILINEAR
filter, which Pillow widens when shrinking, so it averages like torchvision's default Resize; the 4:3
images are squashed, not cropped (the lesion is rarely centred). Pixels are float32 in [0, 1], (3, S, S).
Sample ids are the 0-based data-row number in the csv. The per-class counts of train and test are kept
in `preprocessing["class_counts"]` (and so in an exported model's metadata); `format_class_balance`
prints them.

Shared helpers live in datasets/images.py (decoding, finding files) and datasets/base.py (subsets, class counts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from uverify.datasets.base import Dataset, Domain, Splits, class_counts, stratified_split, stratified_subset
from uverify.datasets.images import RESAMPLE, index_images, read_images
from uverify.errors import DataError, one_line
from uverify.specs.schema import Ham10000Data

METADATA_FILE = "HAM10000_metadata.csv"
IMAGE_FOLDERS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
SOURCE = "https://doi.org/10.7910/DVN/DBW86T (Harvard Dataverse)"
CLASS_NAMES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")  # + "dataset" in later releases
REQUIRED = ("lesion_id", "image_id", "dx")  # what the loader uses; the other columns may be absent


# ------------------------------------------------------------------------------------------ HAM10000
def resolve_metadata(path: Path) -> Path:
    """HAM10000_metadata.csv: the file `path` names, or the one in the folder `path` (or a folder below)."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for folder in [path, *sorted(d for d in path.iterdir() if d.is_dir())]:
            candidates = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_file()}
            if METADATA_FILE.lower() in candidates:
                return candidates[METADATA_FILE.lower()]
    where = f"in the folder {path}" if path.is_dir() else f"at {path} (no such folder)"
    raise DataError(
        f"HAM10000 data not found: no {METADATA_FILE} {where}; download {METADATA_FILE} and the images "
        f"({' and '.join(IMAGE_FOLDERS)}) from {SOURCE}, unpack them in one folder and point data.path at it"
    )


def read_metadata(path: Path) -> pd.DataFrame:
    """The csv's lesion_id, image_id and dx columns as stripped strings (dx lower-cased), one row per image."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (ValueError, OSError) as err:  # pandas' parser and decoding errors are ValueErrors
        raise DataError(f"{path}: cannot read it as {METADATA_FILE} ({one_line(err)})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(missing)} (HAM10000_metadata.csv has the columns {', '.join(COLUMNS)})"
        )
    if table.empty:
        raise DataError(f"{path}: no rows (expected one row per image, {SOURCE})")
    out = pd.DataFrame({c: table[c].astype(str).str.strip() for c in REQUIRED})
    out["dx"] = out["dx"].str.lower()
    for column in ("lesion_id", "image_id"):
        empty = np.flatnonzero((out[column] == "").to_numpy())
        if len(empty):
            raise DataError(f"{path}: data row {empty[0]} has no {column}")
    unknown = sorted(set(out["dx"]) - set(CLASS_NAMES))
    if unknown:
        raise DataError(f"{path}: unknown dx {unknown[0]!r} (the diagnoses are {', '.join(CLASS_NAMES)})")
    twice = out["image_id"].duplicated()
    if twice.any():
        raise DataError(f"{path}: image_id {out['image_id'][twice].iloc[0]} appears in more than one row")
    return out


def lesion_split(lesions: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test), sorted, with every lesion wholly on one side.

    The lesions (in sorted order of their ids) are split by `stratified_split`, each labelled by its most
    frequent diagnosis (the lowest class on a tie), so test holds about test_fraction of each class's lesions.
    """
    names, lesion_of_row = np.unique(lesions, return_inverse=True)
    votes = np.zeros((len(names), len(CLASS_NAMES)), dtype=np.int64)
    np.add.at(votes, (lesion_of_row, y), 1)
    try:
        _, test_lesions = stratified_split(len(names), votes.argmax(axis=1), test_fraction, seed)
    except ValueError as err:
        raise DataError(f"HAM10000: cannot split {len(names)} lesions into train and test ({err})") from None
    in_test = np.isin(lesion_of_row, test_lesions)
    return np.flatnonzero(~in_test), np.flatnonzero(in_test)


def load(spec: Ham10000Data) -> Splits:
    """Train/test splits of the images the csv lists, split by lesion as the module says."""
    csv_path = resolve_metadata(spec.path)
    root = csv_path.parent if Path(spec.path).expanduser().is_file() else Path(spec.path).expanduser()
    table = read_metadata(csv_path)
    image_ids = table["image_id"].to_numpy(dtype=str)
    found = index_images(root, image_ids)
    missing = [i for i in image_ids if i not in found]
    if missing:
        raise DataError(
            f"HAM10000: {len(missing)} of the {len(image_ids)} images that {csv_path.name} lists are missing "
            f"under {root} (first: {missing[0]}); unpack every image folder of the release "
            f"({' and '.join(IMAGE_FOLDERS)}, {SOURCE}) there"
        )
    y = np.asarray([CLASS_NAMES.index(d) for d in table["dx"]], dtype=np.int64)
    lesions = table["lesion_id"].to_numpy(dtype=str)
    rows = np.arange(len(y), dtype=np.int64)
    if spec.subsample is not None and spec.subsample < len(rows):
        rows = rows[stratified_subset(y, spec.subsample, spec.seed)]
    train_at, test_at = lesion_split(lesions[rows], y[rows], spec.test_fraction, spec.seed)
    train_rows, test_rows = rows[train_at], rows[test_at]

    size = int(spec.image_size)
    domain = Domain.box((3, size, size), 0.0, 1.0)
    prep: dict[str, Any] = {
        "kind": "ham10000",
        "image_size": size,
        "resample": RESAMPLE,
        "jpeg_draft": "decoded at the smallest DCT scale of at least 2 x image_size",
        "scale": 1.0 / 255.0,
        "clip": [0.0, 1.0],
        "split": "by lesion_id, stratified by class over lesions",
        "ids": f"0-based data-row number in {METADATA_FILE}",
        "subsample": spec.subsample,
        "seed": spec.seed,
        "lesions": {"train": len(set(lesions[train_rows])), "test": len(set(lesions[test_rows]))},
        "class_counts": {
            "train": class_counts(y[train_rows], CLASS_NAMES),
            "test": class_counts(y[test_rows], CLASS_NAMES),
        },
    }

    def part(idx: np.ndarray) -> Dataset:
        X = read_images([found[i] for i in image_ids[idx]], size)
        return Dataset("ham10000", idx, X, y[idx], list(CLASS_NAMES), domain, prep)

    return Splits(part(train_rows), part(test_rows))
