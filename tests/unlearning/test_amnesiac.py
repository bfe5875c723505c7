from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch.nn.utils import parameters_to_vector

from uverify.datasets import Splits, load
from uverify.errors import UverifyError
from uverify.models import build_model
from uverify.models.referee import Referee
from uverify.pipeline import train_run, unlearn_run
from uverify.rundir import open_run
from uverify.specs.load import validate_spec
from uverify.specs.schema import AdversarialSpec, Spec
from uverify.unlearning.amnesiac import (
    AMNESIAC_DIR,
    INDEX_FILE,
    STORE_FILE,
    SUBTRACTED_FILE,
    UPDATES_FILE,
    WEIGHTS_FILE,
    Amnesiac,
    check_no_buffers,
)
from uverify.unlearning.retrain import retrain

from helpers import tiny_spec_dict

BATCHES = 5 * 8  # tiny spec: 5 epochs of ceil(240 / 32) batches


def amnesiac_spec(repair_epochs: int = 0, dtype: str = "float32", **overrides: Any) -> Spec:
    unlearning = {"method": "amnesiac", "amnesiac": {"repair_epochs": repair_epochs, "dtype": dtype}}
    return validate_spec(tiny_spec_dict(unlearning=unlearning, **overrides))


def theta(model: torch.nn.Module) -> np.ndarray:
    return parameters_to_vector(model.parameters()).detach().numpy().copy()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def index(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.load(run / AMNESIAC_DIR / INDEX_FILE) as data:
        return data["ids"], data["offsets"], data["epoch"]


def batches_holding(run: Path, ids: np.ndarray) -> np.ndarray:
    """Worked out from the index by hand, not by the code under test."""
    flat, offsets, _ = index(run)
    return np.array([b for b in range(len(offsets) - 1) if np.isin(flat[offsets[b] : offsets[b + 1]], ids).any()])


def updates(run: Path) -> np.ndarray:
    return np.load(run / AMNESIAC_DIR / UPDATES_FILE)


@pytest.fixture(scope="module")
def splits() -> Splits:
    return load(amnesiac_spec().data)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, splits: Splits) -> tuple[Path, np.ndarray]:
    """An Amnesiac store (repair_epochs 0) and the weights θ_M training ended with."""
    run = tmp_path_factory.mktemp("fitted")
    model, _ = Amnesiac(amnesiac_spec(), splits.train, None).fit(run, progress=False)
    return run, theta(model)


@pytest.fixture
def store_run(fitted: tuple[Path, np.ndarray], tmp_path: Path) -> Path:
    shutil.copytree(fitted[0], tmp_path / "fitted")
    return tmp_path / "fitted"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, splits: Splits) -> Path:
    """A whole run through the pipeline, repair_epochs 1."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train_run(amnesiac_spec(repair_epochs=1), out, adversarial=False, splits=splits, progress=False)
    return out


@pytest.fixture
def run_dir(trained: Path, tmp_path: Path) -> Path:
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


# ------------------------------------------------------------------------------------------ recording
def test_recording_does_not_change_training(fitted: tuple[Path, np.ndarray], splits: Splits) -> None:
    plain = retrain(amnesiac_spec(), splits.train, None, np.zeros(0, np.int64), progress=False)
    np.testing.assert_array_equal(fitted[1], theta(plain))


def test_the_store_holds_one_row_per_batch(fitted: tuple[Path, np.ndarray], splits: Splits) -> None:
    run, _ = fitted
    n_params = 4 * 16 + 16 + 16 * 3 + 3
    info = json.loads((run / AMNESIAC_DIR / STORE_FILE).read_text())
    rows = np.load(run / AMNESIAC_DIR / UPDATES_FILE, mmap_mode="r")
    assert rows.shape == (BATCHES, n_params) and rows.dtype == np.float32
    header = (run / AMNESIAC_DIR / UPDATES_FILE).stat().st_size - BATCHES * n_params * 4
    assert 0 < header <= 128  # the .npy header, then exactly batches x params x itemsize bytes
    assert info["batches"] == BATCHES and info["n_params"] == n_params and info["row_bytes"] == n_params * 4
    assert Amnesiac(amnesiac_spec(), splits.train, None).storage_bytes(run) >= BATCHES * n_params * 4
    flat, offsets, epoch = index(run)
    assert list(np.bincount(epoch)[1:]) == [8] * 5
    for e in range(5):  # every training id once per epoch
        first, last = offsets[8 * e], offsets[8 * (e + 1)]
        assert sorted(flat[first:last]) == sorted(splits.train.ids)


def test_the_updates_add_up_to_the_whole_of_training(fitted: tuple[Path, np.ndarray], splits: Splits) -> None:
    run, final = fitted
    initial = theta(build_model(amnesiac_spec().model, splits.train.input_shape, splits.train.num_classes, seed=0))
    np.testing.assert_allclose(initial + updates(run).astype(np.float64).sum(0), final, atol=1e-5)


def test_float16_halves_the_store(fitted: tuple[Path, np.ndarray], splits: Splits, tmp_path: Path) -> None:
    model, _ = Amnesiac(amnesiac_spec(dtype="float16"), splits.train, None).fit(tmp_path, progress=False)
    np.testing.assert_array_equal(theta(model), fitted[1])  # the dtype changes the store only
    half, full = updates(tmp_path), updates(fitted[0])
    assert half.dtype == np.float16 and half.shape == full.shape
    assert half.nbytes * 2 == full.nbytes
    np.testing.assert_allclose(half.astype(np.float32), full, rtol=1e-3, atol=1e-7)
    info = json.loads((tmp_path / AMNESIAC_DIR / STORE_FILE).read_text())
    assert info["dtype"] == "float16" and info["row_bytes"] == full.shape[1] * 2


def test_models_with_buffers_are_refused() -> None:
    with pytest.raises(UverifyError, match="BatchNorm"):
        check_no_buffers(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))


# ------------------------------------------------------------------------------------------ deletion
def test_deleting_one_id_subtracts_exactly_the_batches_that_held_it(
    store_run: Path, fitted: tuple[Path, np.ndarray], splits: Splits
) -> None:
    target = splits.train.ids[[5]]
    holding = batches_holding(store_run, target)
    assert len(holding) == 5  # once per epoch
    expected = (fitted[1].astype(np.float64) - updates(store_run)[holding].astype(np.float64).sum(0)).astype(np.float32)
    model, touched = Amnesiac(amnesiac_spec(), splits.train, None).unlearn(store_run, target, target, progress=False)
    np.testing.assert_allclose(theta(model), expected, rtol=0, atol=1e-7)
    assert not np.allclose(theta(model), fitted[1])
    np.testing.assert_array_equal(np.load(store_run / AMNESIAC_DIR / SUBTRACTED_FILE), holding)
    assert touched[0]["batches_subtracted"] == 5 and touched[0]["fraction_of_batches"] == 5 / BATCHES
    assert touched[0]["bytes_read"] == 5 * updates(store_run).shape[1] * 4
    # and the current weights on disk are M'
    np.testing.assert_array_equal(theta(Amnesiac(amnesiac_spec(), splits.train, None).load(store_run)), theta(model))


def test_subtracting_every_batch_gives_back_the_initial_weights(store_run: Path, splits: Splits) -> None:
    ids = splits.train.ids
    model, touched = Amnesiac(amnesiac_spec(), splits.train, None).unlearn(store_run, ids, ids, progress=False)
    initial = build_model(amnesiac_spec().model, splits.train.input_shape, splits.train.num_classes, seed=0)
    np.testing.assert_allclose(theta(model), theta(initial), atol=1e-5)
    assert touched[0]["fraction_of_batches"] == 1.0 and touched[0]["repair_samples"] == 0


def test_a_batch_is_never_subtracted_twice(store_run: Path, splits: Splits) -> None:
    method = Amnesiac(amnesiac_spec(), splits.train, None)
    flat, offsets, _ = index(store_run)
    first = flat[offsets[0] : offsets[1]][:2]  # two ids that shared batch 0
    second = np.array([first[1], flat[offsets[1]]])  # one of them again, and one of batch 1
    after_first, _ = method.unlearn(store_run, first, first, progress=False)
    done = batches_holding(store_run, first)
    new = np.setdiff1d(batches_holding(store_run, second), done)
    assert 0 < len(new) < len(batches_holding(store_run, second))  # the requests overlap
    expected = theta(after_first).astype(np.float64) - updates(store_run)[new].astype(np.float64).sum(0)
    after_second, touched = method.unlearn(store_run, second[1:], np.union1d(first, second), progress=False)
    np.testing.assert_allclose(theta(after_second), expected.astype(np.float32), rtol=0, atol=1e-7)
    assert touched[0]["batches_subtracted"] == len(new)
    np.testing.assert_array_equal(np.load(store_run / AMNESIAC_DIR / SUBTRACTED_FILE), np.union1d(done, new))


def test_repair_is_seeded(store_run: Path, tmp_path: Path, splits: Splits) -> None:
    other = tmp_path / "other"
    shutil.copytree(store_run, other)
    method = Amnesiac(amnesiac_spec(repair_epochs=1), splits.train, None)
    ids = splits.train.ids[:3]
    a, touched = method.unlearn(store_run, ids, ids, progress=False)
    b, _ = method.unlearn(other, ids, ids, progress=False)
    np.testing.assert_array_equal(theta(a), theta(b))
    assert touched[0]["repair_epochs"] == 1 and touched[0]["repair_samples"] == len(splits.train) - 3


# ------------------------------------------------------------------------------------------ pipeline
def test_unlearn_run_end_to_end(run_dir: Path, splits: Splits) -> None:
    before = (run_dir / "model.onnx").read_bytes()
    target = splits.train.ids[[3, 40]]
    result = unlearn_run(run_dir, ids=target, splits=splits, progress=False)
    assert not result.noop and list(result.deleted) == list(target)
    after = (run_dir / "model.onnx").read_bytes()
    assert after != before
    onnx.checker.check_model(onnx.load(str(run_dir / "model.onnx")))
    model = Amnesiac(amnesiac_spec(repair_epochs=1), splits.train, None).load(run_dir)
    expected = model(torch.from_numpy(splits.test.X)).detach().numpy()
    np.testing.assert_allclose(Referee(run_dir / "model.onnx").logits(splits.test.X), expected, atol=1e-4)
    run = open_run(run_dir)
    assert run.info.deleted == 2 and list(run.deleted_ids()) == list(target)
    (entry,) = run.log()
    assert entry["method"] == "amnesiac" and entry["ids"] == target.tolist()
    touched = entry["touched"][0]
    assert touched["batches_subtracted"] == len(batches_holding(run_dir, target)) and touched["repair_epochs"] == 1

    again = unlearn_run(run_dir, ids=target, splits=splits, progress=False)
    assert again.noop and (run_dir / "model.onnx").read_bytes() == after and len(open_run(run_dir).log()) == 1

    third = unlearn_run(run_dir, fraction=0.05, seed=1, splits=splits, progress=False)
    assert not third.noop and len(open_run(run_dir).log()) == 2
    subtracted = np.load(run_dir / AMNESIAC_DIR / SUBTRACTED_FILE)
    assert len(np.unique(subtracted)) == len(subtracted)
    counts = [e["touched"][0]["batches_subtracted"] for e in open_run(run_dir).log()]
    assert sum(counts) == len(subtracted)  # overlapping requests: no batch counted (or subtracted) twice
    np.testing.assert_array_equal(subtracted, batches_holding(run_dir, open_run(run_dir).deleted_ids()))


def test_unknown_ids_are_named(run_dir: Path, splits: Splits) -> None:
    with pytest.raises(UverifyError, match="99999"):
        unlearn_run(run_dir, ids=np.array([splits.train.ids[0], 99999]), splits=splits, progress=False)


def _replace_store(run: Path, source: Path) -> None:
    shutil.rmtree(run / AMNESIAC_DIR)
    shutil.copytree(source / AMNESIAC_DIR, run / AMNESIAC_DIR)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing_updates", "updates.npy is missing"),
        ("truncated_updates", "truncated"),
        ("missing_store", "store.json is missing"),
        ("missing_index", "batches.npz is missing"),
        ("changed_index", "batches.npz is not the index"),
        ("missing_weights", "weights.safetensors is missing"),
        ("other_architecture", "recorded for another model"),
        ("other_training", "recorded by another training"),
    ],
)
def test_a_broken_store_is_one_line(run_dir: Path, splits: Splits, tmp_path: Path, damage: str, message: str) -> None:
    folder = run_dir / AMNESIAC_DIR
    if damage == "missing_updates":
        (folder / UPDATES_FILE).unlink()
    elif damage == "truncated_updates":
        data = (folder / UPDATES_FILE).read_bytes()
        (folder / UPDATES_FILE).write_bytes(data[: len(data) - 100])
    elif damage == "missing_store":
        (folder / STORE_FILE).unlink()
    elif damage == "missing_index":
        (folder / INDEX_FILE).unlink()
    elif damage == "changed_index":
        flat, offsets, epoch = index(run_dir)
        flat[[0, 1]] = flat[[1, 0]]
        with open(folder / INDEX_FILE, "wb") as handle:
            np.savez(handle, ids=flat, offsets=offsets, epoch=epoch)
    elif damage == "missing_weights":
        (folder / WEIGHTS_FILE).unlink()
    elif damage == "other_architecture":
        other = amnesiac_spec(model={"arch": "mlp", "hidden": [8]}, train={"epochs": 1, "batch_size": 32, "lr": 0.02})
        Amnesiac(other, splits.train, None).fit(tmp_path / "other", progress=False)
        _replace_store(run_dir, tmp_path / "other")
    else:  # same architecture, another seed
        other = amnesiac_spec(train={"epochs": 5, "batch_size": 32, "lr": 0.02, "seed": 1})
        Amnesiac(other, splits.train, None).fit(tmp_path / "other", progress=False)
        _replace_store(run_dir, tmp_path / "other")
    before = snapshot(run_dir)
    with pytest.raises(UverifyError, match=message) as caught:
        unlearn_run(run_dir, ids=splits.train.ids[:2], splits=splits, progress=False)
    assert "\n" not in str(caught.value) and AMNESIAC_DIR in str(caught.value)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("where", ["writing subtracted.npy", "export"])
def test_a_failure_half_way_leaves_the_run_untouched(
    run_dir: Path, splits: Splits, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    unlearn_run(run_dir, ids=splits.train.ids[:1], splits=splits, progress=False)  # a run with some history
    before = snapshot(run_dir)
    if where == "export":

        def broken_export(*args: object, **kwargs: object) -> None:
            raise UverifyError("simulated export failure")

        monkeypatch.setattr("uverify.pipeline._export", broken_export)
    else:
        from uverify import files

        real = files.atomic_write

        def failing(path: Any, write: Any) -> Path:
            if Path(path).name == SUBTRACTED_FILE:  # weights.safetensors has been replaced by now
                raise UverifyError("simulated crash")
            return real(path, write)

        monkeypatch.setattr(files, "atomic_write", failing)
    with pytest.raises(UverifyError, match="simulated"):
        unlearn_run(run_dir, ids=splits.train.ids[5:9], splits=splits, progress=False)
    assert snapshot(run_dir) == before
    # no staging folder left behind; the lock file stays (removing it would race with a waiting command)
    assert sorted(p.name for p in run_dir.parent.iterdir()) == [".run.lock", "run"]


def test_baseline_compares_with_retraining(run_dir: Path, splits: Splits) -> None:
    result = unlearn_run(run_dir, ids=splits.train.ids[:4], baseline=True, splits=splits, progress=False)
    metrics = result.entry["metrics"]
    for key in ("parameter_l2_to_retrained", "disagreement_with_retrained"):
        assert set(metrics[key]) == {"M", "M_prime"} and all(isinstance(v, float) for v in metrics[key].values())
    assert metrics["seconds"]["retrain"] > 0 and metrics["speedup_vs_retraining"] > 0
    assert "retrained" in metrics["membership_inference_auc"]


def test_adversarial_runs_record_and_unlearn_too(tmp_path: Path, splits: Splits) -> None:
    raw_train = {"epochs": 1, "batch_size": 32, "lr": 0.02, "adversarial": {"epsilon": 0.05, "steps": 2}}
    spec = amnesiac_spec(repair_epochs=1, train=raw_train)
    adversarial = spec.adversarial_or_default()
    assert adversarial == AdversarialSpec(epsilon=0.05, steps=2)
    train_run(spec, tmp_path / "adv", adversarial=True, splits=splits, progress=False)
    recorded = Amnesiac(spec, splits.train, adversarial).load(tmp_path / "adv")
    plain = retrain(spec, splits.train, adversarial, np.zeros(0, np.int64), progress=False)
    np.testing.assert_array_equal(theta(recorded), theta(plain))
    result = unlearn_run(tmp_path / "adv", ids=splits.train.ids[:3], splits=splits, progress=False)
    assert not result.noop and open_run(tmp_path / "adv").info.training == "adversarial"
    assert result.entry["touched"][0]["repair_epochs"] == 1
