"""`uverify check` on the executors (compute.py): serial, a process pool and a real Dask LocalCluster on
127.0.0.1 give the same report — verdicts, bounds to the last bit, counterexamples — with the batches,
and branch and bound's samples, as tasks; a majority vote's files travel too; bad options are one line.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from uverify import compute
from uverify.cli import cli
from uverify.compute import open_executor
from uverify.pipeline import train_run
from uverify.specs.load import validate_spec
from uverify.specs.schema import ComputeSpec, Spec
from uverify.testing.reports import timeless
from uverify.verifier.check import TASKS_PER_WORKER, check
from uverify.verifier.samples import samples_from_spec

from helpers import tiny_spec_dict

# 40 samples in batches of 8 (5 per epsilon), two epsilons, branch and bound on the samples IBP and a weak
# PGD leave unknown: a dozen tasks or more, each a fraction of a second
RAW = tiny_spec_dict(
    data={"dataset": "mixture", "classes": 3, "dims": 4, "n_samples": 300, "separation": 3.0, "samples": 40},
    property={"norm": "inf", "epsilon": [0.05, 0.1]},
    verify={"method": "IBP", "batch_size": 8, "complete": {"timeout_s": 20.0}},  # IBP leaves some unknown
    attack={"steps": 3, "restarts": 1},
    unlearning={"method": "sisa", "sisa": {"shards": 3, "slices": 1, "aggregation": "majority_vote"}},
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Spec, Path, Path]:
    """(spec, one ONNX model, a majority vote's manifest)."""
    base = tmp_path_factory.mktemp("models")
    one = validate_spec({**RAW, "unlearning": {"method": "amnesiac"}})
    train_run(one, base / "one", adversarial=False, progress=False)
    vote = validate_spec(RAW)
    train_run(vote, base / "vote", adversarial=False, progress=False)
    return one, base / "one" / "model.onnx", base / "vote" / "vote.json"


@pytest.fixture(scope="module")
def executors() -> Iterator[dict[str, Any]]:
    """A pool of 2 processes and a real 2-worker LocalCluster, open for the module's tests."""
    with (
        open_executor(ComputeSpec(executor="processes", workers=2, threads=1)) as pool,
        open_executor(ComputeSpec(executor="dask", workers=2, threads=1)) as dask,
    ):
        yield {"processes": pool, "dask": dask}


def _report_and_cex(model: Path, spec: Spec, executor: Any, tmp_path: Path, name: str) -> tuple[Any, dict[str, Any]]:
    samples, domain = samples_from_spec(spec)
    cex = tmp_path / f"{name}.npz"
    report = check(model, spec, samples, domain, progress=False, counterexamples=cex, executor=executor)
    with np.load(cex) as arrays:
        return timeless(report.model_dump(mode="json")), {k: arrays[k] for k in arrays.files}


def _same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), key  # to the last bit


@pytest.mark.parametrize("which", ["one", "vote"])
def test_serial_processes_and_dask_give_the_same_check(
    which: str, trained: tuple[Spec, Path, Path], executors: dict[str, Any], tmp_path: Path
) -> None:
    spec, one, vote = trained
    model = one if which == "one" else vote
    if which == "vote":
        spec = validate_spec(RAW)
    reference, cex = _report_and_cex(model, spec, compute.SERIAL, tmp_path, "serial")
    results = reference["results"]
    assert sum(r["counts"]["falsified"] for r in results) > 0 and sum(r["counts"]["verified"] for r in results) > 0
    if which == "one":  # branch and bound ran on samples, as tasks too
        assert sum(r["complete"]["attempted"] for r in results) > 0
    for name, executor in executors.items():
        report, arrays = _report_and_cex(model, spec, executor, tmp_path, name)
        assert report == reference, name  # margins are floats from float32 bounds: == is to the last bit
        _same_arrays(arrays, cex)


class _Counting(compute.SerialExecutor):
    """Runs every task here, as the serial executor does, but passes for a parallel one of `workers`
    workers (so the check hands it tasks), and counts the tasks by function."""

    kind = "counting"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.calls: Counter[str] = Counter()

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Any:
        self.calls[fn.__name__] += 1
        return super().submit(fn, *args)


@pytest.mark.parametrize("workers", [1, 2, 8])
def test_an_epsilons_batches_go_out_in_at_most_two_tasks_per_worker_with_the_serial_numbers(
    workers: int, trained: tuple[Spec, Path, Path], tmp_path: Path
) -> None:
    spec, model, _ = trained
    reference, cex = _report_and_cex(model, spec, compute.SERIAL, tmp_path, "serial")
    counting = _Counting(workers)
    report, arrays = _report_and_cex(model, spec, counting, tmp_path, "counting")
    assert report == reference  # grouping batches into tasks changes no number
    _same_arrays(arrays, cex)
    correct = len(reference["samples"]) - reference["results"][0]["counts"]["misclassified"]
    batches = -(-correct // spec.verify.batch_size)  # per epsilon
    per_task = -(-batches // (TASKS_PER_WORKER * workers))
    assert counting.calls["_bound_task"] == len(spec.property.epsilon) * -(-batches // per_task)
    if workers == 1:  # fewer tasks than batches
        epsilons = len(spec.property.epsilon)
        assert counting.calls["_bound_task"] <= TASKS_PER_WORKER * epsilons < batches * epsilons


def test_a_worker_loads_the_model_once(trained: tuple[Spec, Path, Path], executors: dict[str, Any]) -> None:
    """Every task after a worker's first finds the traced model in the worker's cache."""
    spec, model, _ = trained
    samples, domain = samples_from_spec(spec)
    client = executors["dask"].client
    client.run(lambda: compute._WORKER_CACHE.clear())  # what earlier tests loaded
    check(model, spec, samples, domain, progress=False, executor=executors["dask"])
    cached = client.run(lambda: sorted(compute._WORKER_CACHE))
    # one model per worker that ran tasks, whatever their count
    assert all(len(keys) <= 1 for keys in cached.values()) and any(cached.values()), cached
    copies = client.run(lambda: [os.listdir(d.name) for d in compute._LOCAL_COPIES.values()])
    assert all(["model.onnx"] in names for names in copies.values()), copies  # the file's bytes, shipped


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--workers", "0"], "--workers: Input should be greater than 0"),
        (["--workers", "-1"], "--workers: Input should be greater than 0"),
        (["--scheduler", "localhost:8786"], "--scheduler: must look like tcp://HOST:PORT"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    options: list[str], needle: str, trained: tuple[Spec, Path, Path], tmp_path: Path
) -> None:
    _, model, _ = trained
    out = tmp_path / "report.json"
    result = _invoke("check", "--spec", "mixture", "--model", str(model), "--out", str(out), *options, "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output
    assert os.listdir(tmp_path) == []


def test_an_unreachable_scheduler_exits_2_and_writes_nothing(
    trained: tuple[Spec, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compute, "CONNECT_TIMEOUT_S", 1.5)
    _, model, _ = trained
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    out = tmp_path / "report.json"
    result = _invoke("check", "--spec", "mixture", "--model", str(model), "--out", str(out), "--scheduler", address)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"dask scheduler {address}: cannot connect" in lines[0], result.output
    assert os.listdir(tmp_path) == []


def test_the_cli_and_the_spec_compute_section_give_the_serial_report(
    trained: tuple[Spec, Path, Path], write_spec: Any, tmp_path: Path
) -> None:
    """`check --workers 2` and a spec whose `compute:` asks for a pool write the serial report, and the
    compute section leaves the recorded spec and its hash as they were."""
    spec, model, _ = trained
    raw = json.loads(json.dumps(spec.model_dump(mode="json")))
    raw["verify"].pop("complete")  # keep it short: the batches alone
    plain = write_spec(raw, "plain.yaml")
    pooled = write_spec({**raw, "compute": {"executor": "processes", "workers": 2}}, "pooled.yaml")
    reports = {}
    for name, spec_file, options in (
        ("serial", plain, []),
        ("cli", plain, ["--workers", "2"]),
        ("spec", pooled, []),
    ):
        out = tmp_path / f"{name}.json"
        result = _invoke("check", "--spec", str(spec_file), "--model", str(model), "--out", str(out), *options,
                         "--quiet")  # fmt: skip
        assert result.exit_code == 0, result.output
        reports[name] = timeless(json.loads(out.read_text()))
    assert reports["cli"] == reports["serial"] == reports["spec"]
    assert "compute" not in reports["spec"]["spec"]


def test_workers_with_run_is_refused_in_one_line(tmp_path: Path) -> None:
    """`check --run` reuses certificates in this process: --workers there is refused, not ignored."""
    result = _invoke("check", "--run", str(tmp_path / "run"), "--workers", "2", "--quiet")
    assert result.exit_code == 2 and "--workers and --scheduler go with --model" in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1
