from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner

from uverify.cli import cli
from uverify.datasets import load
from uverify.errors import UverifyError
from uverify.models.referee import Referee
from uverify.pipeline import train_run
from uverify.specs.load import validate_spec
from uverify.specs.schema import Spec
from uverify.verifier.check import SoundnessError, check
from uverify.verifier.counterexamples import lp_distance
from uverify.verifier.report import load_report, render_table, save_report
from uverify.verifier.samples import samples_from_npz, samples_from_spec

from helpers import tiny_spec_dict

SPEC = tiny_spec_dict(
    data={"dataset": "mixture", "classes": 3, "dims": 4, "n_samples": 300, "separation": 3.0, "samples": 40},
    property={"norm": "inf", "epsilon": [0.02, 0.1]},
    attack={"steps": 20, "restarts": 2},
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Spec, Path]:
    spec = validate_spec(SPEC)
    out = tmp_path_factory.mktemp("run")
    train_run(spec, out, adversarial=False, progress=False)
    return spec, out / "model.onnx"


def _numbers(report) -> list:
    return [(r.epsilon, r.clean_accuracy, r.certified_accuracy, r.pgd_accuracy, r.counts) for r in report.results]


def test_accuracies_are_ordered_and_rows_agree_with_counts(trained: tuple[Spec, Path], tmp_path: Path) -> None:
    spec, model = trained
    samples, domain = samples_from_spec(spec)
    report = check(model, spec, samples, domain, progress=False, counterexamples=tmp_path / "cex.npz")
    assert [r.epsilon for r in report.results] == [0.02, 0.1]
    for k, r in enumerate(report.results):
        assert r.certified_accuracy <= r.pgd_accuracy <= r.clean_accuracy
        assert r.gap_pgd == pytest.approx(r.clean_accuracy - r.pgd_accuracy)
        verdicts = [row.verdicts[k] for row in report.samples]
        assert verdicts.count("verified") == r.counts.verified
        assert verdicts.count("falsified") == r.counts.falsified
        assert sum(vars(r.counts).values()) - r.counts.rejected_counterexamples == len(report.samples) == 40
    big = report.results[1]
    assert big.counts.falsified > 0 and big.counts.verified > 0  # the sweep spans both regimes

    # every saved counterexample is real for the ONNX file: in the ball, in the domain, misclassified
    with np.load(tmp_path / "cex.npz") as cex:
        assert len(cex["ids"]) == sum(r.counts.falsified for r in report.results)
        assert np.all(lp_distance(cex["x"], cex["x_adv"], "inf") <= cex["epsilon"] + 1e-6)
        assert domain.contains(cex["x_adv"]).all()
        preds = Referee(model).logits(cex["x_adv"]).argmax(1)
        assert np.all(preds != cex["y"])
        np.testing.assert_allclose(cex["logits"], Referee(model).logits(cex["x_adv"]), atol=1e-6)


def test_same_spec_same_numbers(trained: tuple[Spec, Path]) -> None:
    spec, model = trained
    samples, domain = samples_from_spec(spec)
    a = check(model, spec, samples, domain, progress=False)
    b = check(model, spec, samples, domain, progress=False)
    assert _numbers(a) == _numbers(b)
    assert a.samples == b.samples


def test_report_round_trips_and_renders(trained: tuple[Spec, Path], tmp_path: Path) -> None:
    spec, model = trained
    samples, domain = samples_from_spec(spec)
    report = check(model, spec, samples, domain, progress=False)
    save_report(report, tmp_path / "r.json")
    again = load_report(tmp_path / "r.json")
    assert _numbers(again) == _numbers(report)
    assert again.model.sha256 == report.model.sha256 and len(again.model.sha256) == 64
    table = render_table(report)
    assert "certified" in table and "0.02" in table
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UverifyError, match="not UTF-8"):
        load_report(tmp_path / "binary.json")
    (tmp_path / "bad.json").write_text('{"schema": "something else"}')
    with pytest.raises(UverifyError, match=r"not a uverify\.report/1 report"):
        load_report(tmp_path / "bad.json")


def test_a_certified_sample_with_a_counterexample_is_raised_never_reported(
    trained: tuple[Spec, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guard itself: an unsound bounder (claims +1 everywhere) must be caught by the cross-check."""
    spec, model = trained
    samples, domain = samples_from_spec(spec)

    def unsound(self, x, y, *args, **kwargs):
        return torch.ones(len(x), self.num_classes - 1)

    monkeypatch.setattr("uverify.verifier.bounds.Bounder.margins", unsound)
    with pytest.raises(SoundnessError, match="certified it, yet onnxruntime confirms a counterexample"):
        check(model, spec, samples, domain, progress=False, cross_check=True)


def test_label_false_checks_the_models_own_prediction(trained: tuple[Spec, Path]) -> None:
    spec, model = trained
    spec = spec.model_copy(update={"property": spec.property.model_copy(update={"label": False})})
    samples, domain = samples_from_spec(spec)
    report = check(model, spec, samples, domain, progress=False)
    assert all(r.counts.misclassified == 0 and r.clean_accuracy == 1.0 for r in report.results)


def _cli(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_check_with_an_npz_of_samples(trained: tuple[Spec, Path], tmp_path: Path, write_spec) -> None:
    spec, model = trained
    test = load(spec.data).test
    np.savez(tmp_path / "s.npz", x=test.X[:10], y=test.y[:10], ids=test.ids[:10])
    spec_path = write_spec(SPEC)
    out = tmp_path / "report.json"
    result = _cli("check", "--spec", str(spec_path), "--model", str(model), "--samples", str(tmp_path / "s.npz"),
                  "--epsilon", "0.05", "--out", str(out), "--quiet")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = load_report(out)
    assert [r.epsilon for r in report.results] == [0.05]
    assert [row.id for row in report.samples] == test.ids[:10].tolist()
    assert report.samples_source.endswith("s.npz")
    assert (tmp_path / "report.counterexamples.npz").exists()


def _corrupt_copies(model: Path, tmp_path: Path) -> dict[str, Path]:
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    proto = onnx.load(str(model))
    weight = proto.graph.initializer[0]
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[0] = np.nan
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    nan = tmp_path / "nan.onnx"
    onnx.save(proto, str(nan))
    return {"truncated": truncated, "garbage": garbage, "nan": nan}


def test_cli_bad_input_is_one_line_exit_2(trained: tuple[Spec, Path], tmp_path: Path, write_spec) -> None:
    _, model = trained
    spec_path = str(write_spec(SPEC))
    bad = _corrupt_copies(model, tmp_path)
    wide = validate_spec(tiny_spec_dict(data={"dataset": "mixture", "classes": 3, "dims": 5, "n_samples": 100}))
    train_run(wide, tmp_path / "wide", adversarial=False, progress=False)
    np.savez(tmp_path / "nox.npz", y=np.zeros(3, np.int64))
    np.savez(tmp_path / "badlabel.npz", x=np.full((3, 4), 0.5, np.float32), y=np.array([0, 1, 7]))
    np.savez(tmp_path / "pickled.npz", x=np.array([object()], dtype=object), y=np.zeros(1, np.int64))
    np.savez(tmp_path / "y0d.npz", x=np.zeros((3, 4), np.float32), y=np.array(1))
    (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04 broken")
    np.save(tmp_path / "single.npy", np.zeros((3, 4), np.float32))
    (tmp_path / "file").write_text("a file where a folder must go")
    cases = [
        (["--model", str(tmp_path / "missing.onnx")], "missing.onnx"),
        (["--model", str(bad["truncated"])], "truncated.onnx"),
        (["--model", str(bad["garbage"])], "garbage.onnx"),
        (["--model", str(bad["nan"])], "NaN"),
        (["--model", str(tmp_path / "wide" / "model.onnx")], "shape"),
        (["--model", str(model), "--epsilon", "-0.1"], "--epsilon"),
        (["--model", str(model), "--epsilon", "0"], "--epsilon"),
        (["--model", str(model), "--samples", str(tmp_path / "nox.npz")], "no array 'x'"),
        (["--model", str(model), "--samples", str(tmp_path / "badlabel.npz")], "label 7 is out of range"),
        (["--model", str(model), "--samples", str(tmp_path / "pickled.npz")], "pickled.npz"),
        (["--model", str(model), "--samples", str(tmp_path / "none.npz")], "none.npz"),
        (["--model", str(model), "--samples", str(tmp_path / "y0d.npz")], "y0d.npz"),
        (["--model", str(model), "--samples", str(tmp_path / "zip.npz")], "not a readable .npz"),
        (["--model", str(model), "--samples", str(tmp_path / "single.npy")], "single.npy"),
        (["--model", str(model), "--out", str(tmp_path / "file" / "r.json")], "cannot write"),
    ]
    for args, expected in cases:
        result = _cli("check", "--spec", spec_path, *args, "--quiet")
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, (args, result.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (args, result.output)
    assert _cli("check", "--spec", spec_path, "--model", str(model), "--norm", "3").exit_code == 2


def test_npz_loader_rejects_mismatched_lengths(tmp_path: Path) -> None:
    np.savez(tmp_path / "m.npz", x=np.zeros((3, 2), np.float32), y=np.zeros(2, np.int64))
    with pytest.raises(UverifyError, match="3 rows"):
        samples_from_npz(tmp_path / "m.npz")


def test_counterexamples_of_large_inputs_are_pulled_into_the_open_ball() -> None:
    """For inputs near 40, x + eps rounds in float32 to a point just outside the ball; the referee must
    move it inside (and confirm it there) rather than throw a real counterexample away."""
    from uverify.verifier.counterexamples import pull_into_ball

    rng = np.random.default_rng(0)
    x = rng.uniform(32, 60, (50, 10)).astype(np.float32)
    for norm, eps in (("inf", 10.0 / 3), ("2", 7.3), ("1", 11.1)):
        direction = rng.normal(size=x.shape)
        order = np.inf if norm == "inf" else float(norm)
        direction /= np.linalg.norm(direction, ord=order, axis=1, keepdims=True)
        x_adv = (x + eps * direction).astype(np.float32)
        assert (lp_distance(x, x_adv, norm) >= eps).any()  # float32 rounding left some outside
        lo, hi = np.full(10, -np.inf, np.float32), np.full(10, np.inf, np.float32)
        pulled = pull_into_ball(x, x_adv, eps, norm, lo, hi)
        assert np.all(lp_distance(x, pulled, norm) < eps)
        assert np.all(lp_distance(pulled, x_adv, norm) < 1e-4 * eps)  # moved by round-off only
