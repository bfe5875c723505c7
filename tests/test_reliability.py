"""Nothing lost, nothing trusted that was not checked: the run lock, train targets, strict specs, tampered
votes and Amnesiac stores, stale staging folders, and the CLI's one-line errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from uverify.cli import cli
from uverify.datasets import load
from uverify.files import STAGING_SUFFIX, atomic_write, remove_stale_staging, remove_stale_temp_files, staging_name
from uverify.rundir import lock_file, open_run
from uverify.specs.load import load_spec

from helpers import tiny_spec_dict


def _invoke(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _one_line_error(result: Any, expected: str) -> None:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], result.output


def _train(write_spec: Any, out: Path, **overrides: Any) -> Path:
    result = _invoke(
        "train",
        "--spec",
        str(write_spec(tiny_spec_dict(**overrides), f"{out.name}.yaml")),
        "--out",
        str(out),
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------- the run lock
_HOLD = """
import sys, time
from uverify.rundir import locked
with locked(sys.argv[1]):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_second_command_on_a_locked_run_is_refused_and_changes_nothing(write_spec, tmp_path: Path) -> None:
    run = _train(write_spec, tmp_path / "run")
    before = _snapshot(run)
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "holding"
        result = _invoke("unlearn", "--run", str(run), "--delete-fraction", "0.05", "--quiet")
        _one_line_error(result, "is in use by another uverify command (pid")
        assert f"pid {holder.pid}" in result.output
        _one_line_error(
            _invoke("train", "--spec", str(run / "spec.json"), "--out", str(run), "--overwrite", "--quiet"), "in use"
        )
        assert _snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    # the lock goes with the process that held it, however it ended
    assert _invoke("unlearn", "--run", str(run), "--delete-fraction", "0.05", "--quiet").exit_code == 0


def test_two_real_processes_racing_on_one_run_lose_no_deletion(write_spec, tmp_path: Path) -> None:
    run = _train(write_spec, tmp_path / "run")
    train_ids = np.sort(load(load_spec(str(run / "spec.json")).data).train.ids)
    requests = [train_ids[:4], train_ids[10:14]]
    files = []
    for k, ids in enumerate(requests):
        files.append(tmp_path / f"ids{k}.txt")
        files[-1].write_text("\n".join(map(str, ids)))
    uverify = Path(sys.executable).parent / "uverify"
    racers = [
        subprocess.Popen([str(uverify), "unlearn", "--run", str(run), "--delete", str(f), "--quiet"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for f in files
    ]  # fmt: skip
    outcomes = [(p.wait(timeout=300), p.stderr.read() if p.stderr else "") for p in racers]
    for code, err in outcomes:
        assert code == 0 or (code == 2 and "in use by another uverify command" in err and err.count("\n") == 1), err
    done = [ids for ids, (code, _) in zip(requests, outcomes, strict=True) if code == 0]
    assert done, outcomes
    deleted = open_run(run).deleted_ids()
    assert sorted(deleted.tolist()) == sorted(np.concatenate(done).tolist())  # every deletion that said so
    assert len(json.loads((run / "deletions.json").read_text())) == len(done)


# ------------------------------------------------------------------------------- train targets
def test_train_never_deletes_what_its_target_holds(write_spec, tmp_path: Path, monkeypatch) -> None:
    spec = str(write_spec(tiny_spec_dict()))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    _one_line_error(_invoke("train", "--spec", spec, "--out", str(mine), "--quiet"), "not empty and not a uverify run")
    assert (mine / "thesis.tex").read_text() == "years of work"

    run = _train(write_spec, tmp_path / "run")
    assert _invoke("unlearn", "--run", str(run), "--delete-fraction", "0.05", "--quiet").exit_code == 0
    with_deletion = _snapshot(run)
    _one_line_error(_invoke("train", "--spec", spec, "--out", str(run), "--quiet"), "ids deleted); give --overwrite")
    assert _snapshot(run) == with_deletion
    replaced = _invoke("train", "--spec", spec, "--out", str(run), "--overwrite", "--quiet")
    assert replaced.exit_code == 0 and f"replaced {run}: sisa, standard, " in replaced.output
    assert open_run(run).info.deleted == 0

    monkeypatch.chdir(tmp_path)
    _one_line_error(_invoke("train", "--spec", spec, "--out", ".", "--quiet"), "is the current directory")
    _one_line_error(_invoke("train", "--spec", spec, "--out", "/proc/newrun", "--quiet"), "cannot write in /proc")
    assert _invoke("train", "--spec", spec, "--out", "relative/run", "--quiet").exit_code == 0
    assert open_run(tmp_path / "relative/run").info.method == "sisa"
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(STAGING_SUFFIX)]


def test_stale_staging_of_a_dead_process_is_removed_and_errors_name_the_users_path(write_spec, tmp_path: Path) -> None:
    run = _train(write_spec, tmp_path / "run")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f"{staging_name(run.absolute(), int(dead.stdout))}x1{STAGING_SUFFIX}"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    alive = tmp_path / f"{staging_name(run.absolute(), os.getpid())}x2{STAGING_SUFFIX}"
    alive.mkdir()  # this process is alive: its staging folder is not stale
    assert remove_stale_staging(run) == [stale]
    assert not stale.exists() and alive.exists()
    shutil.rmtree(alive)
    stale.mkdir()
    assert _invoke("unlearn", "--run", str(run), "--delete-fraction", "0.05", "--quiet").exit_code == 0
    assert not stale.exists()  # the next command on the run removed it
    (run / "sisa" / "manifest.npz").write_bytes((run / "sisa" / "manifest.npz").read_bytes()[:40])  # truncated
    result = _invoke("unlearn", "--run", str(run), "--delete-fraction", "0.1", "--quiet")
    _one_line_error(result, str(run))
    assert STAGING_SUFFIX not in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run")) == [lock_file(run).name]


# ----------------------------------------------------------------------------------- strict specs
@pytest.mark.parametrize(
    ("section", "value", "where"),
    [
        ("train", {"epochs": 5, "batch_size": True}, "train.batch_size"),
        ("train", {"epochs": True}, "train.epochs"),
        ("unlearning", {"method": "sisa", "sisa": {"shards": "3"}}, "unlearning.sisa.shards"),
        ("unlearning", {"method": "sisa", "sisa": {"shards": 2.0}}, "unlearning.sisa.shards"),
        ("property", {"epsilon": [0.02], "label": "yes"}, "property.label"),
    ],
)
def test_lax_types_are_refused_with_the_key_path(
    write_spec, tmp_path: Path, section: str, value: Any, where: str
) -> None:
    spec = write_spec(tiny_spec_dict(**{section: value}))
    _one_line_error(_invoke("train", "--spec", str(spec), "--out", str(tmp_path / "out"), "--quiet"), where)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ tampered inputs
def _vote_run(write_spec: Any, out: Path, seed: int = 0) -> Path:
    return _train(
        write_spec, out,
        unlearning={"method": "sisa", "sisa": {"shards": 3, "slices": 2, "aggregation": "majority_vote"}},
        train={"epochs": 5, "batch_size": 32, "lr": 0.02, "seed": seed},
    )  # fmt: skip


def test_a_tampered_vote_is_refused(write_spec, tmp_path: Path) -> None:
    run = _vote_run(write_spec, tmp_path / "run")
    vote = run / "vote.json"
    original = json.loads(vote.read_text())
    check = ("check", "--spec", str(run / "spec.json"), "--model", str(vote), "--quiet", "--samples", "5")
    assert _invoke(*check).exit_code == 0

    twice = dict(original, members=[original["members"][0], original["members"][0], original["members"][2]])
    vote.write_text(json.dumps(twice))
    _one_line_error(_invoke(*check), "is listed twice")

    fewer = dict(original, members=original["members"][:2])
    vote.write_text(json.dumps(fewer))
    _one_line_error(_invoke(*check), "belongs to a vote of 3 shards; the manifest lists 2")
    _one_line_error(_invoke("unlearn", "--run", str(run), "--quiet"), "vote")

    foreign_run = _vote_run(write_spec, tmp_path / "foreign", seed=1)
    member = run / original["members"][1]["path"]
    shutil.copyfile(foreign_run / original["members"][1]["path"], member)
    from uverify.files import sha256_file

    forged = json.loads(json.dumps(original))
    forged["members"][1]["sha256"] = sha256_file(member)  # the hash updated to match
    vote.write_text(json.dumps(forged))
    _one_line_error(_invoke(*check), "was trained from another spec")


def test_one_changed_value_in_the_amnesiac_store_is_caught_before_it_is_subtracted(write_spec, tmp_path: Path) -> None:
    run = _train(write_spec, tmp_path / "run", unlearning={"method": "amnesiac"})
    batches = np.load(run / "amnesiac" / "batches.npz")
    first_batch = batches["ids"][batches["offsets"][0] : batches["offsets"][1]]
    updates = np.load(run / "amnesiac" / "updates.npy", mmap_mode="r+")
    updates[0, 3] += 1e-3
    updates.flush()
    del updates
    ids = tmp_path / "ids.txt"
    ids.write_text(str(first_batch[0]))
    before = _snapshot(run)
    _one_line_error(_invoke("unlearn", "--run", str(run), "--delete", str(ids), "--quiet"), "updates.npy")
    assert _snapshot(run) == before
    assert oct((run / "amnesiac" / "weights.safetensors").stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------------- CLI friction
def test_check_flags_samples_and_usage_errors_are_one_line(write_spec, tmp_path: Path) -> None:
    run = _train(write_spec, tmp_path / "run")
    base = ("check", "--spec", str(run / "spec.json"), "--model", str(run / "model.onnx"), "--quiet")
    _one_line_error(_invoke(*base, "--epsilon", "0"), "--epsilon: ")
    _one_line_error(_invoke(*base, "--samples", "-5"), "--samples: ")
    _one_line_error(_invoke(*base, "--out", str(tmp_path)), "uverify check: Invalid value for '--out'")
    x = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    np.savez(tmp_path / "dup.npz", x=x, y=np.zeros(4, np.int64), ids=np.array([1, 2, 2, 3]))
    _one_line_error(_invoke(*base, "--samples", str(tmp_path / "dup.npz")), "ids must be unique")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip at all" * 8)
    garbage = _invoke(*base, "--samples", str(tmp_path / "garbage.npz"))
    _one_line_error(garbage, "not an .npz archive")
    assert "pickled" not in garbage.output

    deprecated = CliRunner().invoke(cli, [*base, "--method", "IBP", "--samples", "5"])
    assert (
        deprecated.exit_code == 0
        and "--method is deprecated" in deprecated.output
        and "bounds IBP" in deprecated.output
    )


def test_check_without_a_spec_takes_the_flags_and_says_what_it_assumed(write_spec, tmp_path: Path) -> None:
    run = _train(write_spec, tmp_path / "run")
    splits = load(load_spec(str(run / "spec.json")).data)
    np.savez(tmp_path / "mine.npz", x=splits.test.X[:8], y=splits.test.y[:8])
    model = str(run / "model.onnx")
    _one_line_error(_invoke("check", "--model", model, "--epsilon", "0.05"), "--samples FILE.npz")
    _one_line_error(_invoke("check", "--model", model, "--samples", str(tmp_path / "mine.npz")), "--epsilon E")
    out = tmp_path / "report.json"
    result = _invoke(
        "check",
        "--model",
        model,
        "--samples",
        str(tmp_path / "mine.npz"),
        "--epsilon",
        "0.05",
        "--out",
        str(out),
        "--quiet",
    )
    assert result.exit_code == 0, result.output
    assert "assumed: no spec: Linf ball, CROWN bounds" in result.output
    report = json.loads(out.read_text())
    assert report["results"][0]["epsilon"] == 0.05 and len(report["samples"]) == 8
    assert report["assumed"] and not any("domain" in a for a in report["assumed"])  # the model records one


def test_compare_names_different_data_sets_and_explains_its_notation(tmp_path: Path) -> None:
    from uverify.verifier.compare import compare, render_comparison
    from uverify.verifier.report import Report

    def report(dataset: str) -> Report:
        return Report.model_validate(
            {
                "spec_name": dataset, "spec_sha256": "0", "spec": {"data": {"dataset": dataset}},
                "model": {"path": "m.onnx", "sha256": "0", "metadata": {}}, "samples_source": dataset,
                "norm": "inf", "method": "CROWN", "attack": {}, "versions": {}, "seconds": 0.0,
                "results": [{"epsilon": 0.1, "clean_accuracy": 1.0, "certified_accuracy": 1.0, "pgd_accuracy": 1.0,
                             "gap_pgd": 0.0, "gap_certified": 0.0,
                             "counts": {"verified": 1, "falsified": 0, "unknown": 0, "misclassified": 0,
                                        "rejected_counterexamples": 0},
                             "seconds": {"bounds": 0.0, "attack": 0.0, "referee": 0.0}}],
                "samples": [{"id": 0, "label": 0, "prediction": 0, "verdicts": ["verified"],
                             "margin_lower_bounds": [1.0]}],
            }
        )  # fmt: skip

    with pytest.raises(Exception, match="different data sets \\(mixture and digits\\)"):
        compare(report("mixture"), report("digits"))
    table = render_comparison(compare(report("mixture"), report("mixture")))
    assert "→" in table and "->" not in table and "how many samples, then their ids" in table


def test_temporary_files_of_dead_writers_are_removed_and_no_others(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    (tmp_path / "plots").mkdir()
    stale = [tmp_path / f".tables.json.{dead_pid}.k3x9_q.tmp", tmp_path / "plots" / f".a.png.{dead_pid}.zz.tmp"]
    kept = [tmp_path / f".tables.md.{os.getpid()}.ab12.tmp", tmp_path / ".notes.tmp", tmp_path / "tables.json"]
    for path in stale + kept:
        path.write_text("x")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)
    written = {}

    def write(tmp: Path) -> None:
        written["name"] = tmp.name
        tmp.write_text("y")

    atomic_write(tmp_path / "r.json", write)
    assert written["name"].startswith(f".r.json.{os.getpid()}.") and written["name"].endswith(".tmp")
