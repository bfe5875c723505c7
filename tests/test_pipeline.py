from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from uverify.datasets import load
from uverify.errors import ExportError, UverifyError
from uverify.models.referee import Referee
from uverify.pipeline import train_run, unlearn_run
from uverify.rundir import open_run
from uverify.specs.load import validate_spec
from uverify.specs.schema import Spec

from helpers import tiny_spec_dict


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_run_leaves_the_previous_run_whole(
    tiny_spec: Spec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    train_run(tiny_spec, out, adversarial=False, progress=False)
    before = _snapshot(out)

    def broken(*args: object, **kwargs: object) -> None:
        raise ExportError("simulated export failure")

    monkeypatch.setattr("uverify.unlearning.sisa.export_onnx", broken)  # the method exports
    with pytest.raises(ExportError):
        train_run(tiny_spec, out, adversarial=False, progress=False, overwrite=True)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]  # no staging folder left behind


def test_a_rerun_replaces_the_whole_directory(tiny_spec: Spec, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_run(tiny_spec, out, adversarial=False, progress=False)
    (out / "stale.txt").write_text("from an older run")
    result = train_run(tiny_spec, out, adversarial=False, progress=False, overwrite=True)
    assert result.replaced
    assert result.out == out and result.model_path == out / "model.onnx"
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "run.json", "sisa", "spec.json", "train_log.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]


@pytest.fixture(scope="module")
def sisa_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sisa") / "run"
    train_run(validate_spec(tiny_spec_dict()), out, adversarial=False, progress=False)
    return out


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_unlearn_replaces_the_model_logs_and_repeats_as_a_no_op(sisa_run: Path, tmp_path: Path) -> None:
    run = _copy_run(sisa_run, tmp_path / "run")
    spec = open_run(run).spec
    splits = load(spec.data)
    ids = splits.train.ids[[0, 5, 17]]
    before = Referee(run / "model.onnx").logits(splits.test.X)
    result = unlearn_run(run, ids=ids, progress=False)
    assert not result.noop and sorted(result.deleted) == sorted(ids)
    after = Referee(run / "model.onnx").logits(splits.test.X)
    assert not np.array_equal(before, after)
    log = json.loads((run / "deletions.json").read_text())
    assert len(log) == 1 and log[0]["ids"] == sorted(int(i) for i in ids) and log[0]["deleted_total"] == 3
    assert {t["shard"] for t in log[0]["touched"]} <= {0, 1, 2} and log[0]["seconds"] > 0
    metrics = json.loads((run / "unlearn.json").read_text())
    assert metrics["sizes"] == {"test": len(splits.test), "retained": len(splits.train) - 3, "forgotten": 3}
    assert set(metrics["accuracy"]) == {"M", "M_prime"}
    assert np.array_equal(np.load(run / "deleted_ids.npy"), np.sort(ids))

    snapshot = _snapshot(run)
    again = unlearn_run(run, ids=ids[:2], progress=False)  # already deleted: nothing changes
    assert again.noop and _snapshot(run) == snapshot
    more = unlearn_run(run, ids=np.array([ids[0], splits.train.ids[40]]), progress=False)
    assert list(more.deleted) == [splits.train.ids[40]]
    assert open_run(run).info.deleted == 4 and len(json.loads((run / "deletions.json").read_text())) == 2


def test_a_fraction_request_names_the_same_ids_every_time(sisa_run: Path, tmp_path: Path) -> None:
    a = unlearn_run(_copy_run(sisa_run, tmp_path / "a"), fraction=0.05, seed=3, progress=False)
    b = unlearn_run(_copy_run(sisa_run, tmp_path / "b"), fraction=0.05, seed=3, progress=False)
    c = unlearn_run(_copy_run(sisa_run, tmp_path / "c"), fraction=0.05, seed=4, progress=False)
    assert np.array_equal(a.deleted, b.deleted) and not np.array_equal(a.deleted, c.deleted)
    assert len(a.deleted) == round(0.05 * 240)
    assert (tmp_path / "a" / "model.onnx").read_bytes() == (tmp_path / "b" / "model.onnx").read_bytes()


def test_a_deletion_killed_half_way_leaves_the_previous_model_and_a_rerun_completes(
    sisa_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _copy_run(sisa_run, tmp_path / "run")
    snapshot = _snapshot(run)
    ids = np.sort(load(open_run(run).spec.data).train.ids)[:30]  # spread over every shard
    from uverify.unlearning.sisa import Sisa

    original = Sisa._train_shard
    calls = []

    def killed(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the second shard: the first one's checkpoints are already rewritten
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Sisa, "_train_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        unlearn_run(run, ids=ids, progress=False)
    assert _snapshot(run) == snapshot
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock", "run"]
    monkeypatch.setattr(Sisa, "_train_shard", original)
    result = unlearn_run(run, ids=ids, progress=False)
    assert not result.noop and open_run(run).info.deleted == 30


def test_bad_requests_change_nothing(sisa_run: Path, tmp_path: Path) -> None:
    run = _copy_run(sisa_run, tmp_path / "run")
    snapshot = _snapshot(run)
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    (tmp_path / "bad.txt").write_text("1\n2.5\n")
    cases = [
        ({"ids": np.array([1, 10**9, -4])}, "2 id(s) are not in the training set"),
        ({"ids_file": tmp_path / "missing.txt"}, "no such file"),
        ({"ids_file": tmp_path / "empty.txt"}, "holds no sample ids"),
        ({"ids_file": tmp_path / "bad.txt"}, "line 2: '2.5' is not an integer"),
        ({"fraction": 1.5}, "must lie in (0, 1)"),
        ({"ids": np.array([1]), "fraction": 0.1}, "exactly one deletion request"),
        ({"ids": np.array([1]), "method": "amnesiac"}, "trained for sisa unlearning"),
    ]
    for kwargs, message in cases:
        with pytest.raises(UverifyError, match=message.replace("(", r"\(").replace(")", r"\)")):
            unlearn_run(run, progress=False, **kwargs)  # type: ignore[arg-type]
    assert _snapshot(run) == snapshot


def test_runs_that_are_not_whole_are_refused(sisa_run: Path, tmp_path: Path) -> None:
    with pytest.raises(UverifyError, match=r"no run\.json"):
        unlearn_run(tmp_path, ids=np.array([1]))
    run = _copy_run(sisa_run, tmp_path / "half")
    next(iter(sorted((run / "sisa").rglob("slice_002.pt")))).unlink()
    with pytest.raises(UverifyError, match=r"SISA file .*slice_002\.pt is missing"):
        unlearn_run(run, ids=np.array([1]))
    run = _copy_run(sisa_run, tmp_path / "nomodel")
    (run / "model.onnx").unlink()
    with pytest.raises(UverifyError, match=r"model\.onnx is missing"):
        unlearn_run(run, ids=np.array([1]))
    run = _copy_run(sisa_run, tmp_path / "garbled")
    (run / "run.json").write_text('{"schema": "uverify.run/1", "method": "sisa"}')
    with pytest.raises(UverifyError, match=r"not a uverify\.run/1 file"):
        unlearn_run(run, ids=np.array([1]))
    run = _copy_run(sisa_run, tmp_path / "manifest")
    (run / "sisa" / "manifest.npz").write_bytes(b"not an npz")
    with pytest.raises(UverifyError, match="manifest"):
        unlearn_run(run, ids=np.array([1]))


def test_run_files_get_the_usual_mode_not_owner_only(tiny_spec: Spec, tmp_path: Path) -> None:
    import os

    old = os.umask(0o022)
    try:
        train_run(tiny_spec, tmp_path / "run", adversarial=False, progress=False)
    finally:
        os.umask(old)
    assert (tmp_path / "run").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "run" / "run.json").stat().st_mode & 0o777 == 0o644


def test_a_damaged_deletion_record_is_one_line(sisa_run: Path, tmp_path: Path) -> None:
    run = _copy_run(sisa_run, tmp_path / "run")
    (run / "deleted_ids.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UverifyError, match=r"deleted_ids\.npy is not readable"):
        unlearn_run(run, ids=np.array([1]))
    np.save(run / "deleted_ids.npy", np.zeros((2, 2), np.int64))
    with pytest.raises(UverifyError, match=r"deleted_ids\.npy must be a 1-d integer array"):
        unlearn_run(run, ids=np.array([1]))


def test_id_files_with_a_byte_order_mark_or_huge_numbers(tmp_path: Path) -> None:
    from uverify.rundir import read_id_file

    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf12\n7\n")  # as Windows editors save UTF-8
    assert list(read_id_file(tmp_path / "bom.txt")) == [7, 12]
    (tmp_path / "huge.txt").write_text("1\n99999999999999999999\n")
    with pytest.raises(UverifyError, match="line 2: 99999999999999999999 is out of the range of sample ids"):
        read_id_file(tmp_path / "huge.txt")
