"""External solvers as a backend of `uverify check` (vnn/external.py): driven through the VNN-LIB 2.0
solver command line against `vnnlibTestSolver` (a fake solver whose answers a TOML file chooses) and
against `uverify-solver`; every `sat` replayed by onnxruntime, every misbehaviour an error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from uverify.cli import cli
from uverify.errors import UverifyError
from uverify.specs.schema import CheckSpec, ExternalSpec
from uverify.testing.vnn import forward, write_network
from uverify.verifier.check import _Checker, check
from uverify.verifier.property import robustness
from uverify.verifier.report import load_report, render_table, save_report
from uverify.verifier.samples import Samples
from uverify.vnn.external import ExternalSolver, ExternalSolverError, parse_answer, solver_for

from helpers import tiny_spec_dict

BIN = Path(sys.executable).parent
TEST_SOLVER = BIN / "vnnlibTestSolver"
UVERIFY_SOLVER = BIN / "uverify-solver"
# samples of the tiny network (2 inputs, 2 classes): class 0 with margin 2, class 1 with margin 6, class 0
X = np.array([[0.5, -0.5], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
LABELS = np.array([0, 1, 0])
PROP = robustness(np.array([-0.5, -1.5]), np.array([1.5, 0.5]), 0, 2)  # sample 0's box at epsilon 1


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = write_network(tmp_path / "tiny.onnx", batch="N")
    assert (forward(X.astype(np.float64)).argmax(1) == LABELS).all()
    return path


def config(tmp_path: Path, rules: list[dict[str, Any]], name: str = "Fake Solver 1.0") -> str:
    """A vnnlibTestSolver configuration with these rules (first match wins); the command that uses it."""
    lines = [f'[solver]\nname = "{name}"\nversion = "1.0"\n']
    for rule in rules:
        lines.append("[[rules]]")
        for key, value in rule.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {list(map(float, v))}" for k, v in value.items())
                lines.append(f"{key} = {{ {inner} }}")
            elif isinstance(value, bool):
                lines.append(f"{key} = {str(value).lower()}")
            else:
                lines.append(f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}")
        lines.append("")
    path = tmp_path / "solver.toml"
    path.write_text("\n".join(lines).replace("'", '"'))
    return f"{TEST_SOLVER} --config {path}"


def solve(tmp_path: Path, model: Path, rule: dict[str, Any], timeout: float = 5.0, **kwargs: Any) -> Any:
    solver = ExternalSolver(config(tmp_path, [{"match": "*", **rule}]), timeout, model, **kwargs)
    return solver.solve(PROP, (1, 2), (2,), "q")


# --------------------------------------------------------------------------------------------------
# The driver, one answer at a time
# --------------------------------------------------------------------------------------------------


def test_the_solvers_name_is_asked_once(tmp_path: Path, model: Path) -> None:
    solver = ExternalSolver(config(tmp_path, [{"match": "*", "result": "unsat"}], name="Fake Solver"), 5, model)
    assert solver.name == "Fake Solver" and solver.timeout_s == 5.0 and "vnnlibTestSolver" in solver.command


def test_unsat_unknown_and_sat_with_its_assignment(tmp_path: Path, model: Path) -> None:
    assert solve(tmp_path, model, {"result": "unsat"}).status == "unsat"
    assert solve(tmp_path, model, {"result": "unknown"}).status == "unknown"
    answer = solve(tmp_path, model, {"result": "sat", "assignments": {"X": [0.5, 0.25], "Y": [1, 2]}})
    assert answer.status == "sat" and answer.x.tolist() == [0.5, 0.25] and answer.message is None


def test_a_solver_out_of_time_says_timed_out_and_one_that_hangs_is_killed(tmp_path: Path, model: Path) -> None:
    answer = solve(tmp_path, model, {"result": "unsat", "delay_seconds": 30}, timeout=1)
    assert answer.status == "timeout" and answer.seconds < 3
    hang = tmp_path / "hang.py"
    hang.write_text("import sys, time\nif '--name' in sys.argv:\n    print('hang')\nelse:\n    time.sleep(60)\n")
    solver = ExternalSolver(f"{sys.executable} {hang}", 0.5, model, grace_s=0.3)
    answer = solver.solve(PROP, (1, 2), (2,), "q")
    assert answer.status == "timeout" and answer.seconds < 3 and "killed" in (answer.message or "")


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ({"result": "unsat", "raw_stdout": "holds, probably\n"}, "none of sat"),
        ({"result": "unsat", "raw_stdout": ""}, "'(empty)'"),
        ({"result": "unsat", "exit_code": 3}, "exited with code 3"),
        ({"result": "unsat", "crash": True, "stderr": "segfault imminent"}, "died of SIGABRT (stderr: segfault"),
        ({"result": "sat"}, "no values for the input X"),
        ({"result": "sat", "raw_stdout": "sat\nX real [1,2]\n0.5\n"}, "needs 2 values, got 1"),
        ({"result": "sat", "raw_stdout": "sat\nX real [1,2]\n0.5\nzero\n"}, "'zero', not a number"),
        ({"result": "sat", "raw_stdout": "sat\nX real [3]\n1\n2\n3\n"}, "gives 3 values for X"),
    ],
)
def test_misbehaviour_is_an_error_never_a_verdict(
    tmp_path: Path, model: Path, rule: dict[str, Any], needle: str
) -> None:
    answer = solve(tmp_path, model, rule)
    assert answer.status == "error" and needle in (answer.message or ""), answer


def test_stderr_noise_does_not_disturb_the_answer(tmp_path: Path, model: Path) -> None:
    answer = solve(tmp_path, model, {"result": "unsat", "stderr": "loading...\nsat\nthinking"})
    assert answer.status == "unsat"


def test_the_query_is_vnnlib_2_the_solver_parses_with_the_network_mapped(tmp_path: Path, model: Path) -> None:
    """vnnlibTestSolver reads the query (the vnnlib package) and checks the --network mapping against it
    when it prints an assignment: a wrong query or mapping would be a usage error (exit 1)."""
    answer = solve(tmp_path, model, {"result": "sat", "assignments": {"X": [0, 0], "Y": [0, 0]}})
    assert answer.status == "sat"


def test_a_command_that_cannot_run_is_bad_input(tmp_path: Path, model: Path) -> None:
    with pytest.raises(ExternalSolverError, match="cannot be run"):
        ExternalSolver(str(tmp_path / "no-such-solver"), 5, model)
    with pytest.raises(ExternalSolverError, match=r"--name failed.*exit code 2.*no configuration"):
        ExternalSolver(str(TEST_SOLVER), 5, model)  # no configuration: it refuses everything
    with pytest.raises(ExternalSolverError, match="command"):
        ExternalSolver("'unbalanced", 5, model)


def test_parse_answer_reads_the_standards_format() -> None:
    text = "sat\nX real [1,2]\n0.25\n-1e-3\nY float32 []\n7\n"
    status, x, problem = parse_answer(text, "X", 2)
    assert status == "sat" and x is not None and x.tolist() == [0.25, -0.001] and problem is None
    assert parse_answer("timed-out\n", "X", 2)[0] == "timeout"
    assert parse_answer("unsat\r\n", "X", 2)[0] == "unsat"
    assert (
        parse_answer("sat\nX real [1,two]\n", "X", 2)[2] == "sat assignment: X has dimensions '[1,two]', not integers"
    )


# --------------------------------------------------------------------------------------------------
# The backend inside uverify check
# --------------------------------------------------------------------------------------------------


@pytest.fixture
def nothing_decided(monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in stages decide nothing: bounds certify nothing (sound), PGD finds nothing."""

    def no_bound(self: Any, x: torch.Tensor, y: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return torch.full((len(x), self.num_classes - 1), -1.0)

    def no_attack(self: Any, xb: Any, yb: Any, x: np.ndarray, *args: Any) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros_like(x), np.zeros(len(x), bool)

    monkeypatch.setattr("uverify.verifier.bounds.Bounder.margins", no_bound)
    monkeypatch.setattr(_Checker, "_attack", no_attack)


def run_check(model: Path, command: str, epsilons: list[float], tmp_path: Path, **kwargs: Any) -> Any:
    spec = CheckSpec.model_validate(
        {"name": "t", "property": {"epsilon": epsilons}, "verify": {"external": {"command": command, "timeout_s": 20}}}
    )
    assert spec.verify.external is not None
    samples = Samples(X[:, None, :], LABELS, np.arange(3), "test")
    solver = solver_for(spec.verify.external, model)
    return check(model, spec, samples, None, progress=False, external=solver, **kwargs)


def test_unsat_is_verified_with_the_solver_named(tmp_path: Path, model: Path, nothing_decided: None) -> None:
    command = config(tmp_path, [{"match": "*", "result": "unsat"}], name="Fake Solver 2")
    report = run_check(model, command, [0.05], tmp_path)
    (result,) = report.results
    assert result.counts.verified == 3 and result.certified_accuracy == 1.0
    assert result.external is not None and result.external.solver == "Fake Solver 2"
    assert result.external.before_certified_accuracy == 0.0 and result.external.answers["unsat"] == 3
    assert all(row.external and row.external[0].status == "unsat" for row in report.samples)
    save_report(report, tmp_path / "r.json")
    assert load_report(tmp_path / "r.json") == report  # the strict schema reads its own fields back
    assert "external solver Fake Solver 2 at epsilon 0.05" in render_table(report)


def test_sat_counts_only_when_onnxruntime_replays_it(tmp_path: Path, model: Path, nothing_decided: None) -> None:
    rules = [
        # sample 0 (class 0) at epsilon 1: (0.5, 0.5) is in its box and class 1: a counterexample
        {"match": "id0_*", "result": "sat", "assignments": {"X": [0.5, 0.5], "Y": [0, 0]}},
        # sample 1's own centre: in the box, correctly classified, so not one
        {"match": "id1_*", "result": "sat", "assignments": {"X": [0.0, 1.0], "Y": [0, 0]}},
        # far outside sample 2's box
        {"match": "id2_*", "result": "sat", "assignments": {"X": [5.0, 5.0], "Y": [0, 0]}},
    ]
    cex = tmp_path / "cex.npz"
    report = run_check(model, config(tmp_path, rules), [1.0], tmp_path, counterexamples=cex)
    assert [row.verdicts[0] for row in report.samples] == ["falsified", "unknown", "unknown"]
    statuses = [row.external[0] for row in report.samples if row.external and row.external[0]]
    assert [s.status for s in statuses] == ["sat", "error", "error"]
    assert "failed the onnxruntime replay" in (statuses[1].message or "")
    assert "outside the box" in (statuses[2].message or "")
    external = report.results[0].external
    assert external is not None and external.falsified == 1 and external.answers["error"] == 2
    assert len(external.errors) == 2
    with np.load(cex) as found:
        # (0.5, 0.5) lies on the closed box's edge: pulled into the open ball, and misclassified there
        assert found["ids"].tolist() == [0] and np.allclose(found["x_adv"].reshape(-1), [0.5, 0.5], atol=1e-6)
        assert np.abs(found["x_adv"].reshape(-1) - X[0]).max() < 1.0
        assert forward(found["x_adv"].reshape(1, 2).astype(np.float64)).argmax() == 1


def test_uverify_solver_as_the_external_solver(tmp_path: Path, model: Path, nothing_decided: None) -> None:
    """Our own chapter-5 CLI decides what the monkeypatched stages could not: sample 0 is robust at 0.05
    (margin 2) and not at 1 (its box holds class-1 points)."""
    samples = Samples(X[:1, None, :], LABELS[:1], np.arange(1), "test")
    spec = CheckSpec.model_validate({"name": "t", "property": {"epsilon": [0.05, 1.0]}})
    solver = ExternalSolver(str(UVERIFY_SOLVER), 20, model)
    assert solver.name.startswith("uverify")
    report = check(model, spec, samples, None, progress=False, external=solver)
    assert report.samples[0].verdicts == ["verified", "falsified"]


def test_check_refuses_an_external_spec_without_a_driver(model: Path) -> None:
    spec = CheckSpec.model_validate({"name": "t", "verify": {"external": {"command": "x"}}})
    samples = Samples(X[:, None, :], LABELS, np.arange(3), "test")
    with pytest.raises(UverifyError, match=r"verify\.external is set"):
        check(model, spec, samples, None, progress=False)


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_external_solver_and_its_bad_input(tmp_path: Path, model: Path) -> None:
    np.savez(tmp_path / "s.npz", x=X[:, None, :], y=LABELS)
    base = ["check", "--model", str(model), "--samples", str(tmp_path / "s.npz"), "--epsilon", "0.05", "--quiet"]
    command = config(tmp_path, [{"match": "*", "result": "unsat"}])
    result = _cli(*base, "--external-solver", command, "--out", str(tmp_path / "r.json"))
    assert result.exit_code == 0, result.output
    assert load_report(tmp_path / "r.json").spec["verify"]["external"] == {"command": command, "timeout_s": 60.0}

    cases = [
        (["--external-solver", str(tmp_path / "missing")], "cannot be run"),
        (["--external-solver", ""], "--external-solver"),
        (["--external-solver", command, "--norm", "2"], "L_inf ball"),
    ]
    for extra, needle in cases:
        result = _cli(*base, *extra)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (
            extra,
            result.output,
        )
    for broken, needle in [
        ({"command": command, "timeout": 5}, "verify.external.timeout"),
        ({"command": command, "timeout_s": "5"}, "verify.external.timeout_s"),
        ({"command": 3}, "verify.external.command"),
        ({"timeout_s": 5}, "verify.external.command"),
    ]:
        path = tmp_path / "broken.yaml"
        path.write_text(yaml.safe_dump(tiny_spec_dict(verify={"external": broken})))
        result = _cli("check", "--spec", str(path), "--model", str(model), "--quiet")
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], (broken, result.output)


def test_solver_for_builds_the_spec_driver(tmp_path: Path, model: Path) -> None:
    command = config(tmp_path, [{"match": "*", "result": "unknown"}])
    solver = solver_for(ExternalSpec(command=command, timeout_s=3.0), model)
    assert solver.timeout_s == 3.0 and solver.solve(PROP, (1, 2), (2,), "q").status == "unknown"
