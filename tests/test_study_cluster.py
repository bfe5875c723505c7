"""A study on Dask runs a SISA cell's shards as tasks of their own (compute.sub_executor) on the
cell's cluster, with the serial study's bytes; a process pool keeps them inside the cell."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from uverify.compute import SERIAL, local_cluster, open_executor, sub_executor
from uverify.specs.load import validate_spec
from uverify.specs.schema import ComputeSpec, Spec
from uverify.study import study
from uverify.testing.reports import timeless

from helpers import tiny_spec_dict


def _spec() -> Spec:
    raw = tiny_spec_dict(
        data={"dataset": "mixture", "classes": 2, "dims": 4, "n_samples": 200, "separation": 5.0, "samples": 8},
        train={"epochs": 1, "batch_size": 32, "lr": 0.02, "seed": 0, "adversarial": {"epsilon": 0.05, "steps": 2}},
        unlearning={"method": "sisa", "sisa": {"shards": 3, "slices": 1}, "delete": {"fraction": 0.03, "seed": 0}},
        property={"norm": "inf", "epsilon": [0.05]},
        attack={"steps": 3, "restarts": 1},
    )
    return validate_spec(raw)


def _model_bytes(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.suffix in (".pt", ".safetensors", ".npz", ".onnx", ".npy")
    }


def _task_names(dask_scheduler: Any) -> list[str]:
    return sorted(dask_scheduler.task_prefixes)


def test_a_sisa_cell_on_dask_trains_its_shards_and_checks_its_batches_as_tasks_with_the_serial_bytes(
    tmp_path: Path,
) -> None:
    from distributed import Client

    spec = _spec()
    serial = study(spec, tmp_path / "serial", methods=("sisa",), progress=False, echo=lambda _: None)
    with (
        local_cluster(2) as local,
        Client(local, set_as_default=False) as client,
    ):
        dask = study(
            spec, tmp_path / "dask", methods=("sisa",), progress=False, echo=lambda _: None,
            compute=ComputeSpec(executor="dask", address=local.scheduler_address),
        )  # fmt: skip
        names = client.run_on_scheduler(_task_names)
    # two cells (standard, adversarial), each training 3 shards and retraining the touched ones, and
    # each check's bound batches as tasks of their own (a slow cell's check is not a serial critical path)
    assert "cell_task" in names and "train_shard" in names and "bound_task" in names  # Dask drops the "_"
    for a, b in zip(serial.cells, dask.cells, strict=True):
        assert _model_bytes(a.run) == _model_bytes(b.run)
        assert a.before.model.sha256 == b.before.model.sha256 and a.after.model.sha256 == b.after.model.sha256
        for x, y in ((a.before, b.before), (a.after, b.after)):
            assert timeless(x.model_dump(mode="json")) == timeless(y.model_dump(mode="json"))


def test_outside_a_dask_task_the_sub_executor_is_serial_and_an_open_executor_is_kept_open() -> None:
    with sub_executor() as shards:
        assert shards is SERIAL
    with open_executor(SERIAL) as same:
        assert same is SERIAL
