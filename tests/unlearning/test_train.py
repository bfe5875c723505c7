from __future__ import annotations

import numpy as np
import torch

from uverify.attacks import pgd_for
from uverify.datasets import load
from uverify.models import accuracy, build_model, predict_logits
from uverify.specs.schema import AdversarialSpec, Spec
from uverify.unlearning.train import Trainer


def _weights(model: torch.nn.Module) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in model.parameters()]


def _train(spec: Spec, seed: int, adversarial: AdversarialSpec | None = None, epochs: int | None = None):
    splits = load(spec.data)
    model = build_model(spec.model, splits.train.input_shape, splits.train.num_classes, seed=seed)
    trainer = Trainer(model, spec.train, adversarial=adversarial, norm=spec.property.norm, seed=seed)
    history = trainer.fit(splits.train, epochs, progress=False)
    return model, history, splits, trainer


def test_same_seed_same_weights_other_seed_other_weights(tiny_spec: Spec) -> None:
    a, hist_a, _, _ = _train(tiny_spec, 0)
    b, hist_b, _, _ = _train(tiny_spec, 0)
    c, _, _, _ = _train(tiny_spec, 1)
    for wa, wb in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_array_equal(wa, wb)
    assert [h.loss for h in hist_a] == [h.loss for h in hist_b]
    assert any(not np.array_equal(wa, wc) for wa, wc in zip(_weights(a), _weights(c), strict=True))


def test_adversarial_training_is_reproducible_too(tiny_spec: Spec) -> None:
    adv = AdversarialSpec(epsilon=0.05, steps=3)
    a, _, _, _ = _train(tiny_spec, 0, adv, epochs=1)
    b, _, _, _ = _train(tiny_spec, 0, adv, epochs=1)
    for wa, wb in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_training_learns_and_reports_per_epoch_metrics(tiny_spec: Spec) -> None:
    model, history, splits, _ = _train(tiny_spec, 0)
    assert [h.epoch for h in history] == [1, 2, 3, 4, 5]
    assert history[-1].loss < history[0].loss
    # well above the 1/3 of chance on separated classes
    assert accuracy(predict_logits(model, splits.test.X), splits.test.y) > 0.8


def test_resuming_from_a_state_dict_is_bit_exact(tiny_spec: Spec) -> None:
    """What SISA relies on: checkpoint after some epochs, resume, and land on the same weights."""
    straight, _, splits, _ = _train(tiny_spec, 0, epochs=2)
    first = build_model(tiny_spec.model, splits.train.input_shape, splits.train.num_classes, seed=0)
    trainer = Trainer(first, tiny_spec.train)
    trainer.fit(splits.train, 1, progress=False)
    state = {k: v for k, v in trainer.state_dict().items()}
    state = torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, state)
    resumed_model = build_model(tiny_spec.model, splits.train.input_shape, splits.train.num_classes, seed=7)
    resumed = Trainer(resumed_model, tiny_spec.train, seed=7)
    resumed.load_state_dict(state)
    resumed.fit(splits.train, 1, progress=False)
    for ws, wr in zip(_weights(straight), _weights(resumed_model), strict=True):
        np.testing.assert_array_equal(ws, wr)


def test_on_step_sees_every_training_id_once_per_epoch(tiny_spec: Spec) -> None:
    splits = load(tiny_spec.data)
    model = build_model(tiny_spec.model, splits.train.input_shape, splits.train.num_classes, seed=0)
    seen: list[np.ndarray] = []
    Trainer(model, tiny_spec.train).fit(splits.train, 2, on_step=seen.append, progress=False)
    batches_per_epoch = -(-len(splits.train) // tiny_spec.train.batch_size)
    assert len(seen) == 2 * batches_per_epoch
    first_epoch = np.concatenate(seen[:batches_per_epoch])
    assert sorted(first_epoch) == sorted(splits.train.ids)


def test_adversarial_training_makes_pgd_less_successful(tiny_spec: Spec) -> None:
    eps = 0.08
    spec = tiny_spec.model_copy(update={"train": tiny_spec.train.model_copy(update={"epochs": 8})})
    standard, _, splits, _ = _train(spec, 0)
    robust, _, _, _ = _train(spec, 0, AdversarialSpec(epsilon=eps, steps=7))
    x, y = torch.from_numpy(splits.test.X), torch.from_numpy(splits.test.y)
    lo, hi = torch.from_numpy(splits.test.domain.lower)[None], torch.from_numpy(splits.test.domain.upper)[None]
    attack = pgd_for("inf", steps=20, restarts=2)
    rob = {}
    for name, model in (("standard", standard), ("adversarial", robust)):
        result = attack.run(model, x, y, eps, lo, hi, torch.Generator().manual_seed(0))
        rob[name] = float((~result.success).float().mean())
    assert rob["adversarial"] > rob["standard"]
