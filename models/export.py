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

A template is also stored in the cache folder (`files.cache_dir()/onnx/`), named by a sha256 of the
structure, the versions of torch, onnx and onnxscript and the source of every non-torch module class
in the model, so a new process (a Dask or pool worker, the next `uverify` command) skips the exporter
too: its first export of an architecture was ~1.2 s of exporter imports and tracing. A stored template
that cannot be read, does not fit the model, or whose file onnxruntime does not find equal to torch is
traced afresh and replaced, never trusted.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import importlib.metadata
import inspect
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

from uverify.errors import ExportError, ModelError, UverifyError, one_line
from uverify.files import atomic_write_bytes, cache_dir
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
    props = {key: value if isinstance(value, str) else json.dumps(value) for key, value in (metadata or {}).items()}
    template = _TEMPLATES.get(structure)
    if template is not None:  # traced in this process
        proto = _with_weights(template, model.state_dict())
        data, diff = _finished(proto, props, model, samples)
    elif (stored := _from_stored(structure, model, props, samples)) is not None:
        proto, data, diff = stored
    else:
        proto = _traced(model, example, structure)
        data, diff = _finished(proto, props, model, samples)
    atomic_write_bytes(path, data)
    return ExportReport(Path(path), diff, sorted({n.op_type for n in proto.graph.node}), OPSET, props)


def _finished(
    proto: onnx.ModelProto, props: dict[str, str], model: nn.Module, samples: np.ndarray
) -> tuple[bytes, float]:
    """The file's bytes and onnxruntime's max |logit diff| to torch, after both checks passed."""
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    check = agreement(model, data, samples)
    diff = check.max_abs_diff
    if not check.within(MAX_ABS_DIFF, relative=False):  # logits of our own models are O(10): absolute suffices
        raise ExportError(
            f"ONNX export of {type(model).__name__} disagrees with torch: max |logit diff| {diff:.3g} > {MAX_ABS_DIFF}"
        )
    return data, diff


def _from_stored(
    key: tuple[Any, ...], model: nn.Module, props: dict[str, str], samples: np.ndarray
) -> tuple[onnx.ModelProto, bytes, float] | None:
    """The model's file from the template another process stored, when that file passes both checks
    (then the template is kept for this process too); None when there is none or it does not compute
    this model (it is then traced afresh, and the stored file replaced)."""
    template = _stored_template(key, model)
    if template is None:
        return None
    try:
        proto = _with_weights(template, model.state_dict())
        data, diff = _finished(proto, props, model, samples)
    except Exception:  # a damaged or foreign graph, whatever the checker or onnxruntime raise: not trusted
        return None
    _remember(key, template)
    return proto, data, diff


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
        template = onnx.ModelProto()
        template.CopyFrom(proto)
        _remember(key, template)
        _store_template(key, model, template)
    return proto


def _remember(key: tuple[Any, ...], template: onnx.ModelProto) -> None:
    if len(_TEMPLATES) >= _MAX_TEMPLATES:
        _TEMPLATES.pop(next(iter(_TEMPLATES)))
    _TEMPLATES[key] = template


TEMPLATE_FORMAT = 1  # bump when what a stored template holds changes: older files are then ignored


def _template_folder() -> Path:
    return cache_dir() / "onnx"


def _template_file(key: tuple[Any, ...], model: nn.Module) -> Path | None:
    """Where the template of `key` is stored: named by everything that fixes the exported graph (the
    structure, the exporter's versions, our module classes' source); None where a class has no source."""
    sources = []
    for cls in sorted({type(m) for m in model.modules()}, key=lambda c: (c.__module__, c.__qualname__)):
        if cls.__module__.split(".")[0] == "torch":
            continue  # fixed by torch's version
        try:
            sources.append(inspect.getsource(cls))
        except (OSError, TypeError):
            return None
    versions = [importlib.metadata.version(name) for name in ("torch", "onnx", "onnxscript")]
    digest = hashlib.sha256(repr((TEMPLATE_FORMAT, key, versions, sources)).encode("utf-8")).hexdigest()
    return _template_folder() / f"{digest}.onnx"


def _stored_template(key: tuple[Any, ...], model: nn.Module) -> onnx.ModelProto | None:
    """The template another process stored for this structure, when it reads and fits the model (the
    file it gives is still checked against torch before it counts)."""
    path = _template_file(key, model)
    if path is None or not path.is_file():
        return None
    try:
        template = onnx.load_from_string(path.read_bytes())
    except Exception:  # a damaged file (protobuf raises its own types): traced afresh and replaced
        return None
    return template if _swappable(template, model.state_dict()) else None


def _store_template(key: tuple[Any, ...], model: nn.Module, template: onnx.ModelProto) -> None:
    path = _template_file(key, model)
    if path is not None:
        # stored with zeros for weights: the cache holds no model's parameters (a deleted sample's
        # trace among them), only the graph
        zeros = {name: torch.zeros_like(tensor) for name, tensor in model.state_dict().items()}
        with contextlib.suppress(UverifyError):  # an unwritable cache folder only costs the speed
            atomic_write_bytes(path, _with_weights(template, zeros).SerializeToString())


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


def _with_weights(template: onnx.ModelProto, state: dict[str, torch.Tensor]) -> onnx.ModelProto:
    """The template graph carrying the state dict's tensors, each in the encoding the exporter gave its own."""
    proto = onnx.ModelProto()
    proto.CopyFrom(template)
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
