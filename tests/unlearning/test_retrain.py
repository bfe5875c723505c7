from __future__ import annotations

import numpy as np
import pytest
import torch

from uverify.datasets import load
from uverify.errors import UverifyError
from uverify.models import build_model
from uverify.specs.schema import Spec
from uverify.unlearning.retrain import retrain
from uverify.unlearning.train import Trainer


def _flat(model: torch.nn.Module) -> np.ndarray:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().numpy()


def test_retrain_is_the_spec_training_on_the_retained_data(tiny_spec: Spec) -> None:
    spec = tiny_spec.model_copy(update={"train": tiny_spec.train.model_copy(update={"epochs": 2, "seed": 3})})
    train = load(spec.data).train
    deleted = train.ids[:10]
    model = build_model(spec.model, train.input_shape, train.num_classes, seed=3)
    Trainer(model, spec.train, seed=3).fit(train.without(deleted), progress=False)
    retrained = retrain(spec, train, None, deleted, progress=False)
    np.testing.assert_array_equal(_flat(retrained), _flat(model))
    assert not np.array_equal(_flat(retrained), _flat(retrain(spec, train, None, deleted[:0], progress=False)))


def test_deleting_everything_is_an_error(tiny_spec: Spec) -> None:
    train = load(tiny_spec.data).train
    with pytest.raises(UverifyError, match="no training data"):
        retrain(tiny_spec, train, None, train.ids, progress=False)
