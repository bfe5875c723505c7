"""Fault injection: `train`, `unlearn` (SISA and Amnesiac) and `study` killed with SIGKILL at seeded
points, then rerun. After the kill the run is the previous one byte for byte, or the finished one
(identical to an uninterrupted run but for timings); the rerun always finishes identical to it.

`make test` runs a reduced set (UVERIFY_FAULT_POINTS unset: 2 points per command, 1 for the study, about
a minute and a half); `make test-faults` runs 20 points per command.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import fault_injection as fi
import numpy as np
import pytest
import yaml

from uverify.datasets import load
from uverify.rundir import is_run, open_run
from uverify.specs.load import validate_spec

from helpers import tiny_spec_dict

POINTS = os.environ.get("UVERIFY_FAULT_POINTS")
SEED = 20261202


def _write(folder: Path, name: str, raw: dict[str, object]) -> str:
    (folder / name).write_text(yaml.safe_dump(raw), encoding="utf-8")
    return name


def _sisa(folder: Path) -> list[str]:
    spec = _write(folder, "a.yaml", tiny_spec_dict())
    assert fi.run(["train", "--spec", spec, "--out", "run", "--quiet"], folder)[0] == 0
    ids = np.sort(load(validate_spec(tiny_spec_dict()).data).train.ids)[::25]  # spread over the shards
    (folder / "ids.txt").write_text("\n".join(map(str, ids)))
    return ["unlearn", "--run", "run", "--delete", "ids.txt", "--quiet"]


def _amnesiac(folder: Path) -> list[str]:
    raw = tiny_spec_dict(unlearning={"method": "amnesiac", "amnesiac": {"repair_epochs": 1}})
    assert fi.run(["train", "--spec", _write(folder, "a.yaml", raw), "--out", "run", "--quiet"], folder)[0] == 0
    ids = np.sort(load(validate_spec(raw).data).train.ids)[::40]
    (folder / "ids.txt").write_text("\n".join(map(str, ids)))
    return ["unlearn", "--run", "run", "--delete", "ids.txt", "--quiet"]


def _train_over(folder: Path) -> list[str]:
    """Replacing a run that has a deletion with a new training: a kill must never leave neither."""
    first = _sisa(folder)
    assert fi.run(first, folder)[0] == 0
    raw = tiny_spec_dict(train={"epochs": 4, "batch_size": 32, "lr": 0.02, "seed": 1})
    return ["train", "--spec", _write(folder, "b.yaml", raw), "--out", "run", "--overwrite", "--quiet"]


def _study(folder: Path) -> list[str]:
    raw = tiny_spec_dict(
        data={"dataset": "mixture", "classes": 3, "dims": 4, "n_samples": 300, "separation": 5.0, "samples": 12},
        property={"norm": "inf", "epsilon": [0.05]},
        attack={"steps": 5, "restarts": 1},
        unlearning={"method": "sisa", "sisa": {"shards": 2, "slices": 1}, "amnesiac": {"repair_epochs": 1},
                    "delete": {"fraction": 0.02, "seed": 0}},
        train={"epochs": 3, "batch_size": 32, "lr": 0.02, "seed": 0, "adversarial": {"epsilon": 0.05, "steps": 2}},
    )  # fmt: skip
    return ["study", "--spec", _write(folder, "s.yaml", raw), "--out", "run", "--quiet"]


SCENARIOS: dict[str, Callable[[Path], list[str]]] = {
    "train --overwrite": _train_over,
    "unlearn sisa": _sisa,
    "unlearn amnesiac": _amnesiac,
    "study": _study,
}


def _runs_are_whole(folder: Path) -> None:
    """Every run under `folder` (a study's cells, or the run itself) opens as a complete run."""
    for candidate in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
        if is_run(candidate) and ".staging" not in str(candidate):
            open_run(candidate)


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_a_killed_command_leaves_the_previous_run_or_the_finished_one(scenario: str, tmp_path: Path) -> None:
    pristine = tmp_path / "pristine"
    pristine.mkdir()
    command = SCENARIOS[scenario](pristine)
    previous = fi.snapshot(pristine / "run")

    reference = tmp_path / "reference"
    shutil.copytree(pristine, reference, symlinks=True)
    code, ops = fi.run(command, reference)
    assert code == 0 and ops, (scenario, code)
    finished = fi.normalised(fi.snapshot(reference / "run"))

    rng = np.random.default_rng(SEED + sum(map(ord, scenario)))
    wanted = int(POINTS) if POINTS else (1 if scenario == "study" else 2)
    points = sorted(rng.choice(np.arange(1, ops + 1), size=min(wanted, ops), replace=False).tolist())
    outcomes = {"previous": 0, "finished": 0, "in between": 0}
    for point in points:
        trial = tmp_path / f"kill_{point}"
        shutil.copytree(pristine, trial, symlinks=True)
        code, _ = fi.run(command, trial, kill_at=point)
        assert code == -9, (scenario, point, code)
        state = fi.snapshot(trial / "run")
        if state == previous:
            outcomes["previous"] += 1
        elif fi.normalised(state) == finished:
            outcomes["finished"] += 1
        else:
            assert scenario == "study", f"{scenario} killed at operation {point}/{ops}: neither previous nor finished"
            outcomes["in between"] += 1  # a study keeps its finished cells; each cell is whole
        _runs_are_whole(trial / "run")
        code, _ = fi.run(command, trial)
        assert code == 0, (scenario, point, code)
        assert fi.normalised(fi.snapshot(trial / "run")) == finished, f"{scenario}: rerun after a kill at {point}"
        assert fi.leftovers(trial) == [], (scenario, point)
        shutil.rmtree(trial)
    print(f"\n{scenario}: {len(points)} kill points of {ops} operations: {outcomes}; every rerun identical")
