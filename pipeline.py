"""Train -> export -> validate, and unlearn -> export -> validate, on one run directory (the unit every
later step reads back; its layout is described in unlearning/run.py).

The spec's `unlearning.method` decides how M is trained: SISA trains the sharded, sliced ensemble
with its checkpoints; Amnesiac trains one model and records every batch's parameter update. Either
way the model is exported to ONNX and onnxruntime's accuracy on the test set must match torch's.
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
from uverify.datasets import Dataset, Splits, load
from uverify.errors import ExportError, UverifyError
from uverify.files import atomic_write_json, atomic_write_npy, staged_dir, staged_update
from uverify.models import export_onnx
from uverify.specs.schema import Spec, spec_sha256
from uverify.unlearning.metrics import accuracy_on, unlearning_metrics
from uverify.unlearning.run import (
    DELETED_FILE,
    LOG_FILE,
    RUN_FILE,
    Method,
    Run,
    RunInfo,
    describe_ids,
    open_run,
    read_id_file,
    sample_fraction,
    unknown_ids,
)

EXPORT_CHECK_SAMPLES = 256
MODEL_FILE = "model.onnx"
VOTE_FILE = "vote.json"


@dataclass(frozen=True)
class TrainRun:
    out: Path
    method: str
    training: str  # "standard" | "adversarial"
    test_accuracy: float  # measured by onnxruntime on the exported file(s)
    train_accuracy: float
    seconds: float
    export_max_abs_diff: float

    @property
    def model_path(self) -> Path:
        return self.out / (VOTE_FILE if (self.out / VOTE_FILE).is_file() else MODEL_FILE)


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


def method_for(spec: Spec, train: Dataset, training: str) -> Method:
    """The spec's unlearning method, set up for this training set and training kind."""
    adversarial = spec.adversarial_or_default() if training == "adversarial" else None
    if spec.unlearning.method == "sisa":
        from uverify.unlearning.sisa import Sisa

        return Sisa(spec, train, adversarial)
    from uverify.unlearning.amnesiac import Amnesiac

    return Amnesiac(spec, train, adversarial)


# ------------------------------------------------------------------------------------------ training
def train_run(
    spec: Spec, out: str | Path, *, adversarial: bool, splits: Splits | None = None, progress: bool = True
) -> TrainRun:
    """Train the spec's model (standard or adversarial) with its unlearning method, export it, check it
    with onnxruntime.

    Everything is written into a staging folder beside `out` that replaces `out` only when complete, so
    a failed or interrupted run never leaves a directory that mixes files of two runs."""
    final = Path(out)
    with staged_dir(final) as staging:
        return _train_into(spec, staging, final, adversarial=adversarial, splits=splits, progress=progress)


def _train_into(
    spec: Spec, out: Path, final: Path, *, adversarial: bool, splits: Splits | None, progress: bool
) -> TrainRun:
    started = time.perf_counter()
    splits = splits or load(spec.data)
    train, test = splits.train, splits.test
    training = "adversarial" if adversarial else "standard"
    method = method_for(spec, train, training)
    model, steps = method.fit(out, progress=progress)
    exported = _export(spec, model, out, final, train, test, training)
    atomic_write_json(out / "spec.json", spec.model_dump(mode="json"))
    seconds = time.perf_counter() - started
    result = TrainRun(
        final,
        spec.unlearning.method,
        training,
        exported["test_accuracy_onnxruntime"],
        float(accuracy_on(model, train) or 0.0),
        seconds,
        exported["max_abs_diff"],
    )
    adv = spec.adversarial_or_default() if adversarial else None
    atomic_write_json(
        out / "train_log.json",
        {
            "uverify_version": __version__,
            "spec_sha256": spec_sha256(spec),
            "method": spec.unlearning.method,
            "training": training,
            "adversarial": adv.model_dump(mode="json") if adv else None,
            "norm": spec.property.norm,
            "data": {"dataset": train.name, "train": len(train), "test": len(test), "classes": train.class_names},
            "steps": steps,
            "train_accuracy": result.train_accuracy,
            "test_accuracy_torch": exported["test_accuracy_torch"],
            "test_accuracy_onnxruntime": result.test_accuracy,
            "export": exported,
            "storage_bytes": method.storage_bytes(out),
            "seconds": seconds,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "onnxruntime": ort.__version__,
            },
        },
    )
    info = RunInfo(
        method=spec.unlearning.method,
        training=training,
        model=exported["file"],
        spec_sha256=spec_sha256(spec),
        uverify_version=__version__,
    )
    atomic_write_json(out / RUN_FILE, info.model_dump(mode="json", by_alias=True))
    return result


def _export(
    spec: Spec, model: nn.Module, out: Path, final: Path, train: Dataset, test: Dataset, training: str
) -> dict[str, Any]:
    """Write the model's ONNX file(s) into `out`; onnxruntime's test accuracy must equal torch's.

    A majority vote is not one graph: its members go to shards/ and vote.json lists them."""
    from uverify.verifier.vote import VoteReferee, write_vote_manifest

    metadata: dict[str, Any] = {
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
    if spec.unlearning.method == "sisa":
        metadata["sisa"] = spec.unlearning.sisa.model_dump(mode="json")
    check = train.X[:EXPORT_CHECK_SAMPLES] if len(train) >= 2 else np.concatenate([train.X, train.X])
    aggregation = getattr(model, "aggregation", None)
    if aggregation == "majority_vote":
        files = []
        max_diff, ops = 0.0, set[str]()
        members: list[nn.Module] = list(model.members)  # type: ignore[arg-type]
        for k, member in enumerate(members):
            path = out / "shards" / f"shard_{k:03d}.onnx"
            report = export_onnx(member, path, check, metadata | {"sisa_shard": k})
            files.append(path)
            max_diff, ops = max(max_diff, report.max_abs_diff), ops | set(report.ops)
        write_vote_manifest(out / VOTE_FILE, files)
        onnx_acc = _accuracy(VoteReferee(files).logits(test.X), test.y)
        file, opset, op_list = VOTE_FILE, report.opset, sorted(ops)
    else:
        report = export_onnx(model, out / MODEL_FILE, check, metadata)
        from uverify.verifier.referee import Referee

        onnx_acc = _accuracy(Referee(out / MODEL_FILE).logits(test.X), test.y) if len(test) else float("nan")
        file, opset, op_list, max_diff = MODEL_FILE, report.opset, report.ops, report.max_abs_diff
    torch_acc = accuracy_on(model, test)
    if torch_acc is not None and abs(onnx_acc - torch_acc) > 1.0 / len(test) + 1e-12:
        raise ExportError(f"{final / file}: onnxruntime accuracy {onnx_acc:.4f} != torch {torch_acc:.4f}")
    return {
        "file": file,
        "opset": opset,
        "ops": op_list,
        "max_abs_diff": max_diff,
        "test_accuracy_onnxruntime": onnx_acc,
        "test_accuracy_torch": torch_acc,
    }


def _accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean()) if len(y) else float("nan")


# ---------------------------------------------------------------------------------------- unlearning
def unlearn_run(
    run_dir: str | Path,
    *,
    ids_file: str | Path | None = None,
    ids: np.ndarray | None = None,
    fraction: float | None = None,
    seed: int = 0,
    method: str | None = None,
    baseline: bool = False,
    splits: Splits | None = None,
    progress: bool = True,
) -> UnlearnResult:
    """Delete a request (an id file, an id array, or a seeded fraction of the training set) from a
    run: M' replaces M in the run directory, all-or-nothing, with a deletion log entry and metrics.

    `baseline=True` also retrains from scratch without every deleted id (the gold standard) and adds
    the comparison with it to the metrics. A request whose ids are all deleted already is a no-op."""
    started = time.perf_counter()
    run = open_run(run_dir)
    if method is not None and method != run.info.method:
        raise UverifyError(
            f"run {run.path} was trained for {run.info.method} unlearning, not {method} "
            f"(train with unlearning.method: {method})"
        )
    sources = [s is not None for s in (ids_file, ids, fraction)]
    if sum(sources) != 1:
        raise UverifyError("give exactly one deletion request: an id file, or a fraction of the training set")
    splits = splits or load(run.spec.data)
    train, test = splits.train, splits.test
    if ids_file is not None:
        requested, source = read_id_file(ids_file), f"ids file {ids_file}"
    elif ids is not None:
        requested, source = np.unique(np.asarray(ids, np.int64)), "ids"
    else:
        assert fraction is not None
        requested, source = sample_fraction(train.ids, fraction, seed), f"fraction {fraction:g}, seed {seed}"
    unknown = unknown_ids(requested, train.ids)
    if len(unknown):
        raise UverifyError(
            f"{len(unknown)} id(s) are not in the training set of run {run.path}: {describe_ids(unknown)}"
        )
    already = run.deleted_ids()
    new_ids = np.setdiff1d(requested, already)
    if len(new_ids) == 0:
        return UnlearnResult(
            run.path, run.info.method, len(requested), new_ids, True, time.perf_counter() - started, run.model_path
        )
    deleted = np.union1d(already, new_ids)
    # the first optimiser step of a process imports torch._dynamo (seconds): done here, so that neither
    # the unlearning nor the retraining timer is charged for it
    import torch._dynamo  # noqa: F401

    the_method = method_for(run.spec, train, run.info.training)
    the_method.check_files(run.path)
    with staged_update(run.path) as staging:
        before = the_method.load(staging)
        t0 = time.perf_counter()
        after, touched = the_method.unlearn(staging, new_ids, deleted, progress=progress)
        unlearn_seconds = time.perf_counter() - t0
        retrained, retrain_seconds = None, None
        if baseline:
            scratch = Path(tempfile.mkdtemp(prefix=".retrain.", dir=run.path.parent))
            try:
                t0 = time.perf_counter()
                retrained = the_method.retrain(staging, deleted, scratch, progress=progress)
                retrain_seconds = time.perf_counter() - t0
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        exported = _export(run.spec, after, staging, run.path, train, test, run.info.training)
        metrics = unlearning_metrics(before, after, train, test, requested, deleted, retrained)
        metrics["seconds"] = {"unlearn": unlearn_seconds, "retrain": retrain_seconds}
        metrics["speedup_vs_retraining"] = retrain_seconds / unlearn_seconds if retrain_seconds else None
        metrics["storage_bytes"] = the_method.storage_bytes(staging)
        entry = {
            "number": len(run.log()) + 1,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "method": run.info.method,
            "source": source,
            "requested": len(requested),
            "ids_sha256": hashlib.sha256(new_ids.tobytes()).hexdigest(),
            "ids": new_ids.tolist(),
            "deleted_total": len(deleted),
            "touched": touched,
            "export": exported,
            "metrics": metrics,
            "seconds": time.perf_counter() - started,
        }
        _write_deletion(staging, run, deleted, entry)
    return UnlearnResult(
        run.path, run.info.method, len(requested), new_ids, False, time.perf_counter() - started, run.model_path, entry
    )


def _write_deletion(staging: Path, run: Run, deleted: np.ndarray, entry: dict[str, Any]) -> None:
    atomic_write_npy(staging / DELETED_FILE, deleted.astype(np.int64))
    atomic_write_json(staging / LOG_FILE, [*run.log(), entry])
    atomic_write_json(staging / "unlearn.json", entry["metrics"] | {"deletion": entry["number"]})
    info = run.info.model_copy(update={"deleted": len(deleted), "model": entry["export"]["file"]})
    atomic_write_json(staging / RUN_FILE, info.model_dump(mode="json", by_alias=True))


__all__ = ["TrainRun", "UnlearnResult", "method_for", "train_run", "unlearn_run"]
