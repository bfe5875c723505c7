"""`uverify-solver`, the VNN-LIB 2.0 solver command line (chapter 5): answers on stdout, everything else on
stderr, the standard's error conditions, every mandatory capability answered from what the code does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from uverify import __version__
from uverify.testing.vnn import forward
from uverify.verifier.onnx_import import supported_ops
from uverify.vnn.solver import CAPABILITIES, solver

SCRIPT = Path(sys.executable).parent / "uverify-solver"


def query(path: Path, output: str, box: tuple[float, float] = (-1.0, 1.0), kind: str = "real", name: str = "f") -> Path:
    lo, hi = box
    text = f"(vnnlib-version <2.0>)\n(declare-network {name} (declare-input X {kind} [1,1,2]) "
    text += f"(declare-output Y {kind} [1,2]))\n"
    text += "".join(f"(assert (>= X[0,0,{i}] {lo}))\n(assert (<= X[0,0,{i}] {hi}))\n" for i in range(2))
    path.write_text(text + f"(assert {output})\n")
    return path


def invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(solver, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_global_options() -> None:
    assert invoke("--version")[:2] == (0, f"{__version__}\n")
    code, out, _ = invoke("--name")
    assert code == 0 and out.startswith("uverify")
    assert invoke("--name", "--version")[0] == 2
    assert invoke()[0] == 2


@pytest.mark.parametrize("capability", list(CAPABILITIES))
def test_every_capability_is_answered(capability: str) -> None:
    code, out, err = invoke("supports", f"--{capability}")
    assert code == 0 and err == "" and out.endswith("\n") and out.strip()
    if capability == "onnx-operators":
        assert out.split() == supported_ops()
    if capability in ("onnx-opset-versions", "vnnlib-versions"):
        assert len(out.split()) == 2


def test_unknown_capability_and_missing_one() -> None:
    assert invoke("supports", "--teleportation")[0] == 2
    code, out, err = invoke("supports")
    assert code == 2 and out == "" and "--onnx-operators" in err


def test_sat_prints_the_assignment_in_the_standards_format(network: Path, tmp_path: Path) -> None:
    q = query(tmp_path / "q.vnnlib", "(>= Y[0,0] 2.05)")
    done = subprocess.run(
        [str(SCRIPT), "verify", str(q), "--network", f"f={network}", "--timeout", "60"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "sat" and lines[1] == "X real [1,1,2]" and lines[4] == "Y real [1,2]" and len(lines) == 7
    x = np.array([float(v) for v in lines[2:4]])
    y = np.array([float(v) for v in lines[5:7]])
    assert np.all(np.abs(x) <= 1.0) and y[0] >= 2.05
    np.testing.assert_allclose(forward(x[None])[0], y, rtol=1e-5, atol=1e-5)


def test_unsat_and_timed_out(network: Path, tmp_path: Path) -> None:
    q = query(tmp_path / "u.vnnlib", "(>= Y[0,0] Y[0,1])", box=(0.4, 0.6))
    assert invoke("verify", str(q), "--network", f"f={network}")[:2] == (0, "unsat\n")
    hard = query(tmp_path / "h.vnnlib", "(>= Y[0,0] 2.1000001)")
    assert invoke("verify", str(hard), "--network", f"f={network}", "--timeout", "0")[:2] == (0, "timed-out\n")


@pytest.mark.parametrize(
    ("mapping", "kind", "match"),
    [
        ([], "real", "has no --network f="),
        (["f", "g"], "real", "names 'g', which"),
        (["f"], "float64", "declares float64 but tiny.onnx computes in float32"),
        (["f"], "float32", "cannot give a sound analysis over float32"),
    ],
)
def test_the_standards_error_conditions(
    network: Path, tmp_path: Path, mapping: list[str], kind: str, match: str
) -> None:
    q = query(tmp_path / "q.vnnlib", "(>= Y[0,0] 2.05)", kind=kind)
    args = [arg for name in mapping for arg in ("--network", f"{name}={network}")]
    code, out, err = invoke("verify", str(q), *args)
    assert code == 2 and out == "" and match in err and err.count("\n") == 1


def test_bad_query_and_mismatched_network(network: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.vnnlib"
    bad.write_text("(vnnlib-version <2.0>)\n(assert")
    code, out, err = invoke("verify", str(bad), "--network", f"f={network}")
    assert code == 2 and out == "" and "does not parse" in err
    wide = tmp_path / "wide.vnnlib"
    wide.write_text(
        "(vnnlib-version <2.0>)\n(declare-network f (declare-input X real [3]) (declare-output Y real [2]))\n"
        + "".join(f"(assert (>= X[{i}] 0.0))(assert (<= X[{i}] 1.0))" for i in range(3))
        + "(assert (>= Y[0] 0.0))"
    )
    code, out, err = invoke("verify", str(wide), "--network", f"f={network}")
    assert code == 2 and out == "" and "3 inputs" in err
