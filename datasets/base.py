"""What every data set loader returns, and the registry that finds the loader for a spec.

Sample ids are stable integers (a deletion request names them), the input domain is the box the
preprocessed features live in (verification intersects every L_p ball with it), and the fitted
preprocessing is recorded so that an exported model carries it.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from uverify.errors import DataError

if TYPE_CHECKING:  # the schema pulls in pydantic, which importing the data set types need not
    from uverify.specs.schema import DataSpec


@dataclass(frozen=True)
class Domain:
    """Per-feature bounds of the preprocessed input, shaped like one sample."""

    lower: np.ndarray
    upper: np.ndarray

    def __post_init__(self) -> None:
        if self.lower.shape != self.upper.shape or np.any(self.lower > self.upper):
            raise DataError("input domain: lower and upper bounds disagree in shape or order")

    def contains(self, x: np.ndarray, atol: float = 1e-6) -> np.ndarray:
        """Per-sample: does every feature of x lie in the box (within atol)?"""
        flat = x.reshape(len(x), -1)
        lo, hi = self.lower.reshape(-1), self.upper.reshape(-1)
        return np.all((flat >= lo - atol) & (flat <= hi + atol), axis=1)

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": list(self.lower.shape),
            "lower": self.lower.reshape(-1).tolist(),
            "upper": self.upper.reshape(-1).tolist(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Domain:
        shape = tuple(obj["shape"])
        lower = np.asarray(obj["lower"], dtype=np.float32).reshape(shape)
        upper = np.asarray(obj["upper"], dtype=np.float32).reshape(shape)
        return cls(lower, upper)

    @classmethod
    def box(cls, shape: tuple[int, ...], low: float, high: float) -> Domain:
        return cls(np.full(shape, low, np.float32), np.full(shape, high, np.float32))


@dataclass(frozen=True)
class Dataset:
    """One split: ids (int64), features X (float32, N x input_shape), labels y (int64)."""

    name: str
    ids: np.ndarray
    X: np.ndarray
    y: np.ndarray
    class_names: list[str]
    domain: Domain
    preprocessing: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.ids) == len(self.X) == len(self.y)):
            raise DataError(f"{self.name}: ids, X and y differ in length")
        if self.X.dtype != np.float32 or self.y.dtype != np.int64 or self.ids.dtype != np.int64:
            raise DataError(f"{self.name}: expected float32 X and int64 ids and y")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.X.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, mask_or_index: np.ndarray) -> Dataset:
        return Dataset(
            self.name,
            self.ids[mask_or_index],
            self.X[mask_or_index],
            self.y[mask_or_index],
            self.class_names,
            self.domain,
            self.preprocessing,
        )

    def without(self, ids: np.ndarray) -> Dataset:
        """This split less the given sample ids (a deletion request)."""
        return self.subset(~np.isin(self.ids, ids))


@dataclass(frozen=True)
class Splits:
    train: Dataset
    test: Dataset

    def split(self, name: str) -> Dataset:
        return self.train if name == "train" else self.test


def class_counts(y: np.ndarray, names: Sequence[str]) -> dict[str, int]:
    return {name: int(n) for name, n in zip(names, np.bincount(y, minlength=len(names)), strict=True)}


def format_class_balance(preprocessing: dict[str, Any]) -> str:
    """A small table of `preprocessing["class_counts"]`: per class, its train and test counts and shares."""
    counts: dict[str, dict[str, int]] = preprocessing.get("class_counts", {})
    parts = list(counts)
    names = list(dict.fromkeys(n for part in parts for n in counts[part]))
    totals = {p: sum(counts[p].values()) or 1 for p in parts}
    width = max([len("class"), *(len(n) for n in names)])
    lines = [f"{'class':<{width}}" + "".join(f"{p:>16}" for p in parts)]
    for name in names:
        cells = "".join(
            f"{counts[p].get(name, 0):>8} ({100 * counts[p].get(name, 0) / totals[p]:4.1f}%)" for p in parts
        )
        lines.append(f"{name:<{width}}{cells}")
    lines.append(f"{'total':<{width}}" + "".join(f"{sum(counts[p].values()):>16}" for p in parts))
    return "\n".join(lines)


def stratified_subset(y: np.ndarray, size: int, seed: int) -> np.ndarray:
    """`size` sorted row indices, a seeded choice stratified by y (plain random where a class is too rare)."""
    if size >= len(y):
        return np.arange(len(y))
    counts = np.bincount(y)
    classes = int((counts > 0).sum())
    stratify = y if counts[counts > 0].min() >= 2 and classes <= size <= len(y) - classes else None
    keep, _ = _shuffle_split(len(y), size, len(y) - size, stratify, seed)
    return np.sort(keep)


def stratified_split(n: int, y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified row indices (train, test), each sorted so ids keep their file order."""
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 else None
    n_test = math.ceil(test_fraction * n)
    train_idx, test_idx = _shuffle_split(n, n - n_test, n_test, stratify, seed)
    return np.sort(train_idx), np.sort(test_idx)


# Written by hand rather than calling scikit-learn's `train_test_split`: importing sklearn costs every
# command 1-2 s of start-up (it pulls in scipy.stats and pandas) for these few lines. The draw is the
# one `train_test_split(..., random_state=seed, stratify=...)` makes, so every split, and every result
# built on one, is unchanged: tests/datasets/test_splits.py compares the two on many random cases.
def _shuffle_split(
    n: int, n_train: int, n_test: int, stratify: np.ndarray | None, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test) of sizes n_train, n_test, unsorted; per class in proportion when
    `stratify` is given."""
    rng = np.random.RandomState(seed)
    if stratify is None:
        order = rng.permutation(n)
        return order[n_test : n_test + n_train], order[:n_test]
    _, y = np.unique(stratify, return_inverse=True)
    counts = np.bincount(y)
    members = np.split(np.argsort(y, kind="mergesort"), np.cumsum(counts)[:-1])
    train_per_class = _approximate_mode(counts, n_train, rng)
    test_per_class = _approximate_mode(counts - train_per_class, n_test, rng)
    train: list[int] = []
    test: list[int] = []
    for rows, k_train, k_test in zip(members, train_per_class, test_per_class, strict=True):
        shuffled = rows.take(rng.permutation(len(rows)), mode="clip")
        train.extend(shuffled[:k_train])
        test.extend(shuffled[k_train : k_train + k_test])
    return np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)


def _approximate_mode(counts: np.ndarray, draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `draws` to take from each class: the proportional share rounded down, the rest given
    to the classes with the largest remainders (ties broken at random)."""
    continuous = counts / counts.sum() * draws
    floored = np.floor(continuous)
    missing = int(draws - floored.sum())
    if missing > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            now = min(len(tied), missing)
            floored[rng.choice(tied, size=now, replace=False)] += 1
            missing -= now
            if missing == 0:
                break
    return floored.astype(int)


Loader = Callable[["DataSpec"], Splits]  # each takes the one spec class its registry name selects
_LOADERS: dict[str, str] = {
    # name -> module; imported on use so that loading one data set never imports another's deps
    "mixture": "uverify.datasets.mixture",
    "digits": "uverify.datasets.digits",
    "loan": "uverify.datasets.loan",
    "svhn": "uverify.datasets.svhn",
    "ham10000": "uverify.datasets.ham10000",
    "tweets": "uverify.datasets.tweets",
    "mini_imagenet": "uverify.datasets.mini_imagenet",
}


def registered() -> list[str]:
    return list(_LOADERS)


def load(data_spec: DataSpec) -> Splits:
    """Load the data set a spec's `data:` section names; each module exposes `load(spec) -> Splits`."""
    name = data_spec.dataset
    if name not in _LOADERS:
        raise DataError(f"data set {name!r} is not registered (known: {', '.join(_LOADERS)})")
    module = importlib.import_module(_LOADERS[name])
    splits: Splits = module.load(data_spec)
    return splits
