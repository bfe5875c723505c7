"""Every PGD counterexample is re-run by onnxruntime (models/referee.py) on the original file: a point
counts as a counterexample only if it lies in the ball and the domain and onnxruntime misclassifies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Confirmation:
    confirmed: np.ndarray  # bool per candidate: in the ball, in the domain, misclassified by onnxruntime
    logits: np.ndarray  # onnxruntime's logits at each candidate
    distance: np.ndarray  # ||x - x^||_p per candidate
    x_adv: np.ndarray  # the candidates as checked (pulled into the ball)


def lp_distance(x: np.ndarray, x_adv: np.ndarray, norm: str) -> np.ndarray:
    diff = (x_adv.astype(np.float64) - x.astype(np.float64)).reshape(len(x), -1)
    order = np.inf if norm == "inf" else float(norm)
    return np.linalg.norm(diff, ord=order, axis=1)


def pull_into_ball(
    x: np.ndarray, x_adv: np.ndarray, epsilon: float, norm: str, lower: np.ndarray, upper: np.ndarray
) -> np.ndarray:
    """x_adv moved toward x until ||x - x_adv||_p < epsilon holds exactly (in float64) after rounding
    to float32: for large inputs, x + delta rounds to a point up to an ulp of x outside the ball."""
    out = np.clip(x_adv.astype(np.float32), lower, upper)
    for attempt in range(64):
        distance = lp_distance(x, out, norm)
        outside = distance >= epsilon
        if not outside.any():
            break
        shrink = (epsilon / np.maximum(distance[outside], 1e-300)) * (1.0 - 2.0 ** (-24 + attempt))
        base = x[outside].astype(np.float64)
        pulled = base + (out[outside].astype(np.float64) - base) * shrink.reshape(-1, *([1] * (x.ndim - 1)))
        out[outside] = np.clip(pulled.astype(np.float32), lower, upper)
    return out


class Judge(Protocol):
    """What decides a prediction: a `Referee` over one file, or a `VoteReferee` counting votes."""

    def logits(self, x: np.ndarray, batch_size: int = ...) -> np.ndarray: ...


def confirm_counterexamples(
    referee: Judge,
    x: np.ndarray,
    x_adv: np.ndarray,
    y: np.ndarray,
    epsilon: float,
    norm: str,
    lower: np.ndarray,
    upper: np.ndarray,
) -> Confirmation:
    """Which candidates are real counterexamples of the ONNX file (not just of the torch module):
    strictly inside the open ball of the property, inside the domain, misclassified by onnxruntime.
    `x_adv` is first pulled into the ball (see `pull_into_ball`); the returned logits are at that point."""
    x_adv = pull_into_ball(x, x_adv, epsilon, norm, lower, upper)
    distance = lp_distance(x, x_adv, norm)
    in_ball = distance < epsilon
    flat = x_adv.reshape(len(x_adv), -1)
    in_domain = np.all((flat >= lower.reshape(-1)) & (flat <= upper.reshape(-1)), axis=1)
    logits = referee.logits(x_adv) if len(x_adv) else np.zeros((0, 0), np.float32)
    wrong = logits.argmax(axis=1) != y if len(x_adv) else np.zeros(0, bool)
    return Confirmation(in_ball & in_domain & wrong, logits, distance, x_adv)
