from __future__ import annotations

import numpy as np
import pytest

from uverify.datasets import load, registered
from uverify.datasets.mixture import class_means
from uverify.specs.schema import DigitsData, MixtureData


def test_registry_lists_the_foundation_data_sets() -> None:
    assert {"mixture", "digits", "loan"} <= set(registered())


@pytest.mark.parametrize("spec", [MixtureData(dataset="mixture", n_samples=500), DigitsData(dataset="digits")])
def test_splits_are_deterministic_disjoint_and_inside_the_domain(spec) -> None:
    a, b = load(spec), load(spec)
    for part_a, part_b in ((a.train, b.train), (a.test, b.test)):
        np.testing.assert_array_equal(part_a.ids, part_b.ids)
        np.testing.assert_array_equal(part_a.X, part_b.X)
        np.testing.assert_array_equal(part_a.y, part_b.y)
        assert part_a.X.dtype == np.float32 and part_a.y.dtype == np.int64 and part_a.ids.dtype == np.int64
        assert part_a.domain.contains(part_a.X).all()
    assert not set(a.train.ids) & set(a.test.ids)
    total = len(a.train) + len(a.test)
    assert abs(len(a.test) / total - spec.test_fraction) < 0.01
    # stratified: every class on both sides, in about the same share
    train_share = np.bincount(a.train.y) / len(a.train)
    test_share = np.bincount(a.test.y) / len(a.test)
    assert np.abs(train_share - test_share).max() < 0.03


def test_other_seed_other_split() -> None:
    a = load(MixtureData(dataset="mixture", n_samples=500, seed=0))
    b = load(MixtureData(dataset="mixture", n_samples=500, seed=1))
    assert not np.array_equal(a.test.ids, b.test.ids)


def test_mixture_shapes_preprocessing_and_ids() -> None:
    spec = MixtureData(dataset="mixture", classes=5, dims=3, n_samples=1000)
    splits = load(spec)
    assert splits.train.input_shape == (3,) and splits.train.num_classes == 5
    assert np.array_equal(np.sort(np.concatenate([splits.train.ids, splits.test.ids])), np.arange(1000))
    # min-max fitted on train only: train spans exactly [0, 1] per feature
    assert np.allclose(splits.train.X.min(0), 0.0) and np.allclose(splits.train.X.max(0), 1.0)
    assert splits.train.preprocessing["scaler"]["kind"] == "minmax"
    np.testing.assert_array_equal(splits.train.domain.lower, np.zeros(3, np.float32))


@pytest.mark.parametrize(("classes", "dims"), [(3, 10), (8, 2)])
def test_class_means_are_separation_apart(classes: int, dims: int) -> None:
    means = class_means(classes, dims, 4.0, np.random.default_rng(0))
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)
    np.fill_diagonal(gaps, np.inf)
    assert gaps.min() == pytest.approx(4.0)


def test_digits_are_images_in_the_unit_box() -> None:
    splits = load(DigitsData(dataset="digits"))
    assert splits.train.input_shape == (1, 8, 8)
    assert splits.train.class_names == [str(d) for d in range(10)]
    assert len(splits.train) + len(splits.test) == 1797
    assert splits.train.X.max() == 1.0 and splits.train.X.min() == 0.0


def test_without_removes_exactly_the_ids() -> None:
    train = load(MixtureData(dataset="mixture", n_samples=200)).train
    gone = train.ids[:5]
    kept = train.without(gone)
    assert len(kept) == len(train) - 5 and not set(gone) & set(kept.ids)
