"""The network of a VNN-LIB instance: the ONNX file imported for bounds and attacks, onnxruntime for
the last word, both sized against the query.

A property is about the file, so the imported torch module is cross-checked against onnxruntime on
points of the query's own input boxes (their centres, corners and random points) before anything is
bounded: a module that disagrees there would certify the wrong network.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from uverify.errors import ModelError
from uverify.models.referee import Referee
from uverify.verifier.onnx_import import ImportedModel, load_onnx, onnx_to_torch, validate_against_onnxruntime
from uverify.vnn.reader import Query, VnnlibError

__all__ = ["FlatModule", "Network", "load_network"]

PathLike = str | os.PathLike[str]
CHECK_POINTS = 16  # random points per box in the import cross-check, beside the centre and two corners


class FlatModule(nn.Module):
    """The imported module on flat inputs and outputs: (N, inputs) → (N, outputs), the property's view."""

    def __init__(self, module: nn.Module, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.module = module
        self.input_shape = input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.module(x.reshape(-1, *self.input_shape)), 1)


@dataclass(frozen=True)
class Network:
    """An ONNX file ready to check: its torch import and an onnxruntime session over the same file."""

    path: Path
    model: onnx.ModelProto
    imported: ImportedModel
    referee: Referee

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.imported.input_shape

    @property
    def num_inputs(self) -> int:
        return math.prod(self.imported.input_shape)

    @property
    def num_outputs(self) -> int:
        return math.prod(self.imported.output_shape)

    def flat_module(self) -> FlatModule:
        return FlatModule(self.imported.module, self.input_shape)

    def run(self, x: np.ndarray) -> np.ndarray:
        """onnxruntime's outputs (N, outputs) at flat float32 inputs (N, inputs): the referee's verdict."""
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), *self.input_shape)
        return self.referee.outputs(x).reshape(len(x), -1)


def load_network(path: PathLike, query: Query | None = None, *, seed: int = 0) -> Network:
    """Load, import and cross-check an ONNX network; with a query, check it fits and cross-check on its boxes.

    Raises ModelError for a file that cannot be used, VnnlibError when it does not fit the query."""
    file = Path(path)
    model = load_onnx(file)
    imported = onnx_to_torch(model)
    referee = Referee(model)
    network = Network(file, model, imported, referee)
    if query is not None:
        _check_fits(network, query)
        points = _check_points(query, seed)
    else:
        points = np.random.default_rng(seed).uniform(0.0, 1.0, (CHECK_POINTS, network.num_inputs))
    validate_against_onnxruntime(model, imported.module, points.reshape(len(points), *imported.input_shape))
    return network


def _check_fits(network: Network, query: Query) -> None:
    if query.num_inputs != network.num_inputs:
        raise VnnlibError(
            f"{query.source} has {query.num_inputs} inputs but {network.path.name} takes "
            f"{network.num_inputs} (shape {list(network.input_shape)})"
        )
    if query.num_outputs != network.num_outputs:
        raise VnnlibError(
            f"{query.source} has {query.num_outputs} outputs but {network.path.name} gives "
            f"{network.num_outputs} (shape {list(network.imported.output_shape)})"
        )
    if network.imported.output_shape == ():
        raise ModelError(f"{network.path.name} has no output values per sample")


def _check_points(query: Query, seed: int) -> np.ndarray:
    """Centres, both corners and random points of every box: where the verdict will be decided."""
    rng = np.random.default_rng(seed)
    points = []
    for prop in query.properties:
        for box in prop.boxes:
            points += [(box.lower + box.upper) / 2, box.lower, box.upper]
            points += list(rng.uniform(box.lower, box.upper, (CHECK_POINTS, len(box.lower))))
    return np.asarray(points[: 64 + CHECK_POINTS], dtype=np.float32)
