"""Export a torch model to ONNX and prove the file computes what the model computes.

torch 2.13's default (dynamo) exporter with onnxscript, at a fixed opset, with a dynamic batch axis.
The serialised graph is run by onnxruntime on real samples before it is written: a mismatch above
1e-4 raises, so a wrong file never lands on disk.

Each `torch.onnx.export` rebuilds torch's exporter registry and traces the model (seconds), yet a study
or a SISA run exports the same architecture again and again with other weights. So the graph of an
architecture is exported once per process and kept as a template; a later model of the same structure
gets the template with its own weights as the initializers. That is done only where the template's
initializers are the model's state-dict tensors by name and shape (the dynamo exporter names them so)
or constants no weight can have made (integer shapes, scalars), so no weight-derived constant can go
stale; the file is byte for byte what a fresh export
writes (tested), and onnxruntime still checks every file against torch before it is written.
"""

from __future__ import annotations

import enum
import json
import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from uverify.errors import ExportError, ModelError, one_line
from uverify.files import atomic_write_bytes
from uverify.models.referee import agreement

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MAX_ABS_DIFF = 1e-4


@dataclass(frozen=True)
class ExportReport:
    path: Path
    max_abs_diff: float
    ops: list[str]
    opset: int = OPSET
    metadata: dict[str, str] = field(default_factory=dict)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    samples: np.ndarray,
    metadata: dict[str, Any] | None = None,
) -> ExportReport:
    """Write `model` to `path` as ONNX, after onnxruntime reproduced its logits on `samples`.

    `metadata` values that are not strings are stored as JSON in the file's metadata_props.
    """
    if len(samples) < 2:
        raise ExportError("export needs at least 2 samples (a batch of 1 would fix the batch axis)")
    model = model.eval().float()
    example = torch.from_numpy(np.ascontiguousarray(samples[: min(len(samples), 8)]))
    structure = _structure_key(model, example)
    template = _TEMPLATES.get(structure)
    proto = _with_weights(template, model) if template is not None else _traced(model, example, structure)
    props = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()

    check = agreement(model, data, samples)
    diff = check.max_abs_diff
    if not check.within(MAX_ABS_DIFF, relative=False):  # logits of our own models are O(10): absolute suffices
        raise ExportError(
            f"ONNX export of {type(model).__name__} disagrees with torch: max |logit diff| {diff:.3g} > {MAX_ABS_DIFF}"
        )
    atomic_write_bytes(path, data)
    return ExportReport(Path(path), diff, sorted({n.op_type for n in proto.graph.node}), OPSET, props)


_TEMPLATES: dict[tuple[Any, ...], onnx.ModelProto] = {}  # structure key -> exported graph, this process
_MAX_TEMPLATES = 32


def _structure_key(model: nn.Module, example: torch.Tensor) -> tuple[Any, ...]:
    """What fixes the exported graph: every submodule's type and plain attributes (hyper-parameters,
    an ensemble's aggregation), every state-dict entry's name, shape and dtype, the per-sample input shape."""
    plain = (bool, int, float, str, tuple, enum.Enum, type(None))
    modules = tuple(
        (name, type(m).__module__, type(m).__qualname__, tuple(sorted(
            (k, repr(v)) for k, v in vars(m).items() if not k.startswith("_") and isinstance(v, plain)
        )))
        for name, m in model.named_modules()
    )  # fmt: skip
    tensors = tuple((name, tuple(t.shape), str(t.dtype)) for name, t in model.state_dict().items())
    return modules, tensors, tuple(example.shape[1:]), str(example.dtype), OPSET


def _traced(model: nn.Module, example: torch.Tensor, key: tuple[Any, ...]) -> onnx.ModelProto:
    """A fresh export through torch's dynamo exporter; kept as a template when its weights are swappable."""
    with _quiet_exporter():
        try:
            program = torch.onnx.export(
                model,
                (example,),
                dynamo=True,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                verbose=False,
            )
        except Exception as exc:  # the exporter raises many types; all mean "cannot export"
            raise ExportError(f"ONNX export failed: {one_line(exc)}") from exc
    if program is None:
        raise ExportError("ONNX export produced no program")
    proto = program.model_proto
    for node in proto.graph.node:
        # the exporter's debugging notes (stack traces with absolute source paths and line numbers): they
        # would make the file's bytes depend on where uverify is installed, and leak local paths
        del node.metadata_props[:]
    if _swappable(proto, model.state_dict()):
        if len(_TEMPLATES) >= _MAX_TEMPLATES:
            _TEMPLATES.pop(next(iter(_TEMPLATES)))
        template = onnx.ModelProto()
        template.CopyFrom(proto)
        _TEMPLATES[key] = template
    return proto


def _swappable(proto: onnx.ModelProto, state: dict[str, torch.Tensor]) -> bool:
    """Whether every initializer is a state-dict tensor of the same name and shape, or a constant that no
    weight can have made: an integer tensor (shapes, axes) or a scalar (an ensemble's 1/S)."""
    integer = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
    for i in proto.graph.initializer:
        if i.name in state:
            if tuple(i.dims) != tuple(state[i.name].shape):
                return False
        elif not (i.data_type in integer or math.prod(i.dims) <= 1):
            return False
    return True


def _with_weights(template: onnx.ModelProto, model: nn.Module) -> onnx.ModelProto:
    """The template graph carrying `model`'s tensors, each in the encoding the exporter gave its own."""
    proto = onnx.ModelProto()
    proto.CopyFrom(template)
    state = model.state_dict()
    for initializer in proto.graph.initializer:
        if initializer.name not in state:
            continue  # a constant of the graph (see `_swappable`)
        array = state[initializer.name].detach().cpu().numpy()
        replacement = onnx.numpy_helper.from_array(np.ascontiguousarray(array), initializer.name)
        if not initializer.HasField("raw_data"):
            replacement = onnx.helper.make_tensor(
                initializer.name, initializer.data_type, list(initializer.dims), array.ravel().tolist()
            )
        initializer.CopyFrom(replacement)
    return proto


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata_props of an ONNX file, JSON values decoded."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable ONNX file ({type(exc).__name__})") from None
    out: dict[str, Any] = {}
    for prop in proto.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            out[prop.key] = prop.value
    return out


@contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The dynamo exporter logs warnings about torchvision ops it cannot register: noise to a user."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
