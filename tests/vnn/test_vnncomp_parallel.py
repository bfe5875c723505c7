"""`uverify vnncomp --instances` in parallel: `--workers 2` (two local children at once, each under its
own clock) and `--scheduler` (each instance a task on a real Dask LocalCluster's nanny workers on
127.0.0.1, its files shipped) give the serial run's results CSV, in the list's order, and result files."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from uverify.cli import cli
from uverify.testing.vnn import v1_query

SAT = "(>= Y_0 2.05)"  # on [-1, 1]^2 (max 2.1)
UNSAT = "(>= Y_0 Y_1)"  # on [0.4, 0.6]^2
HARD = "(>= Y_0 2.1000001)"  # just above the max: stopped by its 2 s clock


def _invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["vnncomp", *args])
    return result.exit_code, result.output


@pytest.fixture
def listing(network: Path, tmp_path: Path) -> Path:
    """Four instances of the tiny network, the slow one second, so that later ones finish before it."""
    bench = tmp_path / "bench"
    (bench / "vnnlib").mkdir(parents=True)
    (bench / "onnx").mkdir()
    network.rename(bench / "onnx" / "tiny.onnx")
    rows = []
    for name, output, small in (
        ("sat", SAT, False),
        ("hard", HARD, False),
        ("unsat", UNSAT, True),
        ("sat2", SAT, False),
    ):
        box = ([0.4, 0.4], [0.6, 0.6]) if small else ([-1, -1], [1, 1])
        (bench / "vnnlib" / f"{name}.vnnlib").write_text(v1_query(*box, output))
        rows.append(f"onnx/tiny.onnx,vnnlib/{name}.vnnlib,{2 if name == 'hard' else 60}\n")
    (bench / "instances.csv").write_text("".join(rows))
    return bench / "instances.csv"


def _results(out: Path) -> tuple[list[tuple[str, ...]], dict[str, str]]:
    """The CSV without its times, and every result file's text."""
    rows: list[tuple[str, ...]] = [(r[0], r[1], r[2], r[4]) for r in csv.reader(out.open())]
    files = {str(p.relative_to(out.parent)): p.read_text() for p in sorted(out.with_suffix("").rglob("*.result"))}
    return rows, files


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    from uverify.compute import local_cluster

    with local_cluster(2) as local:
        yield local.scheduler_address


def test_two_workers_and_a_scheduler_give_the_serial_results(listing: Path, scheduler: str, tmp_path: Path) -> None:
    outs = {}
    for name, options in (("serial", []), ("workers", ["--workers", "2"]), ("dask", ["--scheduler", scheduler])):
        out = tmp_path / name / "results.csv"
        out.parent.mkdir()
        code, text = _invoke("--instances", str(listing), "--out", str(out), *options)
        assert code == 0, text
        lines = [line.split(":")[0] for line in text.splitlines() if "/4 " in line]
        assert [line.split()[0] for line in lines] == [f"{k}/4" for k in range(1, 5)], text  # in list order
        outs[name] = _results(out)
    rows, _ = outs["serial"]
    assert [r[3] for r in rows] == ["sat", "timeout", "unsat", "sat"]
    assert outs["workers"] == outs["serial"] == outs["dask"]


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--workers", "0"], "--workers: Input should be greater than 0"),
        (["--scheduler", "127.0.0.1:8786"], "--scheduler: must look like tcp://HOST:PORT"),
        (["--workers", "2", "--no-list"], "give --instances"),
    ],
)
def test_bad_options_exit_2_with_one_line(options: list[str], needle: str, listing: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    where = ["--instances", str(listing), "--out", str(out)]
    if "--no-list" in options:
        options = options[:-1]
        where = [str(listing.parent / "onnx" / "tiny.onnx"), str(listing.parent / "vnnlib" / "sat.vnnlib")]
    code, text = _invoke(*where, *options)
    assert code == 2, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], text
    assert not out.exists()


def test_an_unreachable_scheduler_exits_2_and_writes_nothing(
    listing: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    from uverify import compute

    monkeypatch.setattr(compute, "CONNECT_TIMEOUT_S", 1.5)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{s.getsockname()[1]}"  # nothing listens there once closed
    out = tmp_path / "out.csv"
    code, text = _invoke("--instances", str(listing), "--out", str(out), "--scheduler", address)
    assert code == 2, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and f"dask scheduler {address}: cannot connect" in lines[0], text
    assert not out.exists() and not out.with_suffix("").exists()
