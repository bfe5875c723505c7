"""How the verifier certifies a majority vote (the manifest and its onnxruntime referee are in
models/vote.py).

A vote is certified for y at x when more than S/2 members are certified for y over the ball (ties
count against). It is sound: in the ball every one of those members predicts y, so y holds a strict
majority. PGD attacks the mean of the members' logits (differentiable), and onnxruntime judges each
candidate by the vote itself.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def vote_margin(member_margins: np.ndarray) -> np.ndarray:
    """Per sample, the (floor(S/2)+1)-th largest member margin lower bound, members along axis 0.

    It exceeds a threshold exactly when more than S/2 members' margins do: a vote margin that is
    certified exactly when a strict majority of members is."""
    need = member_margins.shape[0] // 2 + 1
    return -np.sort(-member_margins, axis=0)[need - 1]


class MeanOfLogits(nn.Module):
    """The differentiable surrogate PGD attacks in place of the vote."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = self.members[0](x)
        for member in self.members[1:]:
            total = total + member(x)
        return total * (1.0 / len(self.members))


__all__ = ["MeanOfLogits", "vote_margin"]
