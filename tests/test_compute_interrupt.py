"""A parallel deletion interrupted half-way (Ctrl-C after its shards came back from the workers, before
the run is replaced) leaves the previous run as it was, and a rerun completes with the serial bytes."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from uverify import pipeline
from uverify.compute import open_executor
from uverify.pipeline import train_run, unlearn_run
from uverify.specs.load import validate_spec
from uverify.specs.schema import ComputeSpec

from helpers import tiny_spec_dict


def _files(run: Path) -> dict[str, str]:
    """sha256 of every file of the run but its lock (the log's timings are in deletions.json, written
    only by a finished deletion)."""
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def _model_files(run: Path) -> dict[str, str]:
    kinds = (".pt", ".safetensors", ".npz", ".onnx", ".npy")
    return {k: v for k, v in _files(run).items() if Path(k).suffix in kinds}


def test_an_interrupted_parallel_deletion_keeps_the_run_and_a_rerun_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = validate_spec(
        tiny_spec_dict(
            data={"dataset": "mixture", "classes": 2, "dims": 4, "n_samples": 200, "separation": 5.0, "samples": 8},
            train={"epochs": 2, "batch_size": 32, "lr": 0.02, "seed": 0},
            unlearning={"method": "sisa", "sisa": {"shards": 3, "slices": 2}, "delete": {"fraction": 0.05, "seed": 0}},
        )
    )
    reference, run = tmp_path / "reference", tmp_path / "run"
    train_run(spec, reference, adversarial=False, progress=False)
    shutil.copytree(reference, run)
    unlearn_run(reference, from_spec=True, progress=False)  # serial: the bytes every rerun must give
    trained = _files(run)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt  # Ctrl-C once the workers' retrained shards are in the staging copy

    with open_executor(ComputeSpec(executor="processes", workers=2)) as pool:
        monkeypatch.setattr(pipeline, "unlearning_metrics", interrupted)
        with pytest.raises(KeyboardInterrupt):
            unlearn_run(run, from_spec=True, progress=False, compute=pool)
        assert _files(run) == trained  # the run as it was: M, its log, no deletion
        # and no staging folder or old copy beside it
        assert sorted(p.name for p in tmp_path.iterdir()) == [".reference.lock", ".run.lock", "reference", "run"]
        monkeypatch.undo()
        unlearn_run(run, from_spec=True, progress=False, compute=pool)
    assert _model_files(run) == _model_files(reference)
