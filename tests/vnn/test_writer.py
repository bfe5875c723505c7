"""VNN-LIB out: `Property` → 1.0 and 2.0 text that the reader (the `vnnlib` package) reads back bit for
bit, and `uverify check --export-vnnlib`: the check's own boxes, a self-contained VNN-COMP folder, and the
round trip through `uverify vnncomp` that never contradicts the check."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from uverify.cli import cli
from uverify.errors import UverifyError
from uverify.pipeline import train_run
from uverify.specs.load import validate_spec
from uverify.specs.schema import Spec
from uverify.verifier import lirpa_compat
from uverify.verifier.check import check
from uverify.verifier.property import Box, Conjunction, Property, robustness
from uverify.verifier.samples import samples_from_spec
from uverify.vnn.reader import parse_vnnlib, read_vnnlib
from uverify.vnn.results import read_instances
from uverify.vnn.writer import format_number, format_vnnlib, write_benchmark

from helpers import tiny_spec_dict

SPEC = tiny_spec_dict(
    data={"dataset": "mixture", "classes": 3, "dims": 4, "n_samples": 300, "separation": 3.0, "samples": 6},
    property={"norm": "inf", "epsilon": [0.05, 0.6]},
    attack={"steps": 20, "restarts": 2},
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Spec, Path]:
    spec = validate_spec(SPEC)
    out = tmp_path_factory.mktemp("run")
    train_run(spec, out, adversarial=False, progress=False)
    return spec, out / "model.onnx"


def _same(a: Property, b: Property) -> None:
    assert len(a.boxes) == len(b.boxes) and len(a.violation) == len(b.violation)
    for p, q in zip(a.boxes, b.boxes, strict=True):
        assert p.lower.tobytes() == q.lower.tobytes() and p.upper.tobytes() == q.upper.tobytes()
    for c, e in zip(a.violation, b.violation, strict=True):
        assert np.array_equal(c.C, e.C) and np.array_equal(c.d, e.d)


def test_numbers_are_plain_decimals_that_read_back_exactly() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(200) * 10.0 ** rng.integers(-30, 30, 200), [0.0, -0.0, 1e-45, 3e38]])
    for v in values.astype(np.float32).astype(np.float64):
        text = format_number(v)
        assert "e" not in text.lower() and "." in text and not text.startswith("-0.0" if v == 0 else "+")
        assert float(text) == v
    with pytest.raises(UverifyError, match="no literal"):
        format_number(float("inf"))


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_a_robustness_property_reads_back_bit_for_bit(version: str) -> None:
    x = np.random.default_rng(1).standard_normal(6).astype(np.float32)
    lower = (x - np.float32(0.1)).astype(np.float64)
    upper = (x + np.float32(0.1)).astype(np.float64)
    lower[0], upper[0] = 1e-30, 2.5e-20  # no exponents in the file, yet the same bits back
    prop = robustness(lower, upper, 2, 4)
    text = format_vnnlib(prop, version=version, input_shape=(2, 3) if version == "2.0" else None, comments=["a\nb"])
    assert text.startswith("; a\n; b\n")
    query = parse_vnnlib(text)
    assert query.version == version and query.num_inputs == 6 and query.num_outputs == 4
    (back,) = query.properties
    _same(back, prop)
    if version == "1.0":  # the forms VNN-COMP's own parsers know
        assert "(declare-const X_5 Real)" in text and "(and (<= Y_2 Y_0))" in text
    else:
        assert "(declare-input X real [2,3])" in text and "X[1,2]" in text


@pytest.mark.parametrize("version", ["1.0", "2.0"])
def test_general_rows_and_several_boxes_read_back(version: str) -> None:
    lo = np.array([0.0, -1.0, 0.25])
    boxes = (Box(lo, lo + 1.0), Box(lo - 2.0, lo - 1.5))
    rows = np.array([[0.5, -2.0, 1e-3], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    prop = Property(boxes, (Conjunction(rows, np.array([0.25, -1e-9, 3.0])), Conjunction(rows[:1], np.zeros(1))))
    (back,) = parse_vnnlib(format_vnnlib(prop, version=version)).properties
    _same(back, prop)


def test_shapes_must_hold_the_property_and_versions_are_known() -> None:
    prop = robustness(np.zeros(4), np.ones(4), 0, 2)
    with pytest.raises(UverifyError, match="do not hold"):
        format_vnnlib(prop, version="2.0", input_shape=(3,))
    with pytest.raises(UverifyError, match=r"1\.0 and 2\.0"):
        format_vnnlib(prop, version="3.0")


def _spy_on_bounded_boxes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[np.ndarray, np.ndarray]]:
    """Record the x_L / x_U of every box auto_LiRPA is asked to bound."""
    lirpa = lirpa_compat.import_auto_lirpa()
    original = lirpa.PerturbationLpNorm
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("x_L") is not None:
            seen.append((kwargs["x_L"].numpy().copy(), kwargs["x_U"].numpy().copy()))
        return original(*args, **kwargs)

    monkeypatch.setattr(lirpa, "PerturbationLpNorm", spy)
    return seen


def test_the_exported_boxes_are_the_boxes_the_bounds_certified(
    trained: tuple[Spec, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, model = trained
    samples, domain = samples_from_spec(spec)
    seen = _spy_on_bounded_boxes(monkeypatch)
    exported: list[Any] = []
    report = check(model, spec, samples, domain, progress=False, export=exported.extend)
    assert len(exported) == len(spec.property.epsilon) * len(samples.ids)
    bounded = {(lo.tobytes(), hi.tobytes()) for x_l, x_u in seen for lo, hi in zip(x_l, x_u, strict=True)}
    rows = {row.id: row for row in report.samples}
    assert any(item.prop.boxes[0].lower.min() == domain.lower.min() for item in exported)  # some are clipped
    for item in exported:
        box = item.prop.boxes[0]
        k = spec.property.epsilon.index(item.epsilon)
        assert item.verdict == rows[item.sample_id].verdicts[k] and item.label == rows[item.sample_id].label
        assert np.all(box.lower >= domain.lower.ravel()) and np.all(box.upper <= domain.upper.ravel())
        if item.verdict != "misclassified":  # the bounds saw exactly this box (as float32)
            key = (box.lower.astype(np.float32).tobytes(), box.upper.astype(np.float32).tobytes())
            assert key in bounded
        # and the file says exactly this box
        write_benchmark(tmp_path / "b", model, [item], 30.0)
        (back,) = read_vnnlib(next((tmp_path / "b" / "vnnlib").iterdir())).properties
        _same(back, item.prop)


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_check_export_vnncomp_round_trip_agrees(trained: tuple[Spec, Path], tmp_path: Path, write_spec: Any) -> None:
    """check → --export-vnnlib → uverify vnncomp: every verdict the check reached comes back the same
    (verified ↔ unsat, falsified or misclassified ↔ sat). The check runs with IBP, so it leaves samples
    unknown that vnncomp (CROWN, alpha-CROWN) may decide: those answers must agree with a CROWN check."""
    spec, model = trained
    spec_path = str(write_spec(SPEC))
    bench, report_path = tmp_path / "bench", tmp_path / "report.json"
    result = _cli("check", "--spec", spec_path, "--model", str(model), "--bounds", "IBP", "--epsilon", "0.05",
                  "--epsilon", "0.2", "--export-vnnlib", str(bench), "--out", str(report_path), "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (bench / "onnx" / "model.onnx").read_bytes() == model.read_bytes()
    instances = read_instances(bench / "instances.csv")
    assert [i.onnx_name for i in instances] == ["onnx/model.onnx"] * 12 and all(i.timeout == 60 for i in instances)
    expected = {r["vnnlib"]: r for r in csv.DictReader((bench / "expected.csv").open())}
    verdicts = {r["check_verdict"] for r in expected.values()}
    assert verdicts >= {"verified", "falsified", "unknown"}, verdicts  # every kind crosses
    sweep = spec.model_copy(update={"property": spec.property.model_copy(update={"epsilon": [0.05, 0.2]})})
    strong = check(model, sweep, *samples_from_spec(spec), progress=False)  # CROWN
    reference = {f"vnnlib/id{row.id}_eps{e!r}.vnnlib": v for row in strong.samples
                 for e, v in zip((0.05, 0.2), row.verdicts, strict=True)}  # fmt: skip

    out = tmp_path / "results.csv"
    result = _cli("vnncomp", "--instances", str(bench / "instances.csv"), "--ground-truth",
                  str(bench / "expected.csv"), "--out", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    answers = {row[2]: row[4] for row in csv.reader(out.open())}
    assert set(answers) == set(expected) == set(reference)
    for name, row in expected.items():
        got, verdict = answers[name], row["check_verdict"]
        if verdict == "unknown":
            verdict = reference[name]  # the stronger check's word, when it has one
        if verdict == "verified":
            assert got == "unsat", (name, got)
        elif verdict in ("falsified", "misclassified"):
            assert got == "sat", (name, got)
        else:
            assert got in ("sat", "unsat", "unknown", "timeout"), (name, got)
    score_line = next(line for line in result.output.splitlines() if line.startswith("bench"))
    assert score_line.split()[9] == "0"  # wrong: none


def test_export_bad_input_is_one_line_exit_2(trained: tuple[Spec, Path], tmp_path: Path, write_spec: Any) -> None:
    _, model = trained
    spec_path = str(write_spec(SPEC))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    cases = [
        (["--export-vnnlib", str(busy)], "holds other files"),
        (["--export-vnnlib", str(tmp_path / "file")], "not a folder"),
        (["--export-vnnlib", str(tmp_path / "l2"), "--norm", "2"], "L_inf ball"),
    ]
    for args, needle in cases:
        result = _cli("check", "--spec", spec_path, "--model", str(model), *args, "--quiet")
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], (args, result.output)
    assert (busy / "notes.txt").read_text() == "mine" and not (tmp_path / "l2").exists()


def test_an_earlier_export_is_replaced_whole(trained: tuple[Spec, Path], tmp_path: Path) -> None:
    _, model = trained
    prop = robustness(np.zeros(4), np.full(4, 0.5), 0, 3)

    class Item:
        sample_id, epsilon, label, prop, verdict = 7, 0.5, 0, robustness(np.zeros(4), np.full(4, 0.5), 0, 3), "unknown"

    folder = write_benchmark(tmp_path / "b", model, [Item()], 5.0)
    (folder / "vnnlib" / "stale.vnnlib").write_text("old")
    write_benchmark(folder, model, [Item()], 5.0)
    assert sorted(p.name for p in (folder / "vnnlib").iterdir()) == ["id7_eps0.5.vnnlib"]
    assert (folder / "instances.csv").read_text() == "onnx/model.onnx,vnnlib/id7_eps0.5.vnnlib,5\n"
    digest = hashlib.sha256((folder / "onnx" / "model.onnx").read_bytes()).hexdigest()
    assert digest == hashlib.sha256(model.read_bytes()).hexdigest()
    _same(read_vnnlib(folder / "vnnlib" / "id7_eps0.5.vnnlib").properties[0], prop)
