"""The preprocessing of a parsed Lending Club table, fitted on the TRAIN rows only.

Numerics are imputed with the train median, then standardised and clipped to [-clip, clip]; where
missing means "never happened", a 0/1 "<column>=missing" indicator keeps that fact. Categoricals are
one-hot over the categories seen in train, sorted (a missing or unseen category is all zeros).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from uverify.datasets.base import Domain
from uverify.datasets.loan.parsing import Parsed
from uverify.datasets.preprocess import StandardScaler


def medians(raw: np.ndarray) -> np.ndarray:
    """Per-column median of the non-missing values; 0 for a column that is missing throughout."""
    out = np.zeros(raw.shape[1], dtype=np.float64)
    for j in range(raw.shape[1]):
        present = raw[:, j][~np.isnan(raw[:, j])]
        if len(present):
            out[j] = float(np.median(present))
    return out


@dataclass(frozen=True)
class Features:
    """What was fitted on the train rows, and the feature vector it makes of any row: the numerics,
    then each categorical's one-hot block, then the missing indicators."""

    numeric: tuple[str, ...]
    medians: np.ndarray
    scaler: StandardScaler
    categories: dict[str, list[str]]  # per categorical column, its one-hot slots in order
    positions: dict[str, np.ndarray]  # per column: vocabulary code -> one-hot slot (-1: none; last: code -1)
    missing_means_never: tuple[str, ...]
    derived: dict[str, str]
    names: list[str]

    @classmethod
    def fit(cls, parsed: Parsed, train_idx: np.ndarray, clip: float) -> Features:
        raw = parsed.raw[train_idx]
        fitted_medians = medians(raw)
        scaler = StandardScaler.fit(np.where(np.isnan(raw), fitted_medians, raw), clip)
        names = list(parsed.numeric)
        positions: dict[str, np.ndarray] = {}
        categories: dict[str, list[str]] = {}
        for column, codes in parsed.codes.items():
            vocab = parsed.vocab[column]
            train_codes = np.unique(codes[train_idx])
            train_codes = train_codes[train_codes >= 0]
            order = np.argsort(vocab[train_codes].astype(str), kind="stable")
            categories[column] = [str(v) for v in vocab[train_codes][order]]
            position = np.full(len(vocab) + 1, -1, dtype=np.int64)  # last slot: missing (code -1)
            position[train_codes[order]] = np.arange(len(train_codes))
            positions[column] = position
            names += [f"{column}={v}" for v in categories[column]]
        names += [f"{column}=missing" for column in parsed.missing_means_never]
        return cls(
            parsed.numeric,
            fitted_medians,
            scaler,
            categories,
            positions,
            parsed.missing_means_never,
            parsed.derived,
            names,
        )

    def transform(self, parsed: Parsed, idx: np.ndarray) -> np.ndarray:
        """X (float32) for the rows idx of `parsed`, built per split so the full matrix never exists twice."""
        raw = parsed.raw[idx]
        never = np.isnan(raw[:, [self.numeric.index(c) for c in self.missing_means_never]])
        n_num = len(self.numeric)
        X = np.zeros((len(idx), len(self.names)), dtype=np.float32)
        X[:, :n_num] = self.scaler.transform(np.where(np.isnan(raw), self.medians, raw))
        offset = n_num
        for column, categories in self.categories.items():
            slot = self.positions[column][parsed.codes[column][idx]]  # unseen in train or missing -> -1
            rows = np.flatnonzero(slot >= 0)
            X[rows, offset + slot[rows]] = 1.0
            offset += len(categories)
        X[:, offset:] = never
        return X

    def domain(self) -> Domain:
        """[-clip, clip] for the numerics, [0, 1] for the one-hot and indicator features."""
        lower = np.zeros(len(self.names), dtype=np.float32)
        upper = np.ones(len(self.names), dtype=np.float32)
        n_num = len(self.numeric)
        lower[:n_num], upper[:n_num] = -self.scaler.clip, self.scaler.clip
        return Domain(lower, upper)

    def to_json(self) -> dict[str, Any]:
        return {
            "features": list(self.names),
            "numeric": {
                "columns": list(self.numeric),
                "medians": self.medians.tolist(),
                "missing_indicators": list(self.missing_means_never),
                "scaler": self.scaler.to_json(),
                "derived": self.derived,
            },
            "categorical": {
                "columns": list(self.categories),
                "categories": self.categories,
                "unknown": "all zeros",
            },
        }
