"""Certificate reuse after a SISA deletion: a reused check must be the full check of the same model (same
verdicts, margin bounds within 1e-6), and a damaged, foreign or forged cache entry is warned about and
ignored, never trusted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from uverify.pipeline import train_run, unlearn_run
from uverify.rundir import RunDir, write_certificate
from uverify.specs.load import validate_spec
from uverify.specs.schema import Spec
from uverify.unlearning.sisa import Manifest
from uverify.verifier.incremental import Reuse, check_run_with_reuse
from uverify.verifier.report import Report

from helpers import tiny_spec_dict

SHARDS = 3
EPSILONS = [0.02, 0.3]  # one where most samples are certified, one where PGD finds counterexamples


def _spec(aggregation: str, shards: int = SHARDS) -> Spec:
    return validate_spec(
        tiny_spec_dict(
            property={"norm": "inf", "epsilon": EPSILONS},
            unlearning={"method": "sisa", "sisa": {"shards": shards, "slices": 2, "aggregation": aggregation}},
        )
    )


def _with(spec: Spec, norm: str, method: str, epsilon: list[float] | None = None) -> Spec:
    raw = spec.model_dump(mode="json")
    raw["property"] |= {"norm": norm, "epsilon": epsilon or raw["property"]["epsilon"]}
    raw["verify"] |= {"method": method}
    return validate_spec(raw)


@pytest.fixture(scope="module", params=["mean_logits", "majority_vote"])
def trained(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Spec]:
    """A trained SISA run (M), not to be changed by tests: copy it."""
    spec = _spec(request.param)
    run = tmp_path_factory.mktemp(request.param) / "run"
    train_run(spec, run, adversarial=False, progress=False)
    return run, spec


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to / "run")
    return to / "run"


def _delete_from_shard(run: Path, shard: int) -> None:
    manifest = Manifest.load(run / "sisa" / "manifest.npz")
    unlearn_run(run, ids=manifest.ids[manifest.shard == shard][:1], progress=False)


def _assert_same(reused: Report, full: Report) -> float:
    """Same verdicts everywhere and margin bounds within 1e-6; returns the largest difference."""
    assert [r.counts for r in reused.results] == [r.counts for r in full.results]
    worst = 0.0
    for a, b in zip(reused.samples, full.samples, strict=True):
        assert (a.id, a.label, a.prediction, a.verdicts) == (b.id, b.label, b.prediction, b.verdicts)
        for x, y in zip(a.margin_lower_bounds, b.margin_lower_bounds, strict=True):
            assert (x is None) == (y is None)
            if x is not None and y is not None:
                worst = max(worst, abs(x - y))
    assert worst <= 1e-6
    return worst


def _check(run: Path, spec: Spec, reuse: bool = True) -> tuple[Report, Reuse]:
    return check_run_with_reuse(run, reuse=reuse, spec=spec, progress=False, notes=lambda line: None)


@pytest.mark.parametrize("method", ["CROWN", "IBP", "CROWN-IBP"])
@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_reused_certificates_give_the_full_checks_bounds(
    trained: tuple[Path, Spec], tmp_path: Path, norm: str, method: str
) -> None:
    """Composed from freshly computed shard certificates, then from cached ones: both the full check."""
    run = _copy(trained[0], tmp_path)
    spec = _with(trained[1], norm, method)
    full, no_reuse = _check(run, spec, reuse=False)
    assert not no_reuse.applies and not (run / "certificates").exists()
    computed, first = _check(run, spec)
    assert (first.reused, first.computed, first.ignored) == (0, SHARDS * len(EPSILONS), 0)
    reused, second = _check(run, spec)
    assert (second.reused, second.computed, second.ignored) == (SHARDS * len(EPSILONS), 0, 0)
    _assert_same(computed, full)
    _assert_same(reused, full)
    assert any(r.counts.verified for r in full.results) and any(r.counts.verified < 20 for r in full.results)


def test_after_a_deletion_only_the_touched_shard_is_bounded_again(trained: tuple[Path, Spec], tmp_path: Path) -> None:
    run = _copy(trained[0], tmp_path)
    spec = trained[1]
    _check(run, spec)  # M: every shard's certificates
    before = {p.name for p in (run / "certificates").iterdir()}
    _delete_from_shard(run, 1)
    full, _ = _check(run, spec, reuse=False)
    reused, reuse = _check(run, spec)
    assert (reuse.reused, reuse.computed, reuse.ignored) == ((SHARDS - 1) * len(EPSILONS), len(EPSILONS), 0)
    _assert_same(reused, full)
    after = {p.name for p in (run / "certificates").iterdir()}
    # shard 1's old entries are gone (its weights changed), the others' kept, shard 1's new ones added
    assert len(before - after) == len(EPSILONS) and len(after - before) == len(EPSILONS)


def _entries(run: Path) -> list[Path]:
    return sorted((run / "certificates").glob("*.npz"))


def _filled(trained: tuple[Path, Spec], tmp_path: Path) -> tuple[Path, Spec, Report]:
    run = _copy(trained[0], tmp_path)
    full, _ = _check(run, trained[1], reuse=False)
    _check(run, trained[1])
    return run, trained[1], full


def _assert_ignored_once(run: Path, spec: Spec, full: Report, capsys: pytest.CaptureFixture[str], why: str) -> None:
    """The next check warns (one line) about exactly one entry, recomputes it, and is the full check; the
    check after that trusts the rewritten entry."""
    capsys.readouterr()
    reused, reuse = _check(run, spec)
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "certificate cache certificates/" in warnings[0] and why in warnings[0]
    assert (reuse.ignored, reuse.computed, reuse.reused) == (1, 1, SHARDS * len(EPSILONS) - 1)
    _assert_same(reused, full)
    _, again = _check(run, spec)
    assert (again.ignored, again.computed) == (0, 0)


def test_a_cache_file_with_changed_bytes_is_ignored(
    trained: tuple[Path, Spec], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, spec, full = _filled(trained, tmp_path)
    entry = _entries(run)[0]
    data = bytearray(entry.read_bytes())
    data[len(data) // 2] ^= 0xFF
    entry.write_bytes(bytes(data))
    _assert_ignored_once(run, spec, full, capsys, "ignored")


def test_a_cache_entry_whose_arrays_changed_is_ignored(
    trained: tuple[Path, Spec], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Arrays rewritten (a valid .npz) with the old key and digest: the digest no longer matches."""
    run, spec, full = _filled(trained, tmp_path)
    entry = _entries(run)[0]
    with np.load(entry) as stored:
        arrays = {k: stored[k] for k in stored.files}
    payload = next(k for k in arrays if not k.startswith("__"))
    arrays[payload] = arrays[payload] + np.float32(0.5)  # a looser bound even: still never trusted
    np.savez(entry, **arrays)
    _assert_ignored_once(run, spec, full, capsys, "its bytes changed since it was written")


def test_the_entry_of_another_shard_is_ignored(
    trained: tuple[Path, Spec], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, spec, full = _filled(trained, tmp_path)
    entries = _entries(run)
    by_shard: dict[str, list[Path]] = {}
    for entry in entries:
        by_shard.setdefault(entry.name.split("_")[0], []).append(entry)
    first, second = (sorted(group)[0] for group in list(by_shard.values())[:2])
    shutil.copy(first, second)  # a whole, self-consistent entry, of another shard
    _assert_ignored_once(run, spec, full, capsys, "the entry of another shard")


def test_a_forged_entry_with_a_valid_digest_is_ignored(
    trained: tuple[Path, Spec], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An entry rewritten through the cache's own writer (so its digest is valid) to claim far larger
    margins: they exceed the shard's own margins at the ball centres, so it cannot be a bound."""
    run, spec, full = _filled(trained, tmp_path)
    entry = _entries(run)[0]
    with np.load(entry) as stored:
        arrays = {k: stored[k] for k in stored.files}

    meta = json.loads(str(arrays.pop("__meta__")))
    arrays.pop("__digest__")
    payload = {"linear": "bias", "margins": "margins", "interval": "lower"}[meta["representation"]]
    arrays[payload] = arrays[payload] + np.float32(100.0)
    written = write_certificate(RunDir(run), meta["shard_sha256"], meta, arrays)
    assert written == entry
    _assert_ignored_once(run, spec, full, capsys, "not bounds of this shard's outputs")


def test_alpha_crown_runs_the_full_check(trained: tuple[Path, Spec], tmp_path: Path) -> None:
    run = _copy(trained[0], tmp_path)
    spec = _with(trained[1], "inf", "alpha-CROWN", [0.02])
    reused, reuse = _check(run, spec)
    full, _ = _check(run, spec, reuse=False)
    assert not reuse.applies and "alpha-CROWN" in reuse.reason and "full check" in reuse.summary()
    assert not (run / "certificates").exists()
    _assert_same(reused, full)


def test_mean_softmax_says_reuse_does_not_apply(tmp_path: Path) -> None:
    spec = _with(_spec("mean_softmax", shards=2), "inf", "CROWN", [0.02])
    train_run(spec, tmp_path / "run", adversarial=False, progress=False)
    lines: list[str] = []
    report, reuse = check_run_with_reuse(tmp_path / "run", progress=False, notes=lines.append)
    assert not reuse.applies and "mean_softmax" in reuse.reason
    assert lines == [reuse.summary()] and "full check" in lines[0]
    assert not (tmp_path / "run" / "certificates").exists()
    assert report.results[0].counts.verified > 0


def test_check_run_on_the_command_line(trained: tuple[Path, Spec], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from uverify.cli import cli

    run = _copy(trained[0], tmp_path)
    runner = CliRunner()
    first = runner.invoke(cli, ["check", "--run", str(run), "--out", str(tmp_path / "m.json"), "--quiet"])
    assert first.exit_code == 0, first.output
    _delete_from_shard(run, 0)
    reused = runner.invoke(cli, ["check", "--run", str(run), "--out", str(tmp_path / "r.json"), "--quiet"])
    assert reused.exit_code == 0 and "reused" in reused.stderr, reused.output
    full = runner.invoke(cli, ["check", "--run", str(run), "--no-reuse", "--out", str(tmp_path / "f.json"), "--quiet"])
    assert full.exit_code == 0 and "not asked for" in full.stderr, full.output
    load = Report.model_validate_json
    _assert_same(load((tmp_path / "r.json").read_text()), load((tmp_path / "f.json").read_text()))
    narrow = runner.invoke(
        cli, ["check", "--run", str(run), "--epsilon", "0.01", "--out", str(tmp_path / "e.json"), "--quiet"]
    )
    assert narrow.exit_code == 0 and [r.epsilon for r in load((tmp_path / "e.json").read_text()).results] == [0.01]
    for args, needle in [
        (["--run", str(run), "--model", "m.onnx"], "drop --model"),
        (["--model", str(run / "model.onnx"), "--no-reuse"], "--no-reuse goes with --run"),
        (["--run", str(tmp_path)], str(tmp_path)),
        ([], "--model M.onnx, or --run"),
    ]:
        bad = runner.invoke(cli, ["check", *args, "--quiet"])
        lines = [line for line in bad.output.splitlines() if line.strip()]
        assert bad.exit_code == 2 and len(lines) == 1 and needle in lines[0], bad.output
