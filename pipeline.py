"""Train -> export -> validate, and unlearn -> export -> validate, on one run directory (the unit every
later step reads back; rundir.py owns its layout).

The spec's `unlearning.method` decides how M is trained: SISA trains the sharded, sliced ensemble
with its checkpoints; Amnesiac trains one model and records every batch's parameter update. Either
way the method exports the model to ONNX and onnxruntime's accuracy on the test set must match torch's.

`compute` (the spec's section, or the command line's) says where SISA's shards train: the executor is
opened before anything is written (a scheduler that cannot be reached changes nothing) and the run
records the spec without it. Amnesiac's training stays serial: every recorded update depends on the
one before it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from uverify import __version__
from uverify.compute import Executor, open_executor, without_compute
from uverify.datasets import Dataset, Splits, load
from uverify.errors import ExportError, UverifyError
from uverify.files import atomic_write_json, ensure_writable_dir
from uverify.kinds import Training
from uverify.models import accuracy, predict_logits
from uverify.models.vote import referee_for
from uverify.rundir import (
    DeleteRequest,
    Run,
    RunDir,
    RunInfo,
    check_train_target,
    creating,
    locked,
    open_run,
    updating,
    write_deletion,
    write_trained,
)
from uverify.specs.schema import ComputeSpec, Spec, spec_sha256
from uverify.unlearning.method import Method, method_for
from uverify.unlearning.metrics import unlearning_metrics
from uverify.unlearning.sisa import Sisa

EXPORT_CHECK_SAMPLES = 256


@dataclass(frozen=True)
class TrainRun:
    out: Path
    method: str
    training: Training
    test_accuracy: float | None  # measured by onnxruntime on the exported file(s); None without a test split
    train_accuracy: float
    seconds: float
    export_max_abs_diff: float
    model_path: Path
    replaced: str | None = None  # what an overwrite replaced (a description of the old run)


@dataclass(frozen=True)
class UnlearnResult:
    run: Path
    method: str
    requested: int
    deleted: np.ndarray  # the ids this request deleted (already deleted ones left out)
    noop: bool
    seconds: float
    model_path: Path
    entry: dict[str, Any] = field(default_factory=dict)  # the deletion log entry (empty for a no-op)

    @property
    def log_path(self) -> Path:
        return RunDir(self.run).log_file


# ------------------------------------------------------------------------------------------ training
def train_run(
    spec: Spec,
    out: str | Path,
    *,
    adversarial: bool,
    overwrite: bool = False,
    splits: Splits | None = None,
    progress: bool = True,
    compute: ComputeSpec | Executor | None = None,
) -> TrainRun:
    """Train the spec's model (standard or adversarial) with its unlearning method, export it, check it
    with onnxruntime.

    `out` must be new, an empty folder, or (with `overwrite`) an existing run; it is locked for the whole
    call. Everything is written into a staging folder beside `out` that replaces `out` only when
    complete, so a failed or interrupted run never leaves a directory that mixes files of two runs.
    `compute` (default: the spec's section, or an executor already open) is where SISA's shards train."""
    started = time.perf_counter()
    final = Path(out).absolute()
    training = Training.ADVERSARIAL if adversarial else Training.STANDARD
    compute = compute or spec.compute
    spec = without_compute(spec)
    with open_executor(compute) as executor, locked(final):
        replaced = check_train_target(final, overwrite=overwrite)
        splits = splits or load(spec.data)
        with creating(final) as staging:
            method = _on(method_for(spec, splits.train, training), executor)
            model, steps = method.fit(staging.path, progress=progress)
            exported = _export(method, model, staging, final, spec, splits, training)
            train_accuracy = accuracy(predict_logits(model, splits.train.X), splits.train.y) or 0.0
            seconds = time.perf_counter() - started
            storage = method.storage_bytes(staging.path)
            log = _train_log(spec, splits, training, steps, train_accuracy, exported, storage)
            info = RunInfo(
                method=spec.unlearning.method,
                training=training,
                model=exported["file"],
                spec_sha256=spec_sha256(spec),
                uverify_version=__version__,
            )
            write_trained(staging, spec, info, log | {"seconds": seconds})
    return TrainRun(
        Path(out),
        spec.unlearning.method,
        training,
        exported["test_accuracy_onnxruntime"],
        train_accuracy,
        seconds,
        exported["max_abs_diff"],
        Path(out) / exported["file"],
        replaced,
    )


def _on(method: Method, executor: Executor) -> Method:
    """The method with its independent work on `executor`: SISA's shards. Amnesiac has none (each
    recorded update is taken on the model the previous one left), so it stays serial."""
    if isinstance(method, Sisa):
        method.executor = executor
    return method


def _train_log(
    spec: Spec,
    splits: Splits,
    training: Training,
    steps: list[dict[str, Any]],
    train_accuracy: float,
    exported: dict[str, Any],
    storage_bytes: int,
) -> dict[str, Any]:
    train, test = splits.train, splits.test
    adv = spec.adversarial_or_default() if training is Training.ADVERSARIAL else None
    return {
        "uverify_version": __version__,
        "spec_sha256": spec_sha256(spec),
        "method": spec.unlearning.method,
        "training": training,
        "adversarial": adv.model_dump(mode="json") if adv else None,
        "norm": spec.property.norm,
        "data": {"dataset": train.name, "train": len(train), "test": len(test), "classes": train.class_names},
        "steps": steps,
        "train_accuracy": train_accuracy,
        "test_accuracy_torch": exported["test_accuracy_torch"],
        "test_accuracy_onnxruntime": exported["test_accuracy_onnxruntime"],
        "export": exported,
        "storage_bytes": storage_bytes,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__},
    }


def _export(
    method: Method, model: nn.Module, staging: RunDir, final: Path, spec: Spec, splits: Splits, training: Training
) -> dict[str, Any]:
    """The method writes the model's ONNX file(s) into `staging`; onnxruntime's test accuracy on them
    must equal torch's (within one sample), or nothing lands."""
    train, test = splits.train, splits.test
    check = train.X[:EXPORT_CHECK_SAMPLES] if len(train) >= 2 else np.concatenate([train.X, train.X])
    report = method.export(model, staging.path, check, _model_metadata(spec, train, training))
    file = str(report.path.relative_to(staging.path))
    onnx_acc = accuracy(referee_for(report.path).logits(test.X), test.y) if len(test) else None
    torch_acc = accuracy(predict_logits(model, test.X), test.y)
    if onnx_acc is not None and torch_acc is not None and abs(onnx_acc - torch_acc) > 1.0 / len(test) + 1e-12:
        raise ExportError(f"{final / file}: onnxruntime accuracy {onnx_acc:.4f} != torch {torch_acc:.4f}")
    return {
        "file": file,
        "opset": report.opset,
        "ops": report.ops,
        "max_abs_diff": report.max_abs_diff,
        "test_accuracy_onnxruntime": onnx_acc,
        "test_accuracy_torch": torch_acc,
    }


def _model_metadata(spec: Spec, train: Dataset, training: Training) -> dict[str, Any]:
    """What every exported model records about itself (ONNX metadata_props)."""
    return {
        "uverify_version": __version__,
        "dataset": train.name,
        "class_names": train.class_names,
        "input_shape": list(train.input_shape),
        "input_domain": train.domain.to_json(),
        "preprocessing": train.preprocessing,
        "arch": spec.model.model_dump(mode="json"),
        "training": training,
        "unlearning": spec.unlearning.method,
        "spec_sha256": spec_sha256(spec),
    }


# ---------------------------------------------------------------------------------------- unlearning
def unlearn_run(
    run_dir: str | Path,
    *,
    ids_file: str | Path | None = None,
    ids: np.ndarray | None = None,
    fraction: float | None = None,
    seed: int | None = None,
    from_spec: bool = False,
    method: str | None = None,
    baseline: bool = False,
    metrics_out: str | Path | None = None,
    splits: Splits | None = None,
    progress: bool = True,
    compute: ComputeSpec | Executor | None = None,
) -> UnlearnResult:
    """Delete a request (an id file, an id array, a seeded fraction of the training set, or with
    `from_spec` and none of those the run's spec's request) from a run: M' replaces M in the run
    directory, all-or-nothing, with a deletion log entry and metrics.

    `baseline=True` also retrains from scratch without every deleted id (the gold standard) and adds
    the comparison with it to the metrics, which also go to `metrics_out` when given. A request whose
    ids are all deleted already is a no-op. `compute` (a section, or an executor already open) is where
    SISA's touched shards retrain (a run records no compute section: default serial)."""
    started = time.perf_counter()
    with open_executor(compute) as executor:
        return _unlearn(
            run_dir, ids_file, ids, fraction, seed, from_spec, method, baseline, metrics_out, splits, progress,
            executor, started,
        )  # fmt: skip


def _unlearn(
    run_dir: str | Path,
    ids_file: str | Path | None,
    ids: np.ndarray | None,
    fraction: float | None,
    seed: int | None,
    from_spec: bool,
    method: str | None,
    baseline: bool,
    metrics_out: str | Path | None,
    splits: Splits | None,
    progress: bool,
    executor: Executor,
    started: float,
) -> UnlearnResult:
    if metrics_out is not None:
        ensure_writable_dir(Path(metrics_out).parent)
    with locked(run_dir):
        run = open_run(run_dir)
        if method is not None and method != run.info.method:
            raise UverifyError(
                f"run {run.path} was trained for {run.info.method} unlearning, not {method} "
                f"(train with unlearning.method: {method})"
            )
        default = run.spec.unlearning.delete if from_spec else None
        request = DeleteRequest.build(ids_file=ids_file, ids=ids, fraction=fraction, seed=seed, default=default)
        splits = splits or load(run.spec.data)
        requested = request.resolve(splits.train.ids, f"run {run.path}")
        new_ids = np.setdiff1d(requested, run.deleted_ids())
        if len(new_ids) == 0:
            seconds = time.perf_counter() - started
            return UnlearnResult(run.path, run.info.method, len(requested), new_ids, True, seconds, run.model_path)
        entry = _apply_deletion(run, splits, request, requested, new_ids, baseline, progress, started, executor)
    if metrics_out is not None:
        atomic_write_json(metrics_out, entry["metrics"] | {"deletion": entry["number"]})
    seconds = time.perf_counter() - started
    return UnlearnResult(run.path, run.info.method, len(requested), new_ids, False, seconds, run.model_path, entry)


def _apply_deletion(
    run: Run,
    splits: Splits,
    request: DeleteRequest,
    requested: np.ndarray,
    new_ids: np.ndarray,
    baseline: bool,
    progress: bool,
    started: float,
    executor: Executor,
) -> dict[str, Any]:
    """Unlearn `new_ids` on a staged copy of the run that replaces it whole; returns the log entry."""
    deleted = np.union1d(run.deleted_ids(), new_ids)
    # the first optimiser step of a process imports torch._dynamo (seconds): done here, so that neither
    # the unlearning nor the retraining timer is charged for it
    import torch._dynamo  # noqa: F401

    method = _on(method_for(run.spec, splits.train, run.info.training), executor)
    method.check_files(run.path)
    with updating(run) as staging:
        metrics, touched, exported = _delete(
            method, run, staging, splits, requested, new_ids, deleted, baseline, progress
        )
        entry = {
            "number": len(run.log()) + 1,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "method": run.info.method,
            "source": request.source,
            "requested": len(requested),
            "ids_sha256": hashlib.sha256(new_ids.tobytes()).hexdigest(),
            "ids": new_ids.tolist(),
            "deleted_total": len(deleted),
            "touched": touched,
            "export": exported,
            "metrics": metrics,
            "seconds": time.perf_counter() - started,
        }
        write_deletion(staging, run, deleted, entry)
    return entry


def _delete(
    method: Method,
    run: Run,
    staging: RunDir,
    splits: Splits,
    requested: np.ndarray,
    new_ids: np.ndarray,
    deleted: np.ndarray,
    baseline: bool,
    progress: bool,
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
    """Unlearn into `staging`, retrain the baseline when asked, export M'; (metrics, touched, export)."""
    before = method.load(staging.path)
    t0 = time.perf_counter()
    after, touched = method.unlearn(staging.path, new_ids, deleted, progress=progress)
    unlearn_seconds = time.perf_counter() - t0
    retrained, retrain_seconds = (None, None)
    if baseline:
        retrained, retrain_seconds = _retrain_baseline(method, run, staging, deleted, progress)
    exported = _export(method, after, staging, run.path, run.spec, splits, run.info.training)
    metrics = unlearning_metrics(before, after, splits.train, splits.test, requested, deleted, retrained)
    metrics["seconds"] = {"unlearn": unlearn_seconds, "retrain": retrain_seconds}
    metrics["speedup_vs_retraining"] = retrain_seconds / unlearn_seconds if retrain_seconds else None
    metrics["storage_bytes"] = method.storage_bytes(staging.path)
    return metrics, touched, exported


def _retrain_baseline(
    method: Method, run: Run, staging: RunDir, deleted: np.ndarray, progress: bool
) -> tuple[nn.Module, float]:
    """The gold standard, trained in a scratch folder beside the run that is removed afterwards."""
    scratch = Path(tempfile.mkdtemp(prefix=".retrain.", dir=run.path.parent))
    try:
        t0 = time.perf_counter()
        retrained = method.retrain(staging.path, deleted, scratch, progress=progress)
        return retrained, time.perf_counter() - t0
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


__all__ = ["TrainRun", "UnlearnResult", "train_run", "unlearn_run"]
