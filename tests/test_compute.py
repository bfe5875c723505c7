"""The executor seam (compute.py): serial, a process pool and Dask (a real LocalCluster on 127.0.0.1,
and a real `dask scheduler` + `dask worker` pair started as processes) write the same SISA bytes and
the same study reports; a worker killed mid-task has its task rerun elsewhere with the same result;
bad compute settings and an unreachable scheduler are one line and exit code 2, writing nothing.

Every address here is on 127.0.0.1: nothing leaves the machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from uverify import compute
from uverify.cli import cli
from uverify.compute import compute_from_options, local_cluster, open_executor, threads_per_worker
from uverify.errors import SpecError
from uverify.pipeline import train_run, unlearn_run
from uverify.specs.load import validate_spec
from uverify.specs.schema import ComputeSpec, Spec, spec_sha256
from uverify.study import study
from uverify.testing.reports import timeless

from helpers import assert_one_line_error, tiny_spec_dict

DASK_BIN = Path(sys.executable).with_name("dask")


def _spec(**overrides: Any) -> Spec:
    raw = tiny_spec_dict(
        data={"dataset": "mixture", "classes": 3, "dims": 4, "n_samples": 240, "separation": 5.0, "samples": 10},
        train={"epochs": 2, "batch_size": 32, "lr": 0.02, "seed": 0},
        unlearning={"method": "sisa", "sisa": {"shards": 3, "slices": 2}, "delete": {"fraction": 0.03, "seed": 0}},
    )
    raw.update(overrides)
    return validate_spec(raw)


def _run_bytes(run: Path) -> dict[str, str]:
    """sha256 of every model file of a run: checkpoints, weights, the manifest, model.onnx, the ids."""
    kinds = (".pt", ".safetensors", ".npz", ".onnx", ".npy")
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.suffix in kinds
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A real Dask LocalCluster on loopback, shared by the module's tests (its start costs seconds)."""
    with local_cluster(2) as local:
        yield local.scheduler_address


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: the spec trained and one deletion made serially."""
    run = tmp_path_factory.mktemp("serial") / "run"
    train_run(_spec(), run, adversarial=False, progress=False)
    unlearn_run(run, from_spec=True, progress=False)
    return run


# ---------------------------------------------------------------------------------------- the spec
def test_the_compute_section_changes_no_hash_and_no_recorded_spec() -> None:
    plain = _spec()
    dask = _spec(compute={"executor": "dask", "workers": 2})
    assert "compute" not in plain.model_dump() and dask.model_dump()["compute"]["executor"] == "dask"
    assert spec_sha256(plain) == spec_sha256(dask) == spec_sha256(_spec(compute={"executor": "serial"}))
    assert compute.without_compute(dask).model_dump() == plain.model_dump()


@pytest.mark.parametrize(
    ("section", "needles"),
    [
        ({"executor": "dsak"}, ("compute.executor", "did you mean 'dask'?", "serial, processes, dask")),
        ({"executor": "serial", "workers": 2}, ("compute.workers", "one task at a time")),
        ({"executor": "dask", "workers": 0}, ("compute.workers", "greater than 0")),
        ({"executor": "dask", "address": "127.0.0.1:8786"}, ("compute.address", "tcp://HOST:PORT")),
        ({"executor": "dask", "address": "tcp://127.0.0.1:0"}, ("compute.address", "between 1 and 65535")),
        ({"executor": "processes", "address": "tcp://127.0.0.1:8786"}, ("compute.address", "only the dask")),
        ({"executor": "dask", "worker": 2}, ("compute.worker", "did you mean 'workers'?")),
        ({"executor": "serial", "threads": 1}, ("compute.threads", "study.threads")),
        ({"executor": "processes", "threads": 0}, ("compute.threads", "greater than 0")),
    ],
)
def test_a_bad_compute_section_is_one_line(section: dict[str, Any], needles: tuple[str, ...]) -> None:
    with pytest.raises(SpecError) as excinfo:
        _spec(compute=section)
    assert_one_line_error(excinfo, *needles)


@pytest.mark.parametrize(
    ("workers", "scheduler", "needles"),
    [
        (0, None, ("--workers", "greater than 0")),
        (-3, None, ("--workers", "greater than 0")),
        (None, "localhost", ("--scheduler", "tcp://HOST:PORT")),
        (None, "tcp://127.0.0.1:port", ("--scheduler", "tcp://HOST:PORT")),
    ],
)
def test_bad_options_blame_the_option(workers: int | None, scheduler: str | None, needles: tuple[str, ...]) -> None:
    with pytest.raises(SpecError) as excinfo:
        compute_from_options(workers, scheduler)
    assert_one_line_error(excinfo, *needles)
    spec = _spec(compute={"executor": "processes", "workers": 2})
    assert compute_from_options(None, None, spec.compute) == spec.compute
    assert compute_from_options(3, None) == ComputeSpec(executor="dask", workers=3)


@pytest.mark.parametrize("command", ["train", "unlearn", "study"])
@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--workers", "0"], "--workers: Input should be greater than 0"),
        (["--workers", "-2"], "--workers: Input should be greater than 0"),
        (["--scheduler", "tcp:/127.0.0.1:8786"], "--scheduler: must look like tcp://HOST:PORT"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    command: str, options: list[str], needle: str, write_spec: Any, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    where = (
        ["--run", str(out)]
        if command == "unlearn"
        else ["--spec", str(write_spec(tiny_spec_dict())), "--out", str(out)]
    )
    result = _invoke(command, *where, *options, "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], result.output
    assert not out.exists()


def test_a_misspelt_executor_in_the_spec_exits_2(write_spec: Any, tmp_path: Path) -> None:
    raw = tiny_spec_dict(compute={"executor": "proceses"})
    result = _invoke("train", "--spec", str(write_spec(raw)), "--out", str(tmp_path / "run"), "--quiet")
    assert (
        result.exit_code == 2 and "compute.executor" in result.output and "did you mean 'processes'?" in result.output
    )
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["train", "unlearn", "study"])
def test_an_unreachable_scheduler_exits_2_and_writes_nothing(
    command: str, serial_run: Path, write_spec: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compute, "CONNECT_TIMEOUT_S", 1.5)
    address = f"tcp://127.0.0.1:{_free_port()}"  # nothing listens there
    out = tmp_path / "out"
    if command == "unlearn":
        run = tmp_path / "run"
        import shutil

        shutil.copytree(serial_run, run)
        before = _run_bytes(run) | {"log": (run / "deletions.json").read_text()}
        where = ["--run", str(run), "--delete-fraction", "0.1"]
    else:
        where = ["--spec", str(write_spec(tiny_spec_dict())), "--out", str(out)]
    result = _invoke(command, *where, "--scheduler", address, "--quiet")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"dask scheduler {address}: cannot connect" in lines[0], result.output
    assert sorted(os.listdir(tmp_path)) == (["run"] if command == "unlearn" else ["spec.yaml"])  # no lock, no staging
    if command == "unlearn":
        assert _run_bytes(run) | {"log": (run / "deletions.json").read_text()} == before


# ------------------------------------------------------------------------------------- determinism
def test_a_process_pool_writes_the_serial_bytes(serial_run: Path, tmp_path: Path) -> None:
    pool = ComputeSpec(executor="processes", workers=2)
    run = tmp_path / "run"
    train_run(_spec(), run, adversarial=False, progress=False, compute=pool)
    unlearn_run(run, from_spec=True, progress=False, compute=pool)
    assert _run_bytes(run) == _run_bytes(serial_run)
    assert json.loads((run / "spec.json").read_text()) == json.loads((serial_run / "spec.json").read_text())


def test_a_local_dask_cluster_from_the_cli_writes_the_serial_bytes(
    serial_run: Path, write_spec: Any, tmp_path: Path
) -> None:
    raw = json.loads(json.dumps(_spec().model_dump(mode="json")))
    spec_path = write_spec(raw)
    run = tmp_path / "run"
    result = _invoke("train", "--spec", str(spec_path), "--out", str(run), "--workers", "2", "--quiet")
    assert result.exit_code == 0, result.output
    result = _invoke("unlearn", "--run", str(run), "--workers", "2", "--quiet")
    assert result.exit_code == 0, result.output
    assert _run_bytes(run) == _run_bytes(serial_run)
    assert "compute" not in json.loads((run / "spec.json").read_text())


def test_a_local_cluster_sets_one_torch_thread_per_core_and_binds_to_loopback() -> None:
    import torch

    with open_executor(ComputeSpec(executor="dask", workers=2)) as executor:
        assert isinstance(executor, compute.DaskExecutor)
        client = executor.client
        threads = client.run(torch.get_num_threads)
        assert set(threads.values()) == {threads_per_worker(2)} and len(threads) == 2
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in threads)
        http = client.scheduler_info()["services"]["dashboard"]  # the health/metrics server, not a dashboard
        assert http != 8787
        with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=5) as page:
            assert page.read() == b"ok"
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"http://127.0.0.1:{http}/status", timeout=5)
        # tasks run on the workers, in other processes, and come back in task order
        pids = list(executor.map(os.getpid, [()] * 4))
        assert os.getpid() not in pids
        assert list(executor.map(pow, [(2, k) for k in range(6)])) == [2**k for k in range(6)]
        scheduler = client.scheduler.address
    from distributed import Client

    with pytest.raises(OSError):  # torn down with the block
        Client(scheduler, timeout=1)


def test_a_process_pool_sets_the_threads_asked_for() -> None:
    import torch

    with open_executor(ComputeSpec(executor="processes", workers=1)) as executor:
        assert list(executor.map(torch.get_num_threads, [()])) == [threads_per_worker(1)]
    with open_executor(ComputeSpec(executor="processes", workers=1, threads=1)) as executor:
        assert list(executor.map(torch.get_num_threads, [()])) == [1]
        assert list(executor.map(os.getpid, [()])) != [os.getpid()]


def test_a_cluster_tears_down_on_an_error() -> None:
    with pytest.raises(ZeroDivisionError), open_executor(ComputeSpec(executor="dask", workers=1)) as executor:
        assert isinstance(executor, compute.DaskExecutor)
        scheduler = executor.client.scheduler.address
        list(executor.map(divmod, [(1, 0)]))
    from distributed import Client

    with pytest.raises(OSError):
        Client(scheduler, timeout=1)


def test_a_dask_scheduler_address_writes_the_serial_bytes(serial_run: Path, cluster: str, tmp_path: Path) -> None:
    dask = ComputeSpec(executor="dask", address=cluster, workers=2)
    run = tmp_path / "run"
    train_run(_spec(), run, adversarial=False, progress=False, compute=dask)
    unlearn_run(run, from_spec=True, progress=False, compute=dask)
    assert _run_bytes(run) == _run_bytes(serial_run)


def test_a_study_on_dask_gives_the_serial_study(cluster: str, tmp_path: Path) -> None:
    spec = _spec(
        property={"norm": "inf", "epsilon": [0.05]},
        attack={"steps": 5, "restarts": 1},
        train={"epochs": 2, "batch_size": 32, "lr": 0.02, "seed": 0, "adversarial": {"epsilon": 0.05, "steps": 2}},
        unlearning={"method": "sisa", "sisa": {"shards": 2, "slices": 1}, "delete": {"fraction": 0.03, "seed": 0}},
    )
    serial_lines: list[str] = []
    dask_lines: list[str] = []
    a = study(spec, tmp_path / "serial", methods=("sisa",), progress=False, echo=serial_lines.append)
    b = study(
        spec, tmp_path / "dask", methods=("sisa",), progress=False, echo=dask_lines.append,
        compute=ComputeSpec(executor="dask", address=cluster),
    )  # fmt: skip
    assert dask_lines == serial_lines  # the same progress lines, in grid order
    for x, y in zip(a.cells, b.cells, strict=True):
        assert _run_bytes(x.run) == _run_bytes(y.run)
        for when in ("before", "after"):
            rx = json.loads((x.run / f"report_{when}.json").read_text())
            ry = json.loads((y.run / f"report_{when}.json").read_text())
            assert timeless(rx) == timeless(ry)
    tables = [json.loads((tmp_path / name / "tables.json").read_text()) for name in ("serial", "dask")]
    assert timeless(tables[0]) == timeless(tables[1])


# ------------------------------------------------------------------------------------------ faults
def _scheduler(info: Path, log: Any) -> tuple[subprocess.Popen[bytes], str]:
    """`dask scheduler` on loopback; its address, read from the scheduler file it writes."""
    args = ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(info)]
    proc = subprocess.Popen([str(DASK_BIN), *args], stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while not info.is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    address = str(json.loads(info.read_text())["address"])
    assert address.startswith("tcp://127.0.0.1:")
    return proc, address


def _worker(address: str, log: Any, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """`dask worker` on loopback, without a nanny: killed, it stays dead (no restart hides the loss)."""
    args = ["worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny", "--no-dashboard"]
    return subprocess.Popen([str(DASK_BIN), *args], stdout=log, stderr=log, env=env)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def scheduler_pair(tmp_path: Path) -> Iterator[tuple[str, list[subprocess.Popen[bytes]]]]:
    """A real `dask scheduler` and two `dask worker` processes."""
    with open(tmp_path / "dask.log", "wb") as log:
        procs: list[subprocess.Popen[bytes]] = []
        try:
            scheduler, address = _scheduler(tmp_path / "scheduler.json", log)
            procs.append(scheduler)
            procs += [_worker(address, log), _worker(address, log)]
            yield address, procs
        finally:
            _stop(procs)


def test_a_worker_killed_mid_task_has_its_task_rerun_with_the_same_result(
    scheduler_pair: tuple[str, list[subprocess.Popen[bytes]]], tmp_path: Path
) -> None:
    from distributed import Client

    address, procs = scheduler_pair
    spec = _spec(train={"epochs": 30, "batch_size": 16, "lr": 0.02, "seed": 0})  # shards of a second or more
    reference = tmp_path / "serial"
    train_run(spec, reference, adversarial=False, progress=False)
    run = tmp_path / "run"
    errors: list[BaseException] = []

    def train() -> None:
        try:
            train_run(
                spec,
                run,
                adversarial=False,
                progress=False,
                compute=ComputeSpec(executor="dask", address=address, workers=2),
            )
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=train)
    with Client(address, timeout=20, set_as_default=False) as watcher:
        watcher.wait_for_workers(2, timeout=60)
        pids: dict[str, int] = watcher.run(os.getpid)
        assert {p.pid for p in procs[1:]} == set(pids.values())
        thread.start()
        victim = None
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and thread.is_alive():
            busy = [w for w, keys in watcher.processing().items() if any("train_shard" in str(k) for k in keys)]
            victim = busy[0] if busy else None
            time.sleep(0.02)
        assert victim is not None, "no task was seen running"
        os.kill(pids[victim], signal.SIGKILL)
        thread.join(timeout=300)
    assert not errors, errors
    assert not thread.is_alive()
    killed = next(p for p in procs[1:] if p.pid == pids[victim])
    assert killed.wait(timeout=10) == -signal.SIGKILL
    assert _run_bytes(run) == _run_bytes(reference)


def test_a_worker_with_another_uverify_is_named_with_both_versions(tmp_path: Path) -> None:
    """A worker whose environment has another uverify release: the command refuses, naming both."""
    fake = tmp_path / "site"
    (fake / "uverify-9.9.9.dist-info").mkdir(parents=True)
    (fake / "uverify-9.9.9.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: uverify\nVersion: 9.9.9\n")
    env = os.environ | {"PYTHONPATH": str(fake)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        scheduler, address = _scheduler(tmp_path / "scheduler.json", subprocess.DEVNULL)
        procs += [scheduler, _worker(address, subprocess.DEVNULL, env)]
        out = tmp_path / "run"
        result = _invoke("train", "--spec", "mixture", "--out", str(out), "--scheduler", address, "--quiet")
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and "runs uverify 9.9.9, this process 0.1.0" in lines[0], result.output
        assert not out.exists()
    finally:
        _stop(procs)


def test_ctrl_c_tears_the_local_cluster_down_and_leaves_no_run(write_spec: Any, tmp_path: Path) -> None:
    """SIGINT to `uverify train --workers 1` while its shards train: the command ends, its cluster's
    processes with it, and no run (nor staging folder) is left."""
    import psutil

    raw = tiny_spec_dict(train={"epochs": 400, "batch_size": 16, "lr": 0.02, "seed": 0})  # minutes, if not stopped
    spec = write_spec(raw)
    command = [str(Path(sys.executable).with_name("uverify")), "train", "--spec", str(spec), "--out", "run"]
    proc = subprocess.Popen([*command, "--workers", "1", "--quiet"], cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.rglob("manifest.npz")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert list(tmp_path.rglob("manifest.npz")), "training never started"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children  # the worker (and its nanny's processes)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code != 0
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, alive
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "spec.yaml"]
