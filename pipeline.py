"""Train -> export -> validate, writing one run directory (the unit later steps read back).

A run directory holds:
    model.onnx          the exported classifier, metadata_props: data set, classes, domain, preprocessing
    model.safetensors   the torch weights (no pickle)
    spec.json           the validated spec, defaults filled in
    train_log.json      per-epoch metrics, accuracies (torch and onnxruntime), export check, timings
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from safetensors.torch import save_file

from uverify import __version__
from uverify.datasets import Splits, load
from uverify.errors import ExportError
from uverify.files import atomic_write, atomic_write_json, staged_dir
from uverify.models import build_model, export_onnx
from uverify.specs.schema import Spec, spec_sha256
from uverify.unlearning.train import Trainer, accuracy
from uverify.verifier.referee import Referee

EXPORT_CHECK_SAMPLES = 256


@dataclass(frozen=True)
class TrainRun:
    out: Path
    training: str  # "standard" | "adversarial"
    test_accuracy: float  # measured by onnxruntime on the exported file
    train_accuracy: float
    seconds: float
    export_max_abs_diff: float


def train_run(
    spec: Spec, out: str | Path, *, adversarial: bool, splits: Splits | None = None, progress: bool = True
) -> TrainRun:
    """Train the spec's model (standard or adversarial), export it, check it with onnxruntime.

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
    adv = spec.adversarial_or_default() if adversarial else None
    model = build_model(spec.model, train.input_shape, train.num_classes, seed=spec.train.seed)
    history = Trainer(model, spec.train, adversarial=adv, norm=spec.property.norm).fit(
        train, progress=progress, desc=f"train {spec.name} ({'adversarial' if adv else 'standard'})"
    )
    training = "adversarial" if adv else "standard"
    metadata: dict[str, Any] = {
        "uverify_version": __version__,
        "dataset": train.name,
        "class_names": train.class_names,
        "input_shape": list(train.input_shape),
        "input_domain": train.domain.to_json(),
        "preprocessing": train.preprocessing,
        "arch": spec.model.model_dump(mode="json"),
        "training": training,
        "spec_sha256": spec_sha256(spec),
    }
    check = train.X[:EXPORT_CHECK_SAMPLES] if len(train) >= 2 else np.concatenate([train.X, train.X])
    report = export_onnx(model, out / "model.onnx", check, metadata)

    onnx_acc = _onnx_accuracy(out / "model.onnx", test.X, test.y)
    torch_acc = accuracy(model, test)
    if len(test) and abs(onnx_acc - torch_acc) > 1.0 / len(test) + 1e-12:
        raise ExportError(f"{final / 'model.onnx'}: onnxruntime accuracy {onnx_acc:.4f} != torch {torch_acc:.4f}")

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(out / "model.safetensors", lambda tmp: save_file(state, str(tmp)))
    atomic_write_json(out / "spec.json", spec.model_dump(mode="json"))
    seconds = time.perf_counter() - started
    result = TrainRun(final, training, onnx_acc, accuracy(model, train), seconds, report.max_abs_diff)
    atomic_write_json(
        out / "train_log.json",
        {
            "uverify_version": __version__,
            "spec_sha256": spec_sha256(spec),
            "training": training,
            "adversarial": adv.model_dump(mode="json") if adv else None,
            "norm": spec.property.norm,
            "data": {"dataset": train.name, "train": len(train), "test": len(test), "classes": train.class_names},
            "epochs": [m.to_json() for m in history],
            "train_accuracy": result.train_accuracy,
            "test_accuracy_torch": torch_acc,
            "test_accuracy_onnxruntime": onnx_acc,
            "export": {"opset": report.opset, "ops": report.ops, "max_abs_diff": report.max_abs_diff},
            "seconds": seconds,
            "versions": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "onnxruntime": ort.__version__,
            },
        },
    )
    return result


def _onnx_accuracy(path: Path, X: np.ndarray, y: np.ndarray) -> float:
    if len(X) == 0:
        return float("nan")
    return float((Referee(path).logits(X).argmax(1) == y).mean())


__all__ = ["TrainRun", "train_run"]
