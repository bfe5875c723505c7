"""The hand-written splits and AUC equal scikit-learn's, so avoiding its import changed no result."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from uverify.datasets.base import stratified_split, stratified_subset
from uverify.unlearning.metrics import roc_auc


def _cases(count: int) -> list[tuple[np.ndarray, int]]:
    rng = np.random.default_rng(0)
    cases = []
    for k in range(count):
        classes = int(rng.integers(2, 7))
        n = int(rng.integers(classes * 4, 400))
        weights = rng.dirichlet(np.ones(classes)) if k % 2 else np.ones(classes) / classes
        y = rng.choice(classes, size=n, p=weights)
        y[:classes] = np.arange(classes)  # every class present
        y[classes : 2 * classes] = np.arange(classes)  # at least twice
        cases.append((y, k))
    return cases


@pytest.mark.parametrize("fraction", [0.2, 0.25, 0.5, 0.13])
def test_stratified_split_is_sklearns(fraction: float) -> None:
    for y, seed in _cases(40):
        train, test = stratified_split(len(y), y, fraction, seed)
        ref_train, ref_test = train_test_split(np.arange(len(y)), test_size=fraction, random_state=seed, stratify=y)
        assert np.array_equal(train, np.sort(ref_train)) and np.array_equal(test, np.sort(ref_test)), (len(y), seed)


def test_unstratified_split_is_sklearns() -> None:
    y = np.array([0] * 30 + [1])  # a class seen once: no stratification
    for seed in range(10):
        train, test = stratified_split(len(y), y, 0.3, seed)
        ref_train, ref_test = train_test_split(np.arange(len(y)), test_size=0.3, random_state=seed)
        assert np.array_equal(train, np.sort(ref_train)) and np.array_equal(test, np.sort(ref_test))


def test_stratified_subset_is_sklearns() -> None:
    for y, seed in _cases(40):
        for size in (len(y) // 3, len(y) // 2 + 1, 2 * len(y) // 3):
            keep = stratified_subset(y, size, seed)
            ref, _ = train_test_split(np.arange(len(y)), train_size=size, random_state=seed, stratify=y)
            assert np.array_equal(keep, np.sort(ref)), (len(y), size, seed)


def test_roc_auc_is_sklearns_bit_for_bit_with_ties() -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        n = int(rng.integers(4, 300))
        truth = rng.integers(0, 2, n)
        truth[:2] = [0, 1]
        scores = np.round(rng.normal(size=n), int(rng.integers(0, 3)))  # rounding makes ties
        assert roc_auc(truth, scores) == roc_auc_score(truth, scores)  # to the last bit
        losses = rng.random(n).astype(np.float32)  # what the MIA scores: per-sample losses
        assert roc_auc(truth, losses) == roc_auc_score(truth, losses)
