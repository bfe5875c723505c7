"""Small synthetic copies of the image data sets, written in exactly their real file formats.

SVHN, HAM10000 and Mini-ImageNet cannot ship with the package or be fetched in CI, yet the loaders must
be exercised on the real formats: MATLAB v5 .mat files with SVHN's array layout and its label 10 for the
digit 0; HAM10000's metadata csv over JPEGs in two image folders, several images per lesion; Mini-ImageNet
as split csvs over images/ or as one folder per class. The pictures are learnable on purpose (the class
sets a shape and a colour, each image adds jitter and noise), so a tiny model trained on a few of them
beats chance and a study on them means something.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from uverify.datasets.ham10000 import CLASS_NAMES as HAM_CLASSES
from uverify.datasets.ham10000 import IMAGE_FOLDERS as HAM_FOLDERS
from uverify.datasets.ham10000 import METADATA_FILE as HAM_METADATA
from uverify.datasets.svhn import TEST_FILE as SVHN_TEST
from uverify.datasets.svhn import TRAIN_FILE as SVHN_TRAIN

# ------------------------------------------------------------------------------------------- SVHN
# Seven-segment digits: which segments each digit lights (a top, b upper right, c lower right, d bottom,
# e lower left, f upper left, g middle).
SEGMENTS = ("abcdef", "bc", "abdeg", "abcdg", "bcfg", "acdfg", "acdefg", "abc", "abcdefg", "abcdfg")
DIGIT_COLOURS = np.array(
    [[255, 255, 255], [255, 80, 80], [80, 255, 80], [90, 140, 255], [255, 255, 60],
     [255, 80, 255], [60, 255, 255], [255, 170, 40], [170, 110, 255], [150, 255, 170]],
    dtype=np.float64,
)  # fmt: skip


def _segment_boxes(
    top: int, left: int, height: int = 20, width: int = 12, thick: int = 3
) -> dict[str, tuple[int, int, int, int]]:
    mid = top + height // 2
    right, bottom = left + width, top + height
    return {
        "a": (top, top + thick, left, right),
        "b": (top, mid + 1, right - thick, right),
        "c": (mid - 1, bottom, right - thick, right),
        "d": (bottom - thick, bottom, left, right),
        "e": (mid - 1, bottom, left, left + thick),
        "f": (top, mid + 1, left, left + thick),
        "g": (mid - 1, mid + 2, left, right),
    }


def svhn_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (32, 32, 3, N): a bright seven-segment digit on a dark background, jittered and noisy.

    The digit's colour depends on the digit too (a shortcut real SVHN lacks), so that a tiny model
    learns something in a few steps.
    """
    out = np.empty((32, 32, 3, len(labels)), dtype=np.uint8)
    for n, digit in enumerate(labels):
        background = rng.uniform(0, 70, size=3)
        foreground = np.clip(DIGIT_COLOURS[int(digit)] + rng.normal(0, 15, size=3), 0, 255)
        image = np.broadcast_to(background, (32, 32, 3)).copy()
        boxes = _segment_boxes(6 + int(rng.integers(-2, 3)), 10 + int(rng.integers(-2, 3)))
        for segment in SEGMENTS[int(digit)]:
            r0, r1, c0, c1 = boxes[segment]
            image[r0:r1, c0:c1] = foreground
        image += rng.normal(0.0, 12.0, size=image.shape)
        out[:, :, :, n] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return out


def write_svhn_mat(
    folder: str | Path, n_train: int, n_test: int, seed: int = 0, *, y_dtype: Literal["uint8", "double"] = "uint8"
) -> Path:
    """train_32x32.mat and test_32x32.mat in `folder`, as SVHN's format 2 lays them out.

    Each is a compressed MATLAB v5 file with X uint8 (32, 32, 3, N) and y (N, 1) holding 1..10, 10 being
    the digit 0; `y_dtype` "double" writes y as MATLAB's default class instead of uint8. Every digit
    appears at least once in a file of ten or more images.
    """
    target = Path(folder)
    target.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in ((SVHN_TRAIN, n_train), (SVHN_TEST, n_test)):
        digits = rng.permutation(np.resize(np.arange(10), n)) if n >= 10 else rng.integers(0, 10, size=n)
        y = np.where(digits == 0, 10, digits).reshape(-1, 1).astype(np.uint8 if y_dtype == "uint8" else np.float64)
        scipy.io.savemat(target / name, {"X": svhn_images(digits, rng), "y": y}, format="5", do_compression=True)
    return target


# --------------------------------------------------------------------------------------- HAM10000
# Per diagnosis: lesion colour (RGB) and radius as a share of the image height, made to differ clearly.
HAM_LOOK: dict[str, tuple[tuple[int, int, int], float]] = {
    "akiec": ((220, 50, 50), 0.30),
    "bcc": ((250, 250, 250), 0.36),
    "bkl": ((200, 150, 30), 0.42),
    "df": ((60, 150, 60), 0.30),
    "mel": ((20, 20, 30), 0.44),
    "nv": ((110, 60, 30), 0.36),
    "vasc": ((120, 40, 190), 0.32),
}
HAM_SIZE = (64, 48)  # width, height: the release's 600 x 450 at a tenth-ish, same 4:3 aspect
DX_TYPES = ("histo", "follow_up", "consensus", "confocal")
SEXES = ("male", "female", "unknown")
SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "scalp", "unknown")
SOURCES = ("vidir_modern", "rosendahl", "vienna_dermatology", "vidir_molemax")


def _ham_image(dx: str, lesion: np.random.Generator, rng: np.random.Generator) -> Image.Image:
    colour, radius = HAM_LOOK[dx]
    w, h = HAM_SIZE
    skin = np.array([225, 180, 155]) + lesion.normal(0, 10, 3)
    shade = np.asarray(colour) + lesion.normal(0, 12, 3)
    cx, cy = w / 2 + lesion.normal(0, 3), h / 2 + lesion.normal(0, 2)
    rx, ry = radius * h * lesion.uniform(0.9, 1.3), radius * h * lesion.uniform(0.8, 1.1)
    cx, cy = cx + rng.normal(0, 1.5), cy + rng.normal(0, 1.5)  # another photo of the same lesion
    image = Image.new("RGB", HAM_SIZE, tuple(int(v) for v in np.clip(skin, 0, 255)))
    ImageDraw.Draw(image).ellipse(
        (cx - rx, cy - ry, cx + rx, cy + ry), fill=tuple(int(v) for v in np.clip(shade, 0, 255))
    )
    pixels = np.asarray(image, dtype=np.float64) * rng.uniform(0.9, 1.1) + rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def write_ham10000(
    folder: str | Path, n_images: int, seed: int = 0, *, two_parts: bool = True, dataset_column: bool = False
) -> Path:
    """HAM10000_metadata.csv and the JPEGs it lists, in `folder`; returns the csv.

    Lesions hold 1 to 4 images each (every class has at least two lesions once n_images >= 14), rows
    are grouped by lesion, image ids count up from ISIC_0024306 in a shuffled order as in the release.
    `two_parts` splits the images between HAM10000_images_part_1/ and _part_2/ by image id (the Dataverse
    layout), otherwise one folder HAM10000_images/; `dataset_column` adds the later releases' `dataset`.
    """
    target = Path(folder)
    rng = np.random.default_rng(seed)
    lesions: list[tuple[str, int]] = []  # (dx, images)
    left = n_images
    while left > 0:
        k = len(lesions)
        dx = HAM_CLASSES[k % len(HAM_CLASSES)] if k < 2 * len(HAM_CLASSES) else str(rng.choice(HAM_CLASSES))
        count = min(left, int(rng.integers(1, 5)))
        lesions.append((dx, count))
        left -= count
    lesion_numbers = rng.choice(np.arange(1, 8000), size=len(lesions), replace=False)
    image_numbers = 24306 + rng.permutation(n_images)
    folders = list(HAM_FOLDERS) if two_parts else ["HAM10000_images"]
    for name in folders:
        (target / name).mkdir(parents=True, exist_ok=True)
    header = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]
    header += ["dataset"] if dataset_column else []
    rows = []
    at = 0
    for (dx, count), number in zip(lesions, lesion_numbers, strict=True):
        lesion = np.random.default_rng([seed, int(number)])
        age = "" if rng.random() < 0.03 else f"{5 * int(rng.integers(1, 18))}.0"
        facts = [str(rng.choice(DX_TYPES)), age, str(rng.choice(SEXES)), str(rng.choice(SITES))]
        source = str(rng.choice(SOURCES))  # drawn either way: the column does not change the images
        for _ in range(count):
            image_id = f"ISIC_{image_numbers[at]:07d}"
            part = folders[min(len(folders) - 1, int(image_numbers[at] - 24306) * len(folders) // n_images)]
            _ham_image(dx, lesion, rng).save(target / part / f"{image_id}.jpg", format="JPEG", quality=90)
            rows.append([f"HAM_{number:07d}", image_id, dx, *facts, *([source] if dataset_column else [])])
            at += 1
    with open(target / HAM_METADATA, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return target / HAM_METADATA


# ---------------------------------------------------------------------------------- Mini-ImageNet
MINI_SIZE = 84  # Ravi & Larochelle's images are 84 x 84
SHAPES = ("disc", "square", "triangle", "bar", "cross")


def _mini_image(k: int, rng: np.random.Generator) -> Image.Image:
    """Class k: a background hue and a shape in the opposite colour, placed and coloured with jitter."""
    hue = (k * 0.37) % 1.0
    base = np.array([np.sin(2 * np.pi * (hue + s)) for s in (0.0, 1 / 3, 2 / 3)]) * 90 + 128
    background = tuple(int(v) for v in np.clip(base + rng.normal(0, 10, 3), 0, 255))
    foreground = tuple(int(v) for v in np.clip(255 - base + rng.normal(0, 10, 3), 0, 255))
    image = Image.new("RGB", (MINI_SIZE, MINI_SIZE), background)
    draw = ImageDraw.Draw(image)
    c = MINI_SIZE / 2 + rng.normal(0, 4, 2)
    r = MINI_SIZE * rng.uniform(0.25, 0.32)
    shape = SHAPES[k % len(SHAPES)]
    if shape == "disc":
        draw.ellipse((c[0] - r, c[1] - r, c[0] + r, c[1] + r), fill=foreground)
    elif shape == "square":
        draw.rectangle((c[0] - r, c[1] - r, c[0] + r, c[1] + r), fill=foreground)
    elif shape == "triangle":
        draw.polygon([(c[0], c[1] - r), (c[0] - r, c[1] + r), (c[0] + r, c[1] + r)], fill=foreground)
    elif shape == "bar":
        draw.rectangle((c[0] - r, c[1] - r / 3, c[0] + r, c[1] + r / 3), fill=foreground)
    else:
        draw.rectangle((c[0] - r, c[1] - r / 4, c[0] + r, c[1] + r / 4), fill=foreground)
        draw.rectangle((c[0] - r / 4, c[1] - r, c[0] + r / 4, c[1] + r), fill=foreground)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, 10, (MINI_SIZE, MINI_SIZE, 3))
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def mini_imagenet_classes(classes: int | Sequence[str]) -> list[str]:
    """WordNet-id-like class names (n01532829, ...) for a class count, or the names given."""
    if isinstance(classes, int):
        return [f"n{1532829 + 1000 * k:08d}" for k in range(classes)]
    return list(classes)


def write_mini_imagenet(
    folder: str | Path,
    layout: Literal["csv", "folders"] = "csv",
    classes: int | Sequence[str] = 5,
    per_class: int = 10,
    seed: int = 0,
    *,
    csvs: Sequence[str] = ("train.csv", "val.csv", "test.csv"),
) -> Path:
    """Mini-ImageNet-style images of `classes` classes, `per_class` each (84 x 84 JPEGs), in `folder`.

    "csv": Ravi & Larochelle's layout, images/<class><8-digit index>.jpg and split csvs of filename,label
    rows, the classes dealt to the csvs in turn (disjoint, as theirs are). "folders": ImageFolder's,
    <class>/<class>_<index>.JPEG. Classes are drawn from their position in the sorted names.
    """
    target = Path(folder)
    names = mini_imagenet_classes(classes)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[tuple[str, str]]] = {name: [] for name in csvs}
    for k, name in enumerate(names):
        look = sorted(names).index(name)
        for i in range(per_class):
            image = _mini_image(look, rng)
            if layout == "csv":
                filename = f"{name}{i + 1:08d}.jpg"
                (target / "images").mkdir(parents=True, exist_ok=True)
                image.save(target / "images" / filename, format="JPEG", quality=90)
                rows[csvs[k % len(csvs)]].append((filename, name))
            else:
                (target / name).mkdir(parents=True, exist_ok=True)
                image.save(target / name / f"{name}_{i + 1}.JPEG", format="JPEG", quality=90)
    if layout == "csv":
        for csv_name, listed in rows.items():
            with open(target / csv_name, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(["filename", "label"])
                writer.writerows(listed)
    return target
