"""Builders shared by the tests (importable because setup.cfg puts tests/ on pytest's pythonpath)."""

from __future__ import annotations

from typing import Any


def tiny_spec_dict(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "tiny",
        "data": {"dataset": "mixture", "classes": 3, "dims": 4, "n_samples": 300, "separation": 5.0, "samples": 20},
        "model": {"arch": "mlp", "hidden": [16]},
        "train": {"epochs": 5, "batch_size": 32, "lr": 0.02, "seed": 0},
        "property": {"norm": "inf", "epsilon": [0.02, 0.05]},
        "unlearning": {"method": "sisa", "sisa": {"shards": 3, "slices": 2}},
    }
    for key, value in overrides.items():
        raw[key] = value
    return raw
