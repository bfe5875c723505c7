"""The gold standard every approximate unlearning method is measured against: one model trained from
scratch without the deleted samples, with the spec's own configuration and seed.

Amnesiac's recorded training is this same training with nothing deleted (recording the updates does
not touch any random stream), so `retrain(..., deleted=[])` is bit-for-bit Amnesiac's M.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from uverify.datasets import Dataset
from uverify.errors import UverifyError
from uverify.models import build_model
from uverify.specs.schema import AdversarialSpec, Spec
from uverify.unlearning.train import Trainer


def trainer_for(spec: Spec, train: Dataset, adversarial: AdversarialSpec | None) -> Trainer:
    """A fresh model and trainer, seeded by the spec (the one place both Amnesiac and retrain build them)."""
    model = build_model(spec.model, train.input_shape, train.num_classes, seed=spec.train.seed)
    return Trainer(model, spec.train, adversarial=adversarial, norm=spec.property.norm, seed=spec.train.seed)


def retrain(
    spec: Spec, train: Dataset, adversarial: AdversarialSpec | None, deleted: np.ndarray, *, progress: bool = True
) -> nn.Module:
    """Train the spec's model from scratch on `train` without `deleted` (standard, or adversarial when given)."""
    retained = train.without(np.asarray(deleted, np.int64))
    if len(retained) == 0:
        raise UverifyError(f"retraining without {len(deleted)} deleted ids leaves no training data")
    trainer = trainer_for(spec, train, adversarial)
    trainer.fit(retained, spec.train.epochs, progress=progress, desc="retrain")
    return trainer.model.eval()


__all__ = ["retrain", "trainer_for"]
