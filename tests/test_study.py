from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from uverify.cli import cli
from uverify.specs.load import validate_spec
from uverify.specs.schema import Spec
from uverify.study import METHODS, TRAININGS, StudyResult, study

from helpers import tiny_spec_dict


def study_spec() -> Spec:
    """A small mixture where adversarial training matters: in 40 dimensions a standard-trained model on
    480 samples leans on many small noise directions that an L∞ attack adds up."""
    return validate_spec(
        tiny_spec_dict(
            data={"dataset": "mixture", "classes": 3, "dims": 40, "n_samples": 600, "separation": 4.0, "samples": 100},
            model={"arch": "mlp", "hidden": [32]},
            train={"epochs": 10, "batch_size": 32, "lr": 0.01, "seed": 0, "adversarial": {"epsilon": 0.05, "steps": 5}},
            property={"norm": "inf", "epsilon": [0.02, 0.05]},
            attack={"steps": 20, "restarts": 2},
            unlearning={
                "method": "sisa",
                "sisa": {"shards": 3, "slices": 2},
                "amnesiac": {"repair_epochs": 1},
                "delete": {"fraction": 0.02, "seed": 0},
            },
        )
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> StudyResult:
    return study(study_spec(), tmp_path_factory.mktemp("study") / "out", progress=False, echo=lambda _: None)


def test_the_grid_writes_every_cell_table_and_plot(finished: StudyResult) -> None:
    out = finished.out
    assert sorted((c.method, c.training) for c in finished.cells) == sorted((m, t) for m in METHODS for t in TRAININGS)
    for cell in finished.cells:
        assert (cell.run / "report_before.json").is_file() and (cell.run / "report_after.json").is_file()
        assert cell.before.model.sha256 != cell.after.model.sha256  # M' is another model
        assert len(cell.deletion["ids"]) == round(0.02 * 480)
    tables = json.loads((out / "tables.json").read_text())
    assert set(tables) == {"pgd", "certified"} and set(tables["pgd"]) == {"RQ1", "RQ2", "RQ3", "RQ4"}
    row = tables["certified"]["RQ3"][1]
    sisa_std = next(c for c in finished.cells if (c.method, c.training) == ("sisa", "standard"))
    assert row["epsilon"] == 0.05 and row["sisa"]["r_acc"] == sisa_std.after.result_at(0.05).certified_accuracy
    markdown = (out / "tables.md").read_text()
    assert (
        markdown.count("| Dataset | SISA ACC | SISA R-ACC | SISA Gap | Amnesiac ACC | Amnesiac R-ACC | Amnesiac Gap |")
        == 8
    )
    assert "## R-ACC: PGD robust accuracy" in markdown and "## R-ACC: certified robust accuracy" in markdown
    names = sorted(p.name for p in finished.plots)
    assert names == sorted(
        [f"{m}_{k}.png" for m in METHODS for k in ("accuracy", "robust_accuracy")] + ["certified_vs_empirical.png"]
    )
    for plot in finished.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_certified_never_exceeds_pgd_never_exceeds_clean(finished: StudyResult) -> None:
    for cell in finished.cells:
        for report in (cell.before, cell.after):
            for r in report.results:
                assert r.certified_accuracy <= r.pgd_accuracy <= r.clean_accuracy, (cell.method, cell.training, r)


def test_adversarial_training_narrows_the_gap(finished: StudyResult) -> None:
    """The seed's RQ2 vs RQ1 (and RQ4 vs RQ3): at the largest epsilon the PGD gap of the adversarially
    trained model is smaller, for both methods, before and after deletion, without collapsing accuracy."""
    cells = {(c.method, c.training): c for c in finished.cells}
    for method in METHODS:
        for when in ("before", "after"):
            std = getattr(cells[(method, "standard")], when).result_at(0.05)
            adv = getattr(cells[(method, "adversarial")], when).result_at(0.05)
            assert adv.gap_pgd < std.gap_pgd - 0.03, (method, when, std.gap_pgd, adv.gap_pgd)
            assert adv.clean_accuracy >= (0.8 if when == "before" else 0.6)  # chance is 1/3


def test_a_rerun_reuses_every_finished_step(finished: StudyResult) -> None:
    reports = {p: p.read_bytes() for p in finished.out.rglob("report_*.json")}
    again = study(study_spec(), finished.out, progress=False, echo=lambda _: None)
    assert all(c.reused == ["train", "check M", "unlearn", "check M'"] for c in again.cells)
    assert {p: p.read_bytes() for p in finished.out.rglob("report_*.json")} == reports


def test_a_study_killed_between_steps_resumes_where_it_stopped(finished: StudyResult, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    cell = out / "amnesiac-adversarial"
    (cell / "report_after.json").unlink()  # killed after unlearning, before checking M'
    other = out / "sisa-standard"
    (other / "report_before.json").unlink()  # M was unlearned already: its kept copy is checked
    gone = out / "amnesiac-standard"
    (gone / "M" / "model.onnx").unlink()  # M was unlearned and its copy is lost: the cell starts again
    again = study(study_spec(), out, progress=False, echo=lambda _: None)
    reused = {(c.method, c.training): c.reused for c in again.cells}
    assert reused[("amnesiac", "adversarial")] == ["train", "check M", "unlearn"]
    assert reused[("sisa", "standard")] == ["train", "unlearn", "check M'"]
    assert reused[("amnesiac", "standard")] == []
    assert reused[("sisa", "adversarial")] == ["train", "check M", "unlearn", "check M'"]
    rechecked = next(c.before for c in again.cells if c.run.name == "sisa-standard")
    original = next(c.before for c in finished.cells if c.run.name == "sisa-standard")
    assert [r.counts for r in rechecked.results] == [r.counts for r in original.results]  # the same M


def test_a_new_attack_rechecks_without_retraining(finished: StudyResult, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    spec = study_spec()
    changed = spec.model_copy(update={"attack": spec.attack.model_copy(update={"steps": 30})})
    again = study(changed, out, methods=("sisa",), progress=False, echo=lambda _: None)
    assert all(c.reused == ["train", "unlearn"] for c in again.cells)
    assert all(c.before.attack["steps"] == 30 and c.after.attack["steps"] == 30 for c in again.cells)
    assert {c.run.name for c in again.cells} == {"sisa-standard", "sisa-adversarial"}


def test_study_and_bad_methods_on_the_command_line(tmp_path: Path, write_spec) -> None:
    result = CliRunner().invoke(
        cli, ["study", "--spec", str(write_spec(tiny_spec_dict(), "s.yaml")), "--out", str(tmp_path / "x"),
              "--method", "astrology", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 2 and "astrology" in result.output


def test_a_deletion_made_outside_the_study_is_not_taken_for_the_spec_s(finished: StudyResult, tmp_path: Path) -> None:
    import shutil

    import numpy as np

    from uverify.pipeline import unlearn_run
    from uverify.rundir import open_run

    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    run = out / "sisa-standard"
    train_ids = np.sort(np.load(run / "sisa" / "manifest.npz")["ids"])
    extra = np.setdiff1d(train_ids, np.load(run / "deleted_ids.npy"))[:1]
    unlearn_run(run, ids=extra, progress=False)  # by hand, beside the study
    assert open_run(run).info.deleted == round(0.02 * 480) + 1
    again = study(study_spec(), out, methods=("sisa",), progress=False, echo=lambda _: None)
    reused = {c.run.name: c.reused for c in again.cells}
    assert reused["sisa-standard"] == [] and open_run(run).info.deleted == round(0.02 * 480)
    assert reused["sisa-adversarial"] == ["train", "check M", "unlearn", "check M'"]
