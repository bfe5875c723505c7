"""Standard and PGD adversarial training (Madry et al.), seeded and deterministic.

A `Trainer` owns the model, the optimiser and the random streams, so that SISA can checkpoint all of
them after a slice and resume bit-for-bit, and Amnesiac can record each batch's parameter update
through `on_step`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from uverify.attacks import PGD, pgd_for
from uverify.datasets import Dataset
from uverify.specs.schema import AdversarialSpec, TrainSpec

StepHook = Callable[[np.ndarray], None]  # called with the batch's sample ids after optimizer.step()


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int
    loss: float
    train_accuracy: float  # on the (adversarial, when adversarial) inputs the model was trained on
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Trainer:
    """Trains one model; `adversarial` switches the inner maximisation on (norm from the property)."""

    def __init__(
        self,
        model: nn.Module,
        cfg: TrainSpec,
        *,
        adversarial: AdversarialSpec | None = None,
        norm: str = "inf",
        seed: int | None = None,
    ) -> None:
        self.model = model
        self.cfg = cfg
        seed = cfg.seed if seed is None else seed
        self.shuffle_gen = torch.Generator().manual_seed(seed)
        self.attack_gen = torch.Generator().manual_seed(seed + 1)
        self.optimizer = _optimizer(model, cfg)
        self.adversarial = adversarial
        self.attack: PGD | None = None
        if adversarial is not None:
            # Madry: PGD with a random start on the training loss (cross-entropy), the last-best point
            self.attack = pgd_for(
                norm,
                steps=adversarial.steps,
                restarts=1,
                step_size=adversarial.step_size,
                loss="ce",
                early_stop=False,
                random_first_start=True,
            )

    def fit(
        self,
        data: Dataset,
        epochs: int | None = None,
        *,
        on_step: StepHook | None = None,
        progress: bool = True,
        desc: str = "train",
    ) -> list[EpochMetrics]:
        epochs = self.cfg.epochs if epochs is None else epochs
        X = torch.from_numpy(data.X)
        y = torch.from_numpy(data.y)
        lower = torch.from_numpy(data.domain.lower)[None]
        upper = torch.from_numpy(data.domain.upper)[None]
        batches = max(1, -(-len(data) // self.cfg.batch_size))
        history: list[EpochMetrics] = []
        # disable=None: a bar on a terminal, none in a log file or CI
        bar = tqdm(total=epochs * batches, desc=desc, disable=None if progress else True, leave=False, unit="batch")
        try:
            for epoch in range(1, epochs + 1):
                started = time.perf_counter()
                order = torch.randperm(len(data), generator=self.shuffle_gen)
                total_loss, correct = 0.0, 0
                for start in range(0, len(data), self.cfg.batch_size):
                    idx = order[start : start + self.cfg.batch_size]
                    xb, yb = X[idx], y[idx]
                    if self.attack is not None and self.adversarial is not None:
                        xb = self.attack.run(
                            self.model, xb, yb, self.adversarial.epsilon, lower, upper, self.attack_gen
                        ).x_adv
                    self.model.train()
                    logits = self.model(xb)
                    loss = nn.functional.cross_entropy(logits, yb)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    if on_step is not None:
                        on_step(data.ids[idx.numpy()])
                    total_loss += float(loss.detach()) * len(idx)
                    correct += int((logits.argmax(1) == yb).sum())
                    bar.update(1)
                metrics = EpochMetrics(
                    epoch, total_loss / len(data), correct / len(data), time.perf_counter() - started
                )
                history.append(metrics)
                bar.set_postfix(epoch=epoch, loss=f"{metrics.loss:.4f}", acc=f"{metrics.train_accuracy:.3f}")
        finally:
            bar.close()
        self.model.eval()
        return history

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: weights, optimiser moments and both random streams."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "shuffle_gen": self.shuffle_gen.get_state(),
            "attack_gen": self.attack_gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.shuffle_gen.set_state(state["shuffle_gen"])
        self.attack_gen.set_state(state["attack_gen"])


def _optimizer(model: nn.Module, cfg: TrainSpec) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
