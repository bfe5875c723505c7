"""compare and gate on hand-written reports, and the CLI's exit codes and JUnit output."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from uverify.cli import cli
from uverify.errors import UverifyError
from uverify.verifier.compare import compare, gate, render_comparison, write_junit
from uverify.verifier.report import Report, save_report

from helpers import tiny_spec_dict

EPS = [0.01, 0.05]


def report(
    verdicts: dict[int, list[str]], *, norm: str = "inf", eps: list[float] = EPS, max_drop: float = 0.02
) -> Report:
    """A report over samples {id: [verdict per epsilon]} whose accuracies follow from the verdicts."""
    n = len(verdicts)
    results = []
    for k, e in enumerate(eps):
        column = [v[k] for v in verdicts.values()]
        count = {name: column.count(name) for name in ("verified", "falsified", "unknown", "misclassified")}
        clean = (n - count["misclassified"]) / n
        certified = count["verified"] / n
        pgd = (count["verified"] + count["unknown"]) / n
        results.append(
            {
                "epsilon": e,
                "clean_accuracy": clean,
                "certified_accuracy": certified,
                "pgd_accuracy": pgd,
                "gap_pgd": clean - pgd,
                "gap_certified": clean - certified,
                "counts": count | {"rejected_counterexamples": 0},
                "seconds": {"bounds": 0.0, "attack": 0.0, "referee": 0.0},
            }
        )
    raw: dict[str, Any] = {
        "schema": "uverify.report/1",
        "spec_name": "hand",
        "spec_sha256": "0" * 64,
        "spec": {"gate": {"metric": "certified_accuracy", "max_drop": max_drop}},
        "model": {"path": "m.onnx", "sha256": "1" * 64, "metadata": {}},
        "samples_source": "hand-written",
        "norm": norm,
        "method": "CROWN",
        "attack": {},
        "versions": {},
        "seconds": 0.0,
        "results": results,
        "samples": [
            {"id": i, "label": 0, "prediction": 0, "verdicts": v, "margin_lower_bounds": [None] * len(eps)}
            for i, v in verdicts.items()
        ],
    }
    return Report.model_validate(raw)


BEFORE = {
    1: ["verified", "verified"],
    2: ["verified", "unknown"],
    3: ["verified", "falsified"],
    4: ["unknown", "falsified"],
    5: ["misclassified", "misclassified"],
}
AFTER = {
    1: ["verified", "unknown"],  # lost certification at 0.05, still robust
    2: ["verified", "falsified"],  # lost robustness at 0.05
    3: ["verified", "verified"],  # gained both at 0.05
    4: ["verified", "falsified"],  # gained certification at 0.01
    5: ["misclassified", "misclassified"],
}


def test_compare_gives_deltas_and_the_samples_that_changed() -> None:
    result = compare(report(BEFORE), report(AFTER))
    assert result.samples == 5
    low, high = result.rows
    assert low.before["certified_accuracy"] == pytest.approx(3 / 5)
    assert low.after["certified_accuracy"] == pytest.approx(4 / 5)
    assert low.delta["certified_accuracy"] == pytest.approx(4 / 5 - 3 / 5)
    assert low.gained_certification == [4] and low.lost_certification == []
    assert high.lost_certification == [1] and high.gained_certification == [3]
    assert high.lost_robustness == [2] and high.gained_robustness == [3]
    table = render_comparison(result, "table")
    assert "lost certification" in table and "1: 1" in table
    markdown = render_comparison(result, "markdown")
    assert markdown.count("\n|---|") == 2 and "| 0.05 |" in markdown
    parsed = json.loads(render_comparison(result, "json"))
    assert parsed["rows"][1]["lost_robustness"] == [2]


def test_compare_refuses_reports_that_are_not_comparable() -> None:
    with pytest.raises(UverifyError, match="different norms"):
        compare(report(BEFORE), report(AFTER, norm="2"))
    with pytest.raises(UverifyError, match="share no epsilon"):
        compare(report(BEFORE), report(AFTER, eps=[0.02, 0.03]))
    with pytest.raises(UverifyError, match="checked different samples"):
        compare(report(BEFORE), report(AFTER | {6: ["verified", "verified"]}))
    with pytest.raises(UverifyError, match="checked different samples"):
        gate(report(BEFORE), report(AFTER | {6: ["verified", "verified"]}), "certified_accuracy", 0.02)


def test_gate_refuses_a_candidate_that_skipped_an_epsilon() -> None:
    """A regression at an epsilon the candidate did not check must not pass unseen."""
    with pytest.raises(UverifyError, match=r"no results at epsilon 0\.05"):
        gate(report(BEFORE), report({i: v[:1] for i, v in AFTER.items()}, eps=[0.01]), "certified_accuracy", 0.02)


def test_gate_passes_at_the_limit_and_fails_beyond_it() -> None:
    base = report({i: ["verified", "verified"] for i in range(50)})
    one_lost = report({i: ["verified", "verified" if i else "unknown"] for i in range(50)})  # drop 0.02 at 0.05
    two_lost = report({i: ["verified", "verified" if i > 1 else "unknown"] for i in range(50)})  # drop 0.04
    assert gate(base, one_lost, "certified_accuracy", 0.02).passed
    result = gate(base, two_lost, "certified_accuracy", 0.02)
    assert not result.passed and [c.passed for c in result.checks] == [True, False]
    assert gate(base, two_lost, "pgd_accuracy", 0.0).passed  # unknown still counts as PGD-robust
    assert "REGRESSION" in result.summary() and "FAILED" in result.summary()
    with pytest.raises(UverifyError, match="max-drop"):
        gate(base, base, "certified_accuracy", 1.5)


def test_junit_has_a_failure_per_regression(tmp_path: Path) -> None:
    base = report({i: ["verified", "verified"] for i in range(10)})
    worse = report({i: ["unknown", "verified" if i else "falsified"] for i in range(10)})
    path = write_junit(gate(base, worse, "certified_accuracy", 0.05), tmp_path / "gate.xml", "a.json", "b.json")
    root = ET.parse(path).getroot()
    suite = root.find("testsuite")
    assert suite is not None and suite.get("tests") == "2" and suite.get("failures") == "2"
    found = [case.find("failure") for case in suite.iter("testcase")]
    failures = [f for f in found if f is not None]
    assert len(failures) == len(found) and all(f.get("type") == "RobustnessRegression" for f in failures)
    assert "1.0000 → 0.0000" in (failures[0].get("message") or "")


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_gate_cli_exit_codes_defaults_and_junit(tmp_path: Path, write_spec) -> None:
    base = save_report(report({i: ["verified", "verified"] for i in range(50)}, max_drop=0.05), tmp_path / "b.json")
    worse = save_report(
        report({i: ["verified", "verified" if i > 1 else "unknown"] for i in range(50)}), tmp_path / "c.json"
    )
    # the baseline's spec allows 0.05: a drop of 0.04 passes
    passed = _invoke("gate", "--baseline", str(base), "--candidate", str(worse), "--junit", str(tmp_path / "j.xml"))
    assert passed.exit_code == 0 and "PASSED" in passed.output and (tmp_path / "j.xml").is_file()
    failed = _invoke("gate", "--baseline", str(base), "--candidate", str(worse), "--max-drop", "0.02")
    assert failed.exit_code == 1 and "REGRESSION" in failed.output
    strict = write_spec(tiny_spec_dict(gate={"metric": "certified_accuracy", "max_drop": 0.0}))
    assert _invoke("gate", "--baseline", str(base), "--candidate", str(worse), "--spec", str(strict)).exit_code == 1
    assert (
        _invoke("gate", "--baseline", str(base), "--candidate", str(worse), "--metric", "pgd_accuracy").exit_code == 0
    )
    (tmp_path / "junk.json").write_text('{"schema": "uverify.report/1"}')
    for args, message in [
        (["--candidate", str(tmp_path / "missing.json")], "cannot read"),
        (["--candidate", str(tmp_path / "junk.json")], "not a uverify.report/1 report"),
        (["--candidate", str(worse), "--max-drop", "-1"], "max-drop"),
    ]:
        result = _invoke("gate", "--baseline", str(base), *args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and message in result.output and "Traceback" not in result.output


def test_compare_cli_formats(tmp_path: Path) -> None:
    before = save_report(report(BEFORE), tmp_path / "before.json")
    after = save_report(report(AFTER), tmp_path / "after.json")
    for fmt in ("table", "markdown", "json"):
        result = _invoke("compare", str(before), str(after), "--format", fmt)
        assert result.exit_code == 0, result.output
    assert json.loads(_invoke("compare", str(before), str(after), "--format", "json").output)["samples"] == 5
    assert _invoke("compare", str(before), str(tmp_path / "nope.json")).exit_code == 2
