"""Builders shared by the tests (importable because setup.cfg puts tests/ on pytest's pythonpath)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# The public VNN-COMP instances the project's tests read: ../shared/vnncomp beside the repository, or
# $UVERIFY_VNNCOMP. They are third-party files this repository does not ship, so a machine without them
# skips those tests, naming the folder it looked in, rather than failing.
VNNCOMP = Path(os.environ.get("UVERIFY_VNNCOMP", Path(__file__).resolve().parents[1].parent / "shared" / "vnncomp"))
NO_VNNCOMP = f"the VNN-COMP instances are not at {VNNCOMP} (set UVERIFY_VNNCOMP to their folder)"


def vnncomp_file(relative: str) -> Path:
    """A file of the shared VNN-COMP instances; the test skips (saying where it looked) when it is absent."""
    path = VNNCOMP / relative
    if not path.exists():
        pytest.skip(NO_VNNCOMP)
    return path


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


def assert_one_line_error(excinfo: Any, *needles: str) -> str:
    """The error (a pytest ExceptionInfo) is one non-empty line that holds every needle."""
    message = str(excinfo.value)
    assert "\n" not in message and message
    for needle in needles:
        assert needle in message, message
    return message


def tiny_image_study_spec(name: str, data: dict[str, Any], delete_fraction: float) -> Any:
    """A study spec small enough for a test: a 4-channel cnn, 4 epochs, one epsilon, 2 SISA shards."""
    from uverify.specs.load import validate_spec

    return validate_spec(
        tiny_spec_dict(
            name=name,
            data=data,
            model={"arch": "cnn", "channels": [4], "kernel_size": 3, "stride": 2, "hidden": [16]},
            train={"epochs": 4, "batch_size": 16, "lr": 0.02, "seed": 0, "adversarial": {"epsilon": 0.005, "steps": 2}},
            property={"norm": "inf", "epsilon": [0.005]},
            attack={"steps": 5, "restarts": 1},
            unlearning={
                "method": "sisa",
                "sisa": {"shards": 2, "slices": 1},
                "amnesiac": {"repair_epochs": 1},
                "delete": {"fraction": delete_fraction, "seed": 0},
            },
        )
    )


def assert_study_is_whole(result: Any, min_accuracy: float) -> None:
    """Tables and plots exist, every cell has both reports and a deletion, certified <= PGD <= clean in
    every cell, and the models' mean clean accuracy before deletion exceeds `min_accuracy` (the fixtures
    are learnable)."""
    import json

    import numpy as np

    out = result.out
    assert (out / "tables.md").is_file() and set(json.loads((out / "tables.json").read_text())) == {"pgd", "certified"}
    assert result.plots and all(plot.is_file() for plot in result.plots)
    assert len(result.cells) == 4
    for cell in result.cells:
        assert (cell.run / "report_before.json").is_file() and (cell.run / "report_after.json").is_file()
        assert len(cell.deletion["ids"]) >= 1
        for report in (cell.before, cell.after):
            for r in report.results:
                assert r.certified_accuracy <= r.pgd_accuracy <= r.clean_accuracy, (cell.method, cell.training, r)
    assert np.mean([cell.before.results[0].clean_accuracy for cell in result.cells]) > min_accuracy
