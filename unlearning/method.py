"""The `Method` protocol every unlearning method implements, and the one place that picks the method
a spec names (`method_for`).

Every path a method is given is a run directory being written (a staging folder, see rundir.py), so a
method writes only with `files.atomic_write` and keeps its own state under `RunDir.method_dir`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
from torch import nn

from uverify.datasets import Dataset
from uverify.kinds import Training, UnlearningMethod
from uverify.models import ExportReport
from uverify.specs.schema import Spec
from uverify.unlearning.amnesiac import Amnesiac
from uverify.unlearning.sisa import Sisa


class Method(Protocol):
    """What the pipeline needs from an unlearning method (SISA, Amnesiac)."""

    kind: UnlearningMethod

    def fit(self, run: Path, *, progress: bool = True) -> tuple[nn.Module, list[dict[str, Any]]]:
        """Train M from scratch into `run`; returns M and per-step log rows."""
        ...

    def load(self, run: Path) -> nn.Module:
        """The current model of a run (M, or M' after deletions)."""
        ...

    def unlearn(
        self, run: Path, new_ids: np.ndarray, deleted: np.ndarray, *, progress: bool = True
    ) -> tuple[nn.Module, list[dict[str, Any]]]:
        """Delete `new_ids` (`deleted`: every id deleted so far, these included); returns M' and what was touched."""
        ...

    def retrain(self, run: Path, deleted: np.ndarray, scratch: Path, *, progress: bool = True) -> nn.Module:
        """The baseline: the same training from scratch without `deleted` (`scratch`: a folder to use)."""
        ...

    def export(self, model: nn.Module, run: Path, samples: np.ndarray, metadata: dict[str, Any]) -> ExportReport:
        """Write the model's ONNX file(s) into `run`, each checked by onnxruntime on `samples`; the report's
        path is the file `uverify check --model` takes."""
        ...

    def check_files(self, run: Path) -> None:
        """Raise a one-line UverifyError when the method's own files are missing or do not match."""
        ...

    def storage_bytes(self, run: Path) -> int: ...


_METHODS: dict[UnlearningMethod, type[Sisa] | type[Amnesiac]] = {
    UnlearningMethod.SISA: Sisa,
    UnlearningMethod.AMNESIAC: Amnesiac,
}


def method_for(spec: Spec, train: Dataset, training: Training) -> Method:
    """The spec's unlearning method, set up for this training set and training kind."""
    adversarial = spec.adversarial_or_default() if training is Training.ADVERSARIAL else None
    return _METHODS[spec.unlearning.method](spec, train, adversarial)


__all__ = ["Method", "method_for"]
