"""Export a torch model to ONNX and prove the file computes what the model computes.

torch 2.13's default (dynamo) exporter with onnxscript, at a fixed opset, with a dynamic batch axis.
The serialised graph is run by onnxruntime on real samples before it is written: a mismatch above
1e-4 raises, so a wrong file never lands on disk.
"""

from __future__ import annotations

import json
import logging
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
