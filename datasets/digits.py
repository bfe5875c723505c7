"""The 8x8 digits that ship inside the scikit-learn wheel, as 1x8x8 images scaled to [0, 1]."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from uverify.datasets.base import Dataset, Domain, Splits, stratified_split
from uverify.specs.schema import DigitsData

PIXEL_MAX = 16.0  # sklearn's digits are counts 0..16 of set pixels in a 4x4 block


def load(spec: DigitsData) -> Splits:
    bunch = load_digits()
    X = (np.asarray(bunch.images, dtype=np.float32) / PIXEL_MAX)[:, None, :, :]
    y = np.asarray(bunch.target, dtype=np.int64)
    ids = np.arange(len(y), dtype=np.int64)
    train_idx, test_idx = stratified_split(len(y), y, spec.test_fraction, spec.seed)
    domain = Domain.box((1, 8, 8), 0.0, 1.0)
    names = [str(d) for d in range(10)]
    prep = {"kind": "digits", "scale": 1.0 / PIXEL_MAX, "clip": [0.0, 1.0]}

    def part(idx: np.ndarray) -> Dataset:
        return Dataset("digits", ids[idx], X[idx], y[idx], names, domain, prep)

    return Splits(part(train_idx), part(test_idx))
