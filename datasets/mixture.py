"""The seed's synthetic Gaussian mixture: K classes in d dimensions, class means `separation` stds apart.

Generated from the seed alone, so it needs no files: the embedded default data set.
"""

from __future__ import annotations

import numpy as np

from uverify.datasets.base import Dataset, Domain, Splits, stratified_split
from uverify.datasets.preprocess import MinMaxScaler
from uverify.specs.schema import MixtureData


def class_means(classes: int, dims: int, separation: float, rng: np.random.Generator) -> np.ndarray:
    """K means whose closest pair lies exactly `separation` apart, in a random orientation."""
    if classes <= dims:
        means = np.eye(classes, dims) * (separation / np.sqrt(2.0))
    else:
        means = rng.normal(size=(classes, dims))
        gaps = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=-1)
        np.fill_diagonal(gaps, np.inf)
        means *= separation / gaps.min()
    rotation, _ = np.linalg.qr(rng.normal(size=(dims, dims)))
    return means @ rotation


def load(spec: MixtureData) -> Splits:
    rng = np.random.default_rng(spec.seed)
    means = class_means(spec.classes, spec.dims, spec.separation * spec.std, rng)
    y = rng.permutation(np.arange(spec.n_samples) % spec.classes).astype(np.int64)
    raw = means[y] + spec.std * rng.normal(size=(spec.n_samples, spec.dims))
    ids = np.arange(spec.n_samples, dtype=np.int64)
    train_idx, test_idx = stratified_split(spec.n_samples, y, spec.test_fraction, spec.seed)

    scaler = MinMaxScaler.fit(raw[train_idx])
    X = scaler.transform(raw)
    domain = Domain.box((spec.dims,), 0.0, 1.0)
    names = [f"class_{k}" for k in range(spec.classes)]
    prep = {"kind": "mixture", "scaler": scaler.to_json()}

    def part(idx: np.ndarray) -> Dataset:
        return Dataset("mixture", ids[idx], X[idx], y[idx], names, domain, prep)

    return Splits(part(train_idx), part(test_idx))
