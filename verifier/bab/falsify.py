"""The falsifier inside branch and bound: candidate points from the bounds and from PGD, and the judge.

A candidate counts only when the judge, which runs onnxruntime on the original file, confirms it: in
the property's input set and in its violation region there. The torch module only proposes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import nn

from uverify.attacks import pgd_for
from uverify.models.referee import Referee
from uverify.verifier.bab.bounding import Region
from uverify.verifier.property import Box, Conjunction


class Judge(Protocol):
    """Which candidate points (m, *input_shape) are real counterexamples, and the points as checked
    (a judge may pull a point into an open ball before it checks it)."""

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class PropertyJudge:
    """onnxruntime on the file: the point lies in `box` and its outputs satisfy one disjunct (C y <= d)."""

    def __init__(self, referee: Referee, box: Box, violation: Sequence[Conjunction], input_shape: tuple[int, ...]):
        self.referee, self.box, self.violation, self.input_shape = referee, box, tuple(violation), input_shape

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        points = np.clip(points.reshape(len(points), -1), self.box.lower, self.box.upper).astype(np.float32)
        inside = self.box.contains(points)
        outputs = self.referee.outputs(points.reshape(len(points), *self.input_shape)).reshape(len(points), -1)
        slack = np.min(np.stack([c.slack(outputs.astype(np.float64)) for c in self.violation]), axis=0)
        return inside & (slack <= 0), points.reshape(len(points), *self.input_shape)


class SlackModel(nn.Module):
    """(n, K+1) outputs [0, −slack_1, …, −slack_K], slack_k = max over disjunct k's rows of C y − d: the
    margin loss of label 0 is −min_k slack_k, so PGD's untargeted attack on label 0 searches for a point
    in the violation region, and its success means some slack < 0."""

    def __init__(self, model: nn.Module, C: torch.Tensor, d: torch.Tensor, owner: torch.Tensor, disjuncts: int):
        super().__init__()
        self.model = model
        self.C: torch.Tensor = C
        self.d: torch.Tensor = d
        self.owner: torch.Tensor = owner
        self.disjuncts = disjuncts

    def slack(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.model(x).reshape(len(x), -1) @ self.C.T - self.d
        out = torch.full((len(x), self.disjuncts), -torch.inf, dtype=rows.dtype)
        return out.scatter_reduce(1, self.owner.expand(len(x), -1), rows, reduce="amax")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        slack = self.slack(x)
        return torch.cat([torch.zeros((len(x), 1), dtype=slack.dtype), -slack], dim=1)


def minimising_points(
    region: Region, coef: torch.Tensor, lower: torch.Tensor | None = None, upper: torch.Tensor | None = None
) -> torch.Tensor:
    """Per domain, the input point where its linear lower bound (coefficients `coef`, (n, inputs)) is
    smallest: the box corner (norm inf, over the sub-box when given) or the ball's boundary point
    (norms 2 and 1), kept inside the domain box. CROWN's bound is tightest there, so a violation nearby
    is likeliest."""
    n = coef.shape[0]
    shape = region.centre.shape
    if region.norm == "inf":
        lo = (region.lower if lower is None else lower).reshape(n if lower is not None else 1, -1)
        hi = (region.upper if upper is None else upper).reshape(n if upper is not None else 1, -1)
        points = torch.where(coef > 0, lo.expand(n, -1), hi.expand(n, -1))
    else:
        centre = region.centre.reshape(1, -1).expand(n, -1)
        if region.norm == "2":
            step = coef / coef.norm(dim=1, keepdim=True).clamp_min(1e-12)
        else:
            top = coef.abs().argmax(dim=1)
            step = torch.zeros_like(coef).scatter(1, top[:, None], coef.gather(1, top[:, None]).sign())
        points = centre - region.epsilon * step
        points = torch.minimum(torch.maximum(points, region.lower.reshape(1, -1)), region.upper.reshape(1, -1))
    return points.reshape(n, *shape)


def pgd_points(
    slack_model: SlackModel, region: Region, starts: torch.Tensor, steps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """PGD inside the region from each start (norm inf: an L_inf ball around the start wide enough to
    cover the box, cut to the box; norms 2, 1: from the ball's centre with random starts). Returns the
    points and whether torch already sees them in the violation region."""
    n = starts.shape[0]
    if region.norm == "inf":
        eps = float((region.upper - region.lower).max())
        if eps <= 0:
            return starts, slack_model.slack(starts).min(dim=1).values <= 0
        attack = pgd_for("inf", steps=steps, restarts=1)
        x, lo, hi = starts, region.lower[None], region.upper[None]
    else:
        eps = region.epsilon
        attack = pgd_for(region.norm, steps=steps, restarts=1, random_first_start=True)
        x, lo, hi = region.centre[None].expand(n, *region.centre.shape), region.lower[None], region.upper[None]
    labels = torch.zeros(n, dtype=torch.long)
    result = attack.run(slack_model, x.contiguous(), labels, eps, lo, hi, generator)
    return result.x_adv, result.success
