"""onnxruntime as the referee: the property is about the ONNX file, so the file has the last word.

Clean predictions and every PGD counterexample are re-run here on the original file; a point counts
as a counterexample only if it lies in the ball and the domain and onnxruntime misclassifies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from uverify.errors import ModelError


class Referee:
    """One onnxruntime session over an ONNX classifier, batched (one sample a run for a fixed batch of 1)."""

    def __init__(self, model: str | Path | onnx.ModelProto | bytes) -> None:
        import onnxruntime as ort  # slow to import: only when a check runs

        if isinstance(model, bytes):
            data = model
        elif isinstance(model, onnx.ModelProto):
            data = model.SerializeToString()
        else:
            data = Path(model).read_bytes()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime cannot load the model: {first}") from exc
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.full_shape = [d if isinstance(d, int) else None for d in inp.shape]
        self.fixed_batch = self.full_shape[0] == 1

    def logits(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Outputs as (N, classes)."""
        return self.outputs(x, batch_size).reshape(len(x), -1)

    def outputs(self, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Outputs in the file's own shape, batch first."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        step = 1 if self.fixed_batch else batch_size
        try:
            out = [self.session.run(None, {self.input_name: x[i : i + step]})[0] for i in range(0, len(x), step)]
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"onnxruntime cannot run the model on inputs of shape {list(x.shape)}: {first}") from exc
        return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)


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


def confirm_counterexamples(
    referee: Referee,
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
