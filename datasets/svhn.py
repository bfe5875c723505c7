"""SVHN's cropped digits (format 2): train_32x32.mat and test_32x32.mat, as 3x32x32 images in [0, 1].

The files are MATLAB v5 .mat files from http://ufldl.stanford.edu/housenumbers/ ("Format 2: cropped
digits"), read with `scipy.io.loadmat`: `X` is uint8 of shape (32, 32, 3, N), image n being
X[row, col, channel, n], and `y` is (N, 1) with the digits 1..9 as themselves and 0 as 10. They are never
downloaded automatically: `spec.path` names the folder that holds both (or either file in it).
extra_32x32.mat (531k easier digits) is not read.

The files' own train/test split is used, so `test_fraction` is unused. `subsample` keeps that many
training images, a seeded choice stratified by digit; the test file is always read whole. Sample ids
never depend on the subsample: training image n (the n-th image of train_32x32.mat, 0-based) has id n,
and test image n has id N_train + n, where N_train is the number of images in train_32x32.mat.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from uverify.datasets.base import Dataset, Domain, Splits, class_counts, stratified_subset
from uverify.errors import DataError, one_line
from uverify.specs.schema import SvhnData

TRAIN_FILE = "train_32x32.mat"
TEST_FILE = "test_32x32.mat"
SOURCE = "http://ufldl.stanford.edu/housenumbers/ (SVHN, format 2: cropped digits)"
CLASS_NAMES = [str(d) for d in range(10)]
SHAPE = (32, 32, 3)  # rows, columns, channels of one image in the file
PIXEL_MAX = 255.0
CHUNK = 4096  # images converted to float32 at a time, so no full-size float64 copy ever exists
_READ_ERRORS = (MatReadError, ValueError, TypeError, OSError, EOFError, IndexError, KeyError, zlib.error)


def resolve_files(path: Path) -> tuple[Path, Path]:
    """The train and test .mat files: in the folder `path`, or beside the file `path` names."""
    path = Path(path).expanduser()
    folder = path.parent if path.is_file() else path
    files = (folder / TRAIN_FILE, folder / TEST_FILE)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        where = f"in the folder {folder}" if folder.is_dir() else f"at {folder} (no such folder)"
        raise DataError(
            f"SVHN data not found: no {' or '.join(missing)} {where}; download {TRAIN_FILE} and {TEST_FILE} "
            f"from {SOURCE} into one folder and point data.path at it (it is not downloaded automatically)"
        )
    return files


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """`X` as stored (uint8, 32 x 32 x 3 x N) and the labels as int64 digits 0..9 (10 read as 0)."""
    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except NotImplementedError:  # scipy's answer to a v7.3 (HDF5) file
        raise DataError(f"{path}: a MATLAB v7.3 file; SVHN ships v5 .mat files ({SOURCE})") from None
    except _READ_ERRORS as err:
        raise DataError(f"{path}: cannot read it as an SVHN .mat file ({one_line(err)})") from None
    missing = [k for k in ("X", "y") if k not in mat]
    if missing:
        raise DataError(f"{path}: no variable {' or '.join(missing)} (an SVHN .mat file holds X and y; {SOURCE})")
    X, y = mat["X"], mat["y"]
    if X.ndim != 4 or X.shape[:3] != SHAPE or X.dtype != np.uint8:
        raise DataError(f"{path}: X is {X.dtype} of shape {X.shape}; expected uint8 of shape (32, 32, 3, N)")
    if y.size != X.shape[3] or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{path}: y has {y.size} {y.dtype} labels for {X.shape[3]} images")
    labels = np.asarray(y, dtype=np.float64).reshape(-1)
    bad = ~np.isin(labels, np.arange(1, 11))
    if bad.any():
        raise DataError(f"{path}: label {labels[bad][0]:g} is not a digit 1..10 (SVHN writes 0 as 10)")
    return X, labels.astype(np.int64) % 10


def images(X: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The images X[..., columns] as float32 (n, 3, 32, 32) in [0, 1], converted a chunk at a time."""
    out = np.empty((len(columns), SHAPE[2], SHAPE[0], SHAPE[1]), dtype=np.float32)
    for lo in range(0, len(columns), CHUNK):
        block = X[:, :, :, columns[lo : lo + CHUNK]].transpose(3, 2, 0, 1)  # (n, channel, row, col)
        out[lo : lo + CHUNK] = block.astype(np.float32) / np.float32(PIXEL_MAX)
    return out


def load(spec: SvhnData) -> Splits:
    """The files' train and test images; `subsample` thins the training images only."""
    train_path, test_path = resolve_files(spec.path)
    X_train, y_train = read_mat(train_path)
    n_train = len(y_train)
    keep = np.arange(n_train)
    if spec.subsample is not None and spec.subsample < n_train:
        keep = stratified_subset(y_train, spec.subsample, spec.seed)
    train_X = images(X_train, keep)
    del X_train  # the file's uint8 array: the test file is read only once it is gone
    X_test, y_test = read_mat(test_path)
    test_X = images(X_test, np.arange(len(y_test)))
    del X_test

    domain = Domain.box((3, 32, 32), 0.0, 1.0)
    prep: dict[str, Any] = {
        "kind": "svhn",
        "files": [TRAIN_FILE, TEST_FILE],
        "layout": "X[row, col, channel, n] -> (n, channel, row, col)",
        "scale": 1.0 / PIXEL_MAX,
        "clip": [0.0, 1.0],
        "labels": "y 1..9 as themselves, 10 as 0",
        "ids": f"train image n: n; test image n: {n_train} + n (the images in {TRAIN_FILE})",
        "train_images_in_file": n_train,
        "test_images_in_file": len(y_test),
        "subsample": spec.subsample,
        "seed": spec.seed,
        "test_fraction": "unused: the files' own train/test split",
        "class_counts": {
            "train": class_counts(y_train[keep], CLASS_NAMES),
            "test": class_counts(y_test, CLASS_NAMES),
        },
    }
    train = Dataset("svhn", keep.astype(np.int64), train_X, y_train[keep], list(CLASS_NAMES), domain, prep)
    test_ids = np.arange(n_train, n_train + len(y_test), dtype=np.int64)
    test = Dataset("svhn", test_ids, test_X, y_test, list(CLASS_NAMES), domain, prep)
    return Splits(train, test)
