"""Fitted preprocessing, recorded as JSON so an exported model states the domain it was trained in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MinMaxScaler:
    """Maps each feature's training range onto [0, 1] and clips anything outside it."""

    low: np.ndarray
    high: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray) -> MinMaxScaler:
        return cls(X.min(axis=0), X.max(axis=0))

    def transform(self, X: np.ndarray) -> np.ndarray:
        span = np.where(self.high > self.low, self.high - self.low, 1.0)
        return np.clip((X - self.low) / span, 0.0, 1.0).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "minmax", "low": self.low.tolist(), "high": self.high.tolist(), "clip": [0.0, 1.0]}


@dataclass(frozen=True)
class StandardScaler:
    """Standardises each feature with the training mean and std, then clips to [-clip, clip]."""

    mean: np.ndarray
    std: np.ndarray
    clip: float

    @classmethod
    def fit(cls, X: np.ndarray, clip: float) -> StandardScaler:
        std = X.std(axis=0)
        return cls(X.mean(axis=0), np.where(std > 0, std, 1.0), clip)

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.clip((X - self.mean) / self.std, -self.clip, self.clip).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "standard",
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "clip": [-self.clip, self.clip],
        }
