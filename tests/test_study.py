from __future__ import annotations

import io
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from uverify.cli import cli
from uverify.errors import UverifyError
from uverify.specs.load import load_spec, validate_spec
from uverify.specs.schema import Spec
from uverify.study import METHODS, TRAININGS, StudyResult, study

from helpers import assert_one_line_error, tiny_spec_dict

# The shipped default (specs/mixture.yaml) at reduced size: a fifth of the samples in batches a quarter
# as large (the same number of steps an epoch, so Amnesiac's deletion still touches a part of them), 10
# epochs, 2 SISA shards x 2 slices, 60 samples checked by PGD with 20 steps and 1 restart. The data
# settings, model, adversarial training and epsilon sweep are the default's: the seed's finding must
# show here too (bench/demo_pattern.py checks the full size on seeds 0, 1 and 2).
REDUCED = {
    "data.n_samples": 1000,
    "data.samples": 60,
    "train.epochs": 10,
    "train.batch_size": 32,
    "attack.steps": 20,
    "attack.restarts": 1,
    "unlearning.sisa.shards": 2,
    "unlearning.sisa.slices": 2,
}
DELETED = round(0.01 * 800)  # the default's 1% request of the 800 training samples


def study_spec() -> Spec:
    return load_spec("mixture", REDUCED)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> StudyResult:
    return study(study_spec(), tmp_path_factory.mktemp("study") / "out", progress=False, echo=lambda _: None)


def test_the_grid_writes_every_cell_table_and_plot(finished: StudyResult) -> None:
    out = finished.out
    assert sorted((c.method, c.training) for c in finished.cells) == sorted((m, t) for m in METHODS for t in TRAININGS)
    for cell in finished.cells:
        assert (cell.run / "report_before.json").is_file() and (cell.run / "report_after.json").is_file()
        assert cell.before.model.sha256 != cell.after.model.sha256  # M' is another model
        assert len(cell.deletion["ids"]) == DELETED
    tables = json.loads((out / "tables.json").read_text())
    assert set(tables) == {"pgd", "certified"} and set(tables["pgd"]) == {"RQ1", "RQ2", "RQ3", "RQ4"}
    row = tables["certified"]["RQ3"][1]
    sisa_std = next(c for c in finished.cells if (c.method, c.training) == ("sisa", "standard"))
    assert row["epsilon"] == 0.1 and row["sisa"]["r_acc"] == sisa_std.after.result_at(0.1).certified_accuracy
    markdown = (out / "tables.md").read_text()
    header = "| Dataset | SISA ACC | SISA R-ACC | SISA Gap | Amnesiac ACC | Amnesiac R-ACC | Amnesiac Gap |"
    assert markdown.count(header) == 4 + 8  # the seed's layout before and after, then the per-epsilon detail
    assert "## Per-σ detail, R-ACC: PGD robust accuracy" in markdown
    assert "## Per-σ detail, R-ACC: certified robust accuracy" in markdown
    assert (out / "report.html").is_file() and finished.report_html == out / "report.html"
    assert json.loads((out / "study.json").read_text())["datasets"][0]["headline_epsilon"] == 0.1
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


def test_the_seed_s_finding_shows_on_the_default(finished: StudyResult) -> None:
    """The seed's RQ2 vs RQ1 (and RQ4 vs RQ3) at the headline sigma: the standard model's PGD gap is at
    least 3x the adversarial one's, for both methods, before and after deletion, and adversarial training
    costs at most 5 points of clean accuracy."""
    cells = {(c.method, c.training): c for c in finished.cells}
    assert finished.headline == {"mixture": 0.1}
    assert [(p.method, p.when) for p in finished.pattern] == [(m, w) for m in METHODS for w in ("before", "after")]
    for check in finished.pattern:
        std = cells[(check.method, "standard")].report(check.when).result_at(0.1)
        adv = cells[(check.method, "adversarial")].report(check.when).result_at(0.1)
        assert (check.gap_standard, check.gap_adversarial) == (std.gap_pgd, adv.gap_pgd)
        assert std.gap_pgd >= 0.2 and std.gap_pgd >= 3 * adv.gap_pgd, check.describe()
        assert abs(adv.clean_accuracy - std.clean_accuracy) <= 0.05 and std.clean_accuracy >= 0.9, check.describe()
        assert check.holds
    markdown = (finished.out / "tables.md").read_text()
    assert markdown.count("the seed's finding holds") == len(METHODS)


def test_tables_md_opens_with_the_seed_s_two_tables(finished: StudyResult) -> None:
    markdown = (finished.out / "tables.md").read_text()
    sections = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert sections[:3] == [
        "## The seed's tables at the headline σ",
        "## After the deletion, in the seed's layout",
        "## Beyond the seed",
    ]
    tables = [line for line in markdown.splitlines() if line.startswith("### ")]
    assert tables[:2] == [
        "### Standard-trained models (st_model), before the deletion (RQ1)",
        "### Adversarially trained models (at_model), before the deletion (RQ2)",
    ]
    first = markdown.split("### Standard-trained models (st_model), before the deletion (RQ1)")[1].split("###")[0]
    rows = [line for line in first.splitlines() if line.startswith("| mixture")]
    sisa_std = next(c for c in finished.cells if (c.method, c.training) == ("sisa", "standard")).before.result_at(0.1)
    assert len(rows) == 1 and rows[0].startswith("| mixture (σ=0.1) | ")
    assert rows[0].split(" | ")[1:4] == [f"{100 * v:.2f}%" for v in (sisa_std.clean_accuracy, sisa_std.pgd_accuracy,
                                                                       sisa_std.gap_pgd)]  # fmt: skip
    beyond = markdown.split("## Beyond the seed")[1].split("## Per-σ")[0]
    assert "SISA R-ACC (certified)" in beyond and "| Dataset | Training | Method | ACC | R-ACC | Gap |" in beyond
    assert beyond.count("| mixture (σ=0.1) | st_model (standard) |") == 1 + len(METHODS) and " → " in beyond
    assert "MIA AUC" in beyond and "exact" not in markdown.lower()  # no complete verifier yet: no empty column


def test_a_new_headline_re_renders_without_re_checking(finished: StudyResult, tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    reports = {p: p.read_bytes() for p in out.rglob("report_*.json")}
    again = study(load_spec("mixture", {**REDUCED, "study.headline_epsilon": 0.05}), out, progress=False,
                  echo=lambda _: None)  # fmt: skip
    assert all(c.reused == ["train", "check M", "unlearn", "check M'"] for c in again.cells)
    assert {p: p.read_bytes() for p in out.rglob("report_*.json")} == reports
    assert again.headline == {"mixture": 0.05} and all(p.epsilon == 0.05 for p in again.pattern)
    assert "| mixture (σ=0.05) |" in (out / "tables.md").read_text()


def test_the_headline_epsilon_is_one_of_the_sweep() -> None:
    def spec(**study_section: object) -> Spec:
        return validate_spec(tiny_spec_dict(property={"norm": "inf", "epsilon": [0.05, 0.01, 0.02, 0.1]},
                                            study=study_section))  # fmt: skip

    assert spec().headline_epsilon() == 0.02  # the sorted sweep's middle (the lower one of an even count)
    assert validate_spec(tiny_spec_dict(property={"epsilon": [0.3, 0.1, 0.2]})).headline_epsilon() == 0.2
    assert spec(headline_epsilon=0.1).headline_epsilon() == 0.1
    with pytest.raises(UverifyError) as excinfo:
        spec(headline_epsilon=0.03)
    assert_one_line_error(excinfo, "study.headline_epsilon", "property.epsilon", "0.03")
    with pytest.raises(UverifyError) as excinfo:
        spec(headline=0.1)
    assert_one_line_error(excinfo, "study.headline", "did you mean 'headline_epsilon'")
    with pytest.raises(UverifyError) as excinfo:
        spec(threads=True)
    assert_one_line_error(excinfo, "study.threads")
    # a spec without the section hashes as before it existed, so runs and reports made earlier still match
    assert "study" not in validate_spec(tiny_spec_dict()).model_dump() and "study" in spec(threads=1).model_dump()


def test_a_rerun_reuses_every_finished_step(finished: StudyResult) -> None:
    reports = {p: p.read_bytes() for p in finished.out.rglob("report_*.json")}
    again = study(study_spec(), finished.out, progress=False, echo=lambda _: None)
    assert all(c.reused == ["train", "check M", "unlearn", "check M'"] for c in again.cells)
    assert {p: p.read_bytes() for p in finished.out.rglob("report_*.json")} == reports


def test_a_study_killed_between_steps_resumes_where_it_stopped(finished: StudyResult, tmp_path: Path) -> None:
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
    import numpy as np

    from uverify.pipeline import unlearn_run
    from uverify.rundir import open_run

    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    run = out / "sisa-standard"
    train_ids = np.sort(np.load(run / "sisa" / "manifest.npz")["ids"])
    extra = np.setdiff1d(train_ids, np.load(run / "deleted_ids.npy"))[:1]
    unlearn_run(run, ids=extra, progress=False)  # by hand, beside the study
    assert open_run(run).info.deleted == DELETED + 1
    again = study(study_spec(), out, methods=("sisa",), progress=False, echo=lambda _: None)
    reused = {c.run.name: c.reused for c in again.cells}
    assert reused["sisa-standard"] == [] and open_run(run).info.deleted == DELETED
    assert reused["sisa-adversarial"] == ["train", "check M", "unlearn", "check M'"]


def test_several_specs_need_distinct_names_and_their_own_data(tmp_path: Path, write_spec: Any) -> None:
    spec = str(write_spec(tiny_spec_dict(), "s.yaml"))
    other = str(write_spec(tiny_spec_dict(name="other"), "o.yaml"))
    for args, needle in (
        (["--spec", spec, "--spec", spec], "named twice: tiny"),
        (["--spec", spec, "--spec", other, "--data", str(tmp_path)], "--data"),
    ):
        result = CliRunner().invoke(cli, ["study", *args, "--out", str(tmp_path / "x"), "--quiet"])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and needle in lines[0], result.output
    assert not (tmp_path / "x").exists()  # refused before anything was written


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("terminal", "progress", "shown"), [(True, True, True), (False, True, False), (True, False, False)]
)
def test_one_bar_over_the_grid_on_a_terminal_only(
    finished: StudyResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, terminal: bool, progress: bool, shown: bool
) -> None:
    out = tmp_path / "out"
    shutil.copytree(finished.out, out)
    stream = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    study(study_spec(), out, progress=progress, echo=lambda _: None)
    text = stream.getvalue()
    assert ("study: 100%" in text and "4/4" in text) is shown, text
    assert shown or text == ""


def test_the_exact_column_appears_where_branch_and_bound_ran(finished: StudyResult, tmp_path: Path) -> None:
    assert "R-ACC (exact)" not in (finished.out / "tables.md").read_text()  # never an empty column
    spec = validate_spec(
        tiny_spec_dict(
            verify={"method": "CROWN", "complete": {"timeout_s": 5.0}}, property={"norm": "inf", "epsilon": [0.05]}
        )
    )
    result = study(spec, tmp_path / "out", methods=("sisa",), progress=False, echo=lambda _: None)
    markdown = (result.out / "tables.md").read_text()
    assert "SISA R-ACC (exact)" in markdown
    for cell in result.cells:
        for report in (cell.before, cell.after):
            r = report.result_at(0.05)
            assert r.complete is not None and r.certified_accuracy <= r.pgd_accuracy
            shown = f"{100 * r.complete.exact_accuracy:.2f}%" if r.complete.exact_accuracy is not None else "–"
            assert shown in markdown
