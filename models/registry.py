"""Architectures, by the name a spec's `model.arch` gives.

Only layers that auto_LiRPA 0.3 bounds and that our ONNX importer reads back: Linear, Conv2d, ReLU,
Flatten. No BatchNorm (it would make Amnesiac's recorded updates depend on running statistics) and no
Dropout (a verified model must be the model that runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from uverify.errors import ModelError
from uverify.specs.schema import CnnSpec, MlpSpec, ModelSpec


def _mlp(spec: MlpSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    width = int(np.prod(input_shape))
    layers: list[nn.Module] = [nn.Flatten()]
    for hidden in spec.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _cnn(spec: CnnSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ModelError(f"model.arch cnn needs image input (channels, height, width); the data gives {input_shape}")
    channels, height, width = input_shape
    layers: list[nn.Module] = []
    pad = spec.kernel_size // 2  # 'same'-style padding: a feature map never shrinks below 1x1
    for out in spec.channels:
        layers += [nn.Conv2d(channels, out, spec.kernel_size, stride=spec.stride, padding=pad), nn.ReLU()]
        channels = out
        height = (height + 2 * pad - spec.kernel_size) // spec.stride + 1
        width = (width + 2 * pad - spec.kernel_size) // spec.stride + 1
    layers.append(nn.Flatten())
    features = channels * height * width
    for hidden in spec.hidden:
        layers += [nn.Linear(features, hidden), nn.ReLU()]
        features = hidden
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


_ARCHS: dict[str, Callable[[Any, tuple[int, ...], int], nn.Module]] = {"mlp": _mlp, "cnn": _cnn}


def registered() -> list[str]:
    return list(_ARCHS)


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int, seed: int) -> nn.Module:
    """A freshly initialised model; the seed fixes the initial weights."""
    if spec.arch not in _ARCHS:
        raise ModelError(f"model.arch {spec.arch!r} is not registered (known: {', '.join(_ARCHS)})")
    torch.manual_seed(seed)
    return _ARCHS[spec.arch](spec, tuple(input_shape), num_classes).float()


@torch.no_grad()
def predict_logits(model: nn.Module, X: np.ndarray, batch_size: int = 1024) -> np.ndarray:
    """Logits for a float32 array, in eval mode, batched to bound memory."""
    was_training = model.training
    model.eval()
    try:
        out = [model(torch.from_numpy(X[i : i + batch_size])) for i in range(0, len(X), batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
    finally:
        model.train(was_training)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float | None:
    """The share of rows whose argmax is the label; None for no rows (an empty split has no accuracy)."""
    return float((logits.argmax(1) == y).mean()) if len(y) else None
