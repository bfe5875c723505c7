"""`uverify vnncomp` end to end, in process (click's CliRunner) with the verifier in child processes:
result files, the counterexample replayed, the wall-clock limit, bad input, instance lists and score."""

from __future__ import annotations

import csv
import gzip
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from uverify.cli import cli
from uverify.models.referee import Referee
from uverify.testing.vnn import forward, v1_query
from uverify.vnn import runner
from uverify.vnn.reader import read_vnnlib
from uverify.vnn.results import parse_result_file

SAT = "(>= Y_0 2.05)"  # on [-1, 1]^2 (max 2.1)
UNSAT = "(>= Y_0 Y_1)"  # on [0.4, 0.6]^2
HARD = "(>= Y_0 2.1000001)"  # just above the max: neither bounds nor PGD settle it quickly


def query(folder: Path, name: str, output: str, small: bool = False) -> Path:
    box = ([0.4, 0.4], [0.6, 0.6]) if small else ([-1, -1], [1, 1])
    path = folder / name
    path.write_text(v1_query(*box, output))
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["vnncomp", *args])
    return result.exit_code, result.stdout, result.stderr


def test_sat_result_file_holds_a_replayed_counterexample(network: Path, tmp_path: Path) -> None:
    prop = query(tmp_path, "sat.vnnlib", SAT)
    code, out, _ = invoke(str(network), str(prop), "--timeout", "60", "--out", str(tmp_path / "r.txt"))
    assert code == 0 and out.startswith("sat by PGD")
    result, x, y = parse_result_file((tmp_path / "r.txt").read_text())
    assert result == "sat" and x is not None and y is not None
    box = read_vnnlib(prop).properties[0].boxes[0]
    assert box.contains(x[None])[0]
    replayed = Referee(network).logits(x.astype(np.float32).reshape(1, 1, 2))[0]
    assert np.array_equal(replayed, y.astype(np.float32)) and forward(x[None])[0, 0] >= 2.05


def test_unsat_printed_without_out(network: Path, tmp_path: Path) -> None:
    code, out, _ = invoke(str(network), str(query(tmp_path, "u.vnnlib", UNSAT, small=True)))
    assert (code, out) == (0, "unsat\n")


def test_the_time_limit_holds(network: Path, tmp_path: Path) -> None:
    runner._server()  # started once per process, before the clock (as `--instances` does)
    started = time.monotonic()
    code, out, _ = invoke(str(network), str(query(tmp_path, "h.vnnlib", HARD)), "--timeout", "1.5")
    elapsed = time.monotonic() - started
    assert code == 0 and out == "timeout\n" and elapsed < 1.5 + 0.5


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("syntax", "does not parse"),
        ("inputs", "3 inputs but tiny.onnx takes 2"),
        ("gzip", "not a gzip file"),
        ("onnx", "ONNX file not found"),
        ("empty", "empty input box"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(network: Path, tmp_path: Path, case: str, match: str) -> None:
    prop = tmp_path / "q.vnnlib"
    net = network
    if case == "syntax":
        prop.write_text("(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(assert (<= X_0")
    elif case == "inputs":
        prop.write_text(v1_query([0, 0, 0], [1, 1, 1], SAT))
    elif case == "gzip":
        prop = tmp_path / "q.vnnlib.gz"
        prop.write_text(v1_query([0, 0], [1, 1], SAT))
    elif case == "onnx":
        prop.write_text(v1_query([0, 0], [1, 1], SAT))
        net = tmp_path / "missing.onnx"
    else:
        prop.write_text(v1_query([0, 1], [1, 0], SAT))
    code, out, err = invoke(str(net), str(prop), "--out", str(tmp_path / "r.txt"))
    assert code == 2 and out == ""
    assert err.startswith("error: ") and match in err and err.count("\n") == 1 and "Traceback" not in err
    assert (tmp_path / "r.txt").read_text() == "error\n"


def test_usage_errors_exit_2(network: Path) -> None:
    assert invoke(str(network))[0] == 2
    assert invoke(str(network), "p.vnnlib", "--instances", "x.csv")[0] == 2


def test_an_instance_list_with_ground_truth(network: Path, tmp_path: Path) -> None:
    bench = tmp_path / "tiny"
    (bench / "vnnlib").mkdir(parents=True)
    (bench / "onnx").mkdir()
    network.rename(bench / "onnx" / "tiny.onnx")
    query(bench / "vnnlib", "sat.vnnlib", SAT)
    gz = query(bench / "vnnlib", "unsat.vnnlib", UNSAT, small=True)
    (bench / "vnnlib" / "unsat.vnnlib.gz").write_bytes(gzip.compress(gz.read_bytes()))
    (bench / "instances.csv").write_text(
        "onnx/tiny.onnx,vnnlib/sat.vnnlib,60\nonnx/tiny.onnx,vnnlib/unsat.vnnlib.gz,60\n"
    )
    truth = tmp_path / "truth.csv"
    truth.write_text("onnx,vnnlib,result\ntiny.onnx,sat.vnnlib,sat(violated)\ntiny.onnx,unsat.vnnlib.gz,holds\n")
    out = tmp_path / "results.csv"
    code, text, _ = invoke("--instances", str(bench / "instances.csv"), "--ground-truth", str(truth), "--out", str(out))
    assert code == 0
    rows = list(csv.reader(out.open()))
    assert [(r[0], r[1], r[2], r[4]) for r in rows] == [
        ("tiny", "onnx/tiny.onnx", "vnnlib/sat.vnnlib", "sat"),
        ("tiny", "onnx/tiny.onnx", "vnnlib/unsat.vnnlib.gz", "unsat"),
    ]
    assert all(float(r[3]) >= 0 and float(r[5]) >= 0 for r in rows)
    assert (tmp_path / "results" / "tiny" / "tiny_sat.result").read_text().startswith("sat\n((X_0 ")
    table = next(line for line in text.splitlines() if line.startswith("tiny")).split()
    assert table[7:11] == ["2", "2", "0", "20"]  # decided, correct, wrong, score


def test_shipped_instances_never_contradict_the_truth(vnncomp_root: Path, tmp_path: Path) -> None:
    """Three of the shared instances: unsat (mnistfc), sat (ACAS Xu), and a DISPUTED row (the tools
    disagreed: whatever uverify answers there is not scored)."""
    listing = tmp_path / "list.csv"
    rows = [
        ("mnistfc", "mnistfc/onnx/mnist-net_256x2.onnx", "mnistfc/vnnlib/prop_12_0.03.vnnlib", "unsat(holds)"),
        ("acasxu", "acasxu/onnx/ACASXU_run2a_1_7_batch_2000.onnx", "acasxu/vnnlib/prop_3.vnnlib", "sat(violated)"),
        ("acasxu", "acasxu/onnx/ACASXU_run2a_1_1_batch_2000.onnx", "acasxu/vnnlib/prop_4.vnnlib", "DISPUTED"),
    ]
    listing.write_text(
        "category,onnx,vnnlib,timeout,consensus_result\n" + "".join(f"{c},{o},{v},4,{t}\n" for c, o, v, t in rows)
    )
    out = tmp_path / "results.csv"
    code, text, _ = invoke("--instances", str(listing), "--root", str(vnncomp_root), "--out", str(out))
    assert code == 0
    results = [r[4] for r in csv.reader(out.open())]
    assert results[0] == "unsat" and results[1] == "sat"
    total = next(line for line in text.splitlines() if line.startswith("total")).split()
    assert total[9] == "0" and int(total[10]) >= 20  # no wrong answer; both decided ones score


def test_gzipped_network_and_a_fake_one(network: Path, tmp_path: Path) -> None:
    packed = tmp_path / "tiny.onnx.gz"
    packed.write_bytes(gzip.compress(network.read_bytes()))
    prop = query(tmp_path, "u.vnnlib", UNSAT, small=True)
    assert invoke(str(packed), str(prop))[:2] == (0, "unsat\n")
    fake = tmp_path / "fake.onnx.gz"
    fake.write_bytes(network.read_bytes())
    code, _, err = invoke(str(fake), str(prop))
    assert code == 2 and "not a gzip file" in err
