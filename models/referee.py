"""onnxruntime as the referee: a property is about the ONNX file, so the file has the last word.

Here because both sides need it without importing each other: `models/` checks every export against
the torch model it came from, and `verifier/` checks every imported module and every counterexample.
`agreement` is the one torch-vs-onnxruntime comparison; each caller applies its own tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from uverify.errors import ModelError, one_line


class Referee:
    """One onnxruntime session over an ONNX classifier, batched (one sample a run for a fixed batch of 1)."""

    def __init__(self, model: str | Path | onnx.ModelProto | bytes) -> None:
        import onnxruntime as ort  # slow to import (0.3 s): only when a file is run

        if isinstance(model, bytes):
            data = model
        elif isinstance(model, onnx.ModelProto):
            data = model.SerializeToString()
        else:
            data = Path(model).read_bytes()
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # one thread that does not spin: the referee runs small batches beside torch (and, on an executor,
        # beside other workers), where onnxruntime's default (a thread per core, spinning after each run)
        # takes cores from them; one thread also gives the same bits on every machine and executor
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types (Fail, InvalidGraph, ...)
            raise ModelError(f"onnxruntime cannot load the model: {one_line(exc)}") from exc
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
            raise ModelError(
                f"onnxruntime cannot run the model on inputs of shape {list(x.shape)}: {one_line(exc)}"
            ) from exc
        return np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class Agreement:
    """How far a torch module's outputs lie from onnxruntime's on the same inputs."""

    max_abs_diff: float  # NaN on one side only counts as infinitely far, NaN on both as equal
    scale: float  # max |onnxruntime output|: a relative tolerance multiplies by max(1, scale)
    torch_shape: tuple[int, ...]
    onnx_shape: tuple[int, ...]

    @property
    def same_shape(self) -> bool:
        return self.torch_shape == self.onnx_shape

    def within(self, atol: float, *, relative: bool) -> bool:
        tolerance = atol * max(1.0, self.scale) if relative else atol
        return self.same_shape and self.max_abs_diff <= tolerance


@torch.no_grad()
def agreement(module: nn.Module, model: Any, x: np.ndarray) -> Agreement:
    """Run `module` (in eval mode) and onnxruntime on the batch `x`; `model` is anything `Referee` takes,
    or a `Referee` already open on the file (its session is used, none is created)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    expected = (model if isinstance(model, Referee) else Referee(model)).outputs(x)
    tensors = [*module.parameters(), *module.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")
    got = module.eval()(torch.from_numpy(x).to(device)).detach().cpu().numpy()
    if got.shape != expected.shape:
        diff = float("inf")
    else:
        gap = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        gap = np.where(np.isnan(got) & np.isnan(expected), 0.0, gap)
        diff = float(np.nan_to_num(gap, nan=np.inf).max(initial=0.0))
    scale = float(np.abs(expected).max(initial=0.0)) if expected.size else 0.0
    return Agreement(diff, scale, tuple(got.shape), tuple(expected.shape))


__all__ = ["Agreement", "Referee", "agreement"]
