"""ONNX graph → torch module, for the ops that bound propagation supports.

Why our own converter: onnx2torch and onnx2pytorch import torchvision, which does not import beside
torch 2.13 CPU. The module we build is traced by auto_LiRPA, so every node becomes plain torch ops
(nn.Linear, nn.Conv2d, reshape with a dynamic batch, ...), every constant is a buffer, and nothing
branches on tensor values. onnxruntime stays the referee: `import_onnx` runs both on the same points
and fails loudly when they disagree.

Batch convention: every tensor that depends on the model input is batch-first, and the module maps
(N, *input_shape) to (N, *output_shape), equal to the ONNX graph applied to each sample. A file with
a fixed batch of 1 (as in VNN-COMP: [1, 784, 1], [1, 1, 1, 5]) is read as a per-sample graph, so a
batch of 1 baked into a Reshape or a constant never limits the batch the module runs.
"""

from __future__ import annotations

import gzip
import math
import operator
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from uverify.errors import ModelError, one_line
from uverify.models.referee import Referee, agreement

__all__ = [
    "CONVERTERS",
    "ImportedModel",
    "NodeContext",
    "OnnxGraphModule",
    "import_onnx",
    "load_onnx",
    "onnx_to_torch",
    "supported_ops",
    "validate_against_onnxruntime",
]

PathLike = str | os.PathLike[str]

# Samples in the example batch pushed through each node while converting: it gives every converter
# the per-sample shapes of its inputs and proves that each node keeps the batch dimension first.
_EXAMPLE_BATCH = 2
# Ops never folded into constants even when all their inputs are known: their output is random.
_NONDETERMINISTIC = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}
)


class _Value(NamedTuple):
    """A graph value: a constant known at import time, or a batched tensor with an example."""

    name: str
    const: np.ndarray | None
    example: torch.Tensor | None

    @property
    def batched(self) -> bool:
        return self.const is None


@dataclass(frozen=True)
class NodeContext:
    """One ONNX node with its attributes and what is known about each input.

    `inputs[i]` is None for an omitted optional input. The module a converter returns is called with
    the batched inputs only, in input order; constant inputs must be baked into it as buffers.
    """

    node: onnx.NodeProto
    attrs: dict[str, Any]
    inputs: tuple[_Value | None, ...]
    opset: int
    fixed_batch: bool

    @property
    def label(self) -> str:
        return _node_label(self.node)

    def fail(self, reason: str) -> ModelError:
        return ModelError(f"cannot import {self.node.op_type} node {self.label}: {reason}")

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def input(self, i: int) -> _Value | None:
        return self.inputs[i] if i < len(self.inputs) else None

    def const(self, i: int, what: str) -> np.ndarray:
        """Input `i`, which must be known at import time (a weight, a shape, ...)."""
        value = self.input(i)
        if value is None or value.const is None:
            raise self.fail(f"the {what} (input {i}) must be a constant, not computed from the input")
        return value.const

    def optional_const(self, i: int, what: str) -> np.ndarray | None:
        value = self.input(i)
        return None if value is None else self.const(i, what)

    def batched_inputs(self) -> list[_Value]:
        return [v for v in self.inputs if v is not None and v.batched]

    def data(self) -> torch.Tensor:
        """The example of input 0 for ops whose only input computed from the model input is input 0."""
        batched = self.batched_inputs()
        first = self.input(0)
        if first is None or first.example is None or len(batched) != 1:
            raise self.fail("only its first input may depend on the model input")
        return first.example


def _node_label(node: onnx.NodeProto) -> str:
    return repr(node.name) if node.name else f"(unnamed, output {node.output[0]!r})"


Converter = Callable[[NodeContext], nn.Module]
CONVERTERS: dict[str, Converter] = {}


def _register(*op_types: str) -> Callable[[Converter], Converter]:
    def add(fn: Converter) -> Converter:
        for op_type in op_types:
            CONVERTERS[op_type] = fn
        return fn

    return add


def supported_ops() -> list[str]:
    """The ONNX op types the importer converts (sorted); any other op is a ModelError.

    Constant is listed because it, like any node whose inputs are all constants, is folded at
    import time into the buffers of the nodes that use it; Shape because the shape of a value computed
    from the input is folded too (`_fold_shape`), so Shape → Gather → … → Reshape chains become constants.
    """
    return sorted({*CONVERTERS, "Constant", "Shape"})


# --------------------------------------------------------------------------------------------------
# Node modules: plain torch ops only, so that tracing (auto_LiRPA, torch.jit) sees familiar nodes
# --------------------------------------------------------------------------------------------------


def _buffer(array: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.array(array, dtype=np.float32))


class BinaryTensors(nn.Module):
    """a ∘ b for two batched tensors of the same rank."""

    def __init__(self, fn: Callable[[Any, Any], Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fn(a, b)


class BinaryConst(nn.Module):
    """x ∘ c or c ∘ x with the constant c a buffer (broadcast per sample)."""

    const: torch.Tensor

    def __init__(self, fn: Callable[[Any, Any], Any], const: np.ndarray, const_first: bool) -> None:
        super().__init__()
        self.fn = fn
        self.const_first = const_first
        self.register_buffer("const", _buffer(const))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.const_first:
            return self.fn(self.const, x)
        return self.fn(x, self.const)


class ConstOverTensor(nn.Module):
    """c / x as c · reciprocal(x): bounders relax the reciprocal, they cannot divide by a bound."""

    const: torch.Tensor

    def __init__(self, const: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("const", _buffer(const))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.const * torch.reciprocal(x)


class Affine(nn.Module):
    """x · scale + shift per channel: inference BatchNormalization folded to one linear map."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, scale: np.ndarray, shift: np.ndarray) -> None:
        super().__init__()
        self.register_buffer("scale", _buffer(scale))
        self.register_buffer("shift", _buffer(shift))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class MatMulConst(nn.Module):
    """x @ c or c @ x for a constant c that is not a plain 2-D weight on the right."""

    const: torch.Tensor

    def __init__(self, const: np.ndarray, const_first: bool) -> None:
        super().__init__()
        self.const_first = const_first
        self.register_buffer("const", _buffer(const))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.const_first:
            return torch.matmul(self.const, x)
        return torch.matmul(x, self.const)


class Flatten(nn.Module):
    """(N, ...) → (N, prod(...)): the batch dimension stays dynamic."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x, 1)


class Reshape(nn.Module):
    """(N, ...) → (N, *shape) with the batch inferred (-1), never the file's baked batch size."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(d) for d in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.shape)

    def extra_repr(self) -> str:
        return f"shape=(-1, {', '.join(map(str, self.shape))})"


class Permute(nn.Module):
    """Transpose that leaves the batch dimension in place."""

    def __init__(self, perm: Sequence[int]) -> None:
        super().__init__()
        self.perm = tuple(int(p) for p in perm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.perm)


class Concat(nn.Module):
    def __init__(self, axis: int) -> None:
        super().__init__()
        self.axis = axis

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)


class Pad(nn.Module):
    """Constant padding; `pads` in torch's order (last dimension first)."""

    def __init__(self, pads: Sequence[int], value: float = 0.0) -> None:
        super().__init__()
        self.pads = tuple(int(p) for p in pads)
        self.value = float(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pad(x, self.pads, mode="constant", value=self.value)

    def extra_repr(self) -> str:
        return f"pads={self.pads}, value={self.value}"


# --------------------------------------------------------------------------------------------------
# Converters, one per op type
# --------------------------------------------------------------------------------------------------


@_register("Identity", "Dropout")
def _identity(ctx: NodeContext) -> nn.Module:
    if ctx.node.op_type == "Dropout":
        training = ctx.optional_const(2, "training_mode")
        if training is not None and bool(np.asarray(training).item()):
            raise ctx.fail("training_mode=True: only inference Dropout (the identity) is supported")
    ctx.data()
    return nn.Identity()


@_register("Relu")
def _relu(ctx: NodeContext) -> nn.Module:
    ctx.data()
    return nn.ReLU()


@_register("Sigmoid")
def _sigmoid(ctx: NodeContext) -> nn.Module:
    ctx.data()
    return nn.Sigmoid()


@_register("Tanh")
def _tanh(ctx: NodeContext) -> nn.Module:
    ctx.data()
    return nn.Tanh()


@_register("Softmax")
def _softmax(ctx: NodeContext) -> nn.Module:
    rank = ctx.data().ndim
    axis = _axis(ctx, ctx.attr("axis", -1 if ctx.opset >= 13 else 1), rank)
    if axis == 0:
        raise ctx.fail("a softmax over the batch axis makes each sample's output depend on the other samples")
    if ctx.opset < 13 and axis != rank - 1:
        raise ctx.fail(f"opset {ctx.opset} Softmax over the flattened axes from {axis} is not supported")
    if rank == 2 and axis == 1:
        return PairwiseSoftmax(int(ctx.data().shape[1]))
    return nn.Softmax(dim=axis)


class PairwiseSoftmax(nn.Module):
    """softmax over the classes of (N, C) logits, written as p_i = 1 / sum_j exp(z_j - z_i).

    auto_LiRPA 0.3 bounds its own softmax only with IBP (CROWN stops at the max it subtracts for
    stability); this form is the same function, stable without the max (a difference that overflows
    gives exp = inf and p_i = 0, the right limit), and built from ops CROWN bounds: a constant Linear
    for the pairwise differences, Exp, ReduceSum and Reciprocal. It lets CROWN bound SISA's
    mean_softmax ensembles."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        weight = torch.zeros(classes * classes, classes)
        for i in range(classes):
            for j in range(classes):
                weight[i * classes + j, j] += 1.0
                weight[i * classes + j, i] -= 1.0
        self.differences = nn.Linear(classes, classes * classes, bias=False)
        self.differences.weight.data = weight
        self.differences.requires_grad_(False)
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pairwise = torch.exp(self.differences(x)).view(-1, self.classes, self.classes)
        return torch.reciprocal(pairwise.sum(dim=-1))


_BINARY_OPS: dict[str, Callable[[Any, Any], Any]] = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": operator.truediv,
}


def _check_const_rank(ctx: NodeContext, const: np.ndarray, rank: int) -> None:
    """A constant broadcasts per sample against a batched tensor of `rank` unless it is longer, or as
    long with a first axis above 1 (that would pair its rows with the samples)."""
    if const.ndim > rank or (const.ndim == rank and const.shape[0] != 1):
        raise ctx.fail(
            f"a constant of shape {list(const.shape)} would broadcast over the batch dimension of a rank-{rank} tensor"
        )


def _elementwise_const(ctx: NodeContext, const: np.ndarray, rank: int) -> np.ndarray:
    """The constant of an elementwise op, at the tensor's full rank with a batch axis of 1.

    Same values under torch broadcasting, but auto_LiRPA 0.3's backward pass through Add/Sub/Mul/Div
    only reduces broadcast axes correctly when both operands have the same rank.
    """
    _check_const_rank(ctx, const, rank)
    return const.reshape((1,) * (rank - const.ndim) + const.shape)


def _matrix_const(ctx: NodeContext, const: np.ndarray, rank: int) -> np.ndarray:
    """A MatMul constant with its leading axes of 1 dropped: a plain weight matrix where possible.

    Only the axes before the last two broadcast; the constant's must not reach the batch axis.
    """
    stack, tensor_stack = max(const.ndim - 2, 0), rank - 2
    if stack > tensor_stack or (stack == tensor_stack > 0 and const.shape[0] != 1):
        raise ctx.fail(
            f"a constant of shape {list(const.shape)} would broadcast over the batch dimension of a rank-{rank} tensor"
        )
    while const.ndim > 2 and const.shape[0] == 1:
        const = const[0]
    return const


@_register(*_BINARY_OPS)
def _binary(ctx: NodeContext) -> nn.Module:
    op = ctx.node.op_type
    fn = _BINARY_OPS[op]
    a, b = ctx.input(0), ctx.input(1)
    if a is None or b is None:
        raise ctx.fail("needs two inputs")
    if a.example is not None and b.example is not None:
        if a.example.ndim != b.example.ndim:
            raise ctx.fail(
                f"inputs of rank {a.example.ndim} and {b.example.ndim} would broadcast one batch "
                "dimension over another axis"
            )
        return BinaryTensors(fn)
    const_first = a.const is not None
    const = a.const if a.const is not None else b.const
    x = b.example if const_first else a.example
    assert const is not None and x is not None
    const = _elementwise_const(ctx, const, x.ndim)
    if op == "Div" and const_first:
        return ConstOverTensor(const)
    return BinaryConst(fn, const, const_first)


def _linear(weight: np.ndarray, bias: np.ndarray | None) -> nn.Linear:
    """nn.Linear computing x @ weight.T + bias: the layer every bounder knows best.

    Always with a bias (zeros if none): a bias-free nn.Linear traces to Transpose + MatMul, which
    auto_LiRPA 0.3 bounds as a generic MatMul whose non-contiguous A matrices break the pooling
    layers before it; with a bias it traces to Gemm, auto_LiRPA's BoundLinear.
    """
    out_features, in_features = weight.shape
    layer = nn.Linear(int(in_features), int(out_features))
    with torch.no_grad():
        layer.weight.copy_(_buffer(weight))
        layer.bias.copy_(_buffer(np.zeros(out_features) if bias is None else bias))
    return layer


@_register("Gemm")
def _gemm(ctx: NodeContext) -> nn.Module:
    a = ctx.input(0)
    if a is None or a.example is None:
        raise ctx.fail("input A must depend on the model input (a batch of rows)")
    if a.example.ndim != 2:
        raise ctx.fail(f"input A has rank {a.example.ndim}, Gemm needs rank 2")
    if ctx.attr("transA", 0):
        raise ctx.fail("transA=1 on the batched input A would move the batch off the rows")
    b = ctx.const(1, "weight B").astype(np.float64)
    if b.ndim != 2:
        raise ctx.fail(f"weight B has rank {b.ndim}, Gemm needs rank 2")
    weight = b.T if not ctx.attr("transB", 0) else b  # (out, in), as nn.Linear stores it
    if weight.shape[1] != a.example.shape[1]:
        raise ctx.fail(f"A has {a.example.shape[1]} columns but B has {weight.shape[1]} rows")
    alpha = float(ctx.attr("alpha", 1.0))
    beta = float(ctx.attr("beta", 1.0))
    c = ctx.optional_const(2, "bias C")
    bias = None
    if c is not None:
        c = c.astype(np.float64)
        if c.ndim == 2:
            if c.shape[0] != 1:
                raise ctx.fail(f"bias C of shape {list(c.shape)} has one row per sample")
            c = c[0]
        try:
            bias = beta * np.broadcast_to(c, (weight.shape[0],))
        except ValueError as exc:
            raise ctx.fail(f"bias C of shape {list(c.shape)} does not broadcast") from exc
    return _linear(alpha * weight, bias)


@_register("MatMul")
def _matmul(ctx: NodeContext) -> nn.Module:
    a, b = ctx.input(0), ctx.input(1)
    if a is None or b is None:
        raise ctx.fail("needs two inputs")
    if a.example is not None and b.example is not None:
        if a.example.ndim < 3 or b.example.ndim != a.example.ndim:
            raise ctx.fail("a product of two batched tensors needs equal ranks of at least 3")
        return BinaryTensors(torch.matmul)
    if a.example is not None and b.const is not None:
        x, w = a.example, b.const
        if x.ndim < 2:
            raise ctx.fail("the batched input has no matrix dimensions")
        w = _matrix_const(ctx, w, x.ndim)
        if w.ndim == 2:
            return _linear(w.T, None)
        return MatMulConst(w, const_first=False)
    assert a.const is not None and b.example is not None
    if b.example.ndim < 3:
        raise ctx.fail("a constant on the left needs a batched right operand of rank >= 3")
    return MatMulConst(_matrix_const(ctx, a.const, b.example.ndim), const_first=True)


def _ints(value: Any, n: int, default: int) -> list[int]:
    return [default] * n if value is None else [int(v) for v in value]


def _spatial_pads(
    ctx: NodeContext, sizes: Sequence[int], kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int]
) -> tuple[list[int], list[int]]:
    """(begins, ends) per spatial axis from `pads` or `auto_pad` (SAME_* needs the known input size)."""
    n = len(kernel)
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if auto_pad in ("NOTSET", ""):
        pads = _ints(ctx.attr("pads"), 2 * n, 0)
        if len(pads) != 2 * n or min(pads) < 0:
            raise ctx.fail(f"pads {pads} do not fit {n} spatial axes")
        return pads[:n], pads[n:]
    if auto_pad == "VALID":
        return [0] * n, [0] * n
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begins.append(begin)
            ends.append(total - begin)
        return begins, ends
    raise ctx.fail(f"auto_pad={auto_pad!r} is not supported")


def _torch_pads(begins: Sequence[int], ends: Sequence[int]) -> list[int]:
    """ONNX per-axis (begins, ends) → torch.nn.functional.pad's order, last axis first."""
    pads: list[int] = []
    for begin, end in zip(reversed(begins), reversed(ends), strict=True):
        pads += [begin, end]
    return pads


# By number of spatial axes. Typed Any: the 1-3 D classes take int-or-tuple arguments.
_CONV: dict[int, Any] = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_AVG_POOL: dict[int, Any] = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_MAX_POOL: dict[int, Any] = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}


@_register("Conv")
def _conv(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    weight = ctx.const(1, "weight W")
    bias = ctx.optional_const(2, "bias B")
    n = weight.ndim - 2
    if n not in _CONV or x.ndim != n + 2:
        raise ctx.fail(f"a rank-{x.ndim} input with a rank-{weight.ndim} weight is not a 1-3 D convolution")
    kernel = list(weight.shape[2:])
    if ctx.attr("kernel_shape") is not None and list(ctx.attr("kernel_shape")) != kernel:
        raise ctx.fail(f"kernel_shape {list(ctx.attr('kernel_shape'))} differs from the weight's {kernel}")
    strides = _ints(ctx.attr("strides"), n, 1)
    dilations = _ints(ctx.attr("dilations"), n, 1)
    group = int(ctx.attr("group", 1))
    begins, ends = _spatial_pads(ctx, list(x.shape[2:]), kernel, strides, dilations)
    symmetric = begins == ends
    conv = _CONV[n](
        in_channels=int(weight.shape[1]) * group,
        out_channels=int(weight.shape[0]),
        kernel_size=tuple(kernel),
        stride=tuple(strides),
        padding=tuple(begins) if symmetric else 0,
        dilation=tuple(dilations),
        groups=group,
        bias=bias is not None,
    )
    with torch.no_grad():
        conv.weight.copy_(_buffer(weight))
        if bias is not None:
            assert conv.bias is not None
            conv.bias.copy_(_buffer(bias))
    if symmetric:
        return conv
    # Asymmetric pads (e.g. from SAME_UPPER) have no nn.ConvNd form: pad explicitly first.
    return nn.Sequential(Pad(_torch_pads(begins, ends)), conv)


def _pool_geometry(ctx: NodeContext, x: torch.Tensor) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    kernel = [int(k) for k in ctx.attr("kernel_shape") or []]
    n = len(kernel)
    if n not in _AVG_POOL or x.ndim != n + 2:
        raise ctx.fail(f"kernel_shape {kernel} does not fit a rank-{x.ndim} input")
    strides = _ints(ctx.attr("strides"), n, 1)
    dilations = _ints(ctx.attr("dilations"), n, 1)
    begins, ends = _spatial_pads(ctx, list(x.shape[2:]), kernel, strides, dilations)
    return kernel, strides, dilations, begins, ends


@_register("AveragePool")
def _average_pool(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    kernel, strides, dilations, begins, ends = _pool_geometry(ctx, x)
    if any(d != 1 for d in dilations):
        raise ctx.fail(f"dilations {dilations} are not supported for AveragePool")
    n = len(kernel)
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    count_include_pad = bool(ctx.attr("count_include_pad", 0))
    if begins == ends and all(2 * p <= k for p, k in zip(begins, kernel, strict=True)):
        return _AVG_POOL[n](tuple(kernel), tuple(strides), tuple(begins), ceil_mode, count_include_pad)
    if not count_include_pad:
        raise ctx.fail(f"pads {begins + ends} need explicit padding, which count_include_pad=0 forbids")
    pool = _AVG_POOL[n](tuple(kernel), tuple(strides), 0, ceil_mode, True)
    return nn.Sequential(Pad(_torch_pads(begins, ends)), pool)


@_register("MaxPool")
def _max_pool(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    kernel, strides, dilations, begins, ends = _pool_geometry(ctx, x)
    if begins != ends or any(2 * p > k for p, k in zip(begins, kernel, strict=True)):
        raise ctx.fail(f"pads {begins + ends} are asymmetric or wider than half the kernel")
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    return _MAX_POOL[len(kernel)](tuple(kernel), tuple(strides), tuple(begins), tuple(dilations), ceil_mode=ceil_mode)


@_register("GlobalAveragePool")
def _global_average_pool(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    n = x.ndim - 2
    if n not in _AVG_POOL:
        raise ctx.fail(f"a rank-{x.ndim} input is not a 1-3 D feature map")
    # An average pool over the whole (known) map: a plain linear op for every bounder.
    return _AVG_POOL[n](tuple(int(s) for s in x.shape[2:]))


@_register("Pad")
def _pad(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    mode = ctx.attr("mode", "constant")
    if mode != "constant":
        raise ctx.fail(f"mode={mode!r}: only constant padding is supported")
    if ctx.opset < 11:
        pads = [int(p) for p in ctx.attr("pads")]
        value = float(ctx.attr("value", 0.0))
    else:
        pads = [int(p) for p in ctx.const(1, "pads")]
        constant = ctx.optional_const(2, "constant_value")
        value = 0.0 if constant is None or constant.size == 0 else float(constant.item())
    axes_const = ctx.optional_const(3, "axes")
    axes = list(range(x.ndim)) if axes_const is None else [_axis(ctx, int(a), x.ndim) for a in axes_const]
    begins, ends = [0] * x.ndim, [0] * x.ndim
    for i, axis in enumerate(axes):
        begins[axis], ends[axis] = pads[i], pads[i + len(axes)]
    if begins[0] or ends[0]:
        raise ctx.fail("padding the batch dimension is not supported")
    if min(begins + ends) < 0:
        raise ctx.fail("negative pads (cropping) are not supported")
    return Pad(_torch_pads(begins[1:], ends[1:]), value)


@_register("BatchNormalization")
def _batch_norm(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    if ctx.attr("training_mode", 0):
        raise ctx.fail("training_mode=1: only inference BatchNormalization is supported")
    if ctx.opset < 9 and not ctx.attr("spatial", 1):
        raise ctx.fail("spatial=0 is not supported")
    scale, bias, mean, var = (
        ctx.const(i, what).astype(np.float64) for i, what in enumerate(("scale", "B", "mean", "var"), 1)
    )
    channels = x.shape[1] if x.ndim >= 2 else 0
    if any(p.shape != (channels,) for p in (scale, bias, mean, var)):
        raise ctx.fail(f"parameters must have shape [{channels}] for a rank-{x.ndim} input")
    factor = scale / np.sqrt(var + float(ctx.attr("epsilon", 1e-5)))
    shape = (1, channels) + (1,) * (x.ndim - 2)  # full rank: see _elementwise_const
    return Affine(factor.reshape(shape), (bias - mean * factor).reshape(shape))


def _axis(ctx: NodeContext, axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ctx.fail(f"axis {axis} is out of range for rank {rank}")
    return axis % rank


def _reshape_to(per_sample: Sequence[int]) -> nn.Module:
    """(N, ...) → (N, *per_sample); Flatten when that is flat, the op bounders handle most simply."""
    return Flatten() if len(per_sample) == 1 else Reshape(per_sample)


@_register("Flatten")
def _flatten(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    axis = ctx.attr("axis", 1)
    if not -x.ndim <= axis <= x.ndim:
        raise ctx.fail(f"axis {axis} is out of range for rank {x.ndim}")
    axis = axis % x.ndim if axis != x.ndim else axis
    # ONNX gives (prod(dims[:axis]), prod(dims[axis:])): that keeps the batch only if the
    # dims between the batch and `axis` are all 1; axis 0 merges the batch unless it is fixed at 1.
    if axis == 0 and not ctx.fixed_batch:
        raise ctx.fail("axis=0 merges the batch dimension into the features")
    if math.prod(x.shape[1:axis]) != 1:
        raise ctx.fail(f"axis={axis} merges the batch dimension with dims {list(x.shape[1:axis])}")
    return Flatten()


@_register("Reshape")
def _reshape(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    target = [int(d) for d in ctx.const(1, "shape")]
    allowzero = int(ctx.attr("allowzero", 0))
    if allowzero and 0 in target:
        raise ctx.fail(f"shape {target} with allowzero=1 makes an empty tensor")
    if not target:
        raise ctx.fail("a reshape to a scalar drops the batch dimension")
    full = list(x.shape)
    # Index 0 is the batch dimension when it is -1 (inferred), 0 (copied from the input), or 1
    # baked in by a file with a fixed batch of 1.
    first = target[0]
    if not (first in (-1, 0) or (first == 1 and ctx.fixed_batch)):
        raise ctx.fail(f"shape {target} does not keep the batch dimension first")
    rest = [full[i] if d == 0 and i < len(full) else d for i, d in enumerate(target)][1:]
    numel = math.prod(full[1:])
    if rest.count(-1) > 1 or any(d < -1 for d in rest):
        raise ctx.fail(f"shape {target} is invalid")
    if -1 in rest:
        if first == -1:
            raise ctx.fail(f"shape {target} has two -1 entries")
        known = math.prod(d for d in rest if d != -1)
        if known == 0 or numel % known:
            raise ctx.fail(f"shape {target} does not divide the {numel} values of a sample")
        rest = [numel // known if d == -1 else d for d in rest]
    if math.prod(rest) != numel:
        raise ctx.fail(
            f"shape {ctx.const(1, 'shape').tolist()} moves values between samples "
            f"(a sample has {numel} values, the shape leaves {math.prod(rest)})"
        )
    return _reshape_to(rest)


def _axes(ctx: NodeContext) -> list[int] | None:
    """Squeeze/Unsqueeze axes: an attribute before opset 13, an optional input since."""
    if ctx.opset < 13:
        axes = ctx.attr("axes")
        return None if axes is None else [int(a) for a in axes]
    axes_const = ctx.optional_const(1, "axes")
    return None if axes_const is None else [int(a) for a in axes_const.reshape(-1)]


@_register("Squeeze")
def _squeeze(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    axes = _axes(ctx)
    if axes is None:
        if ctx.fixed_batch:
            raise ctx.fail("Squeeze without axes would drop the fixed batch dimension of 1")
        drop = {i for i in range(1, x.ndim) if x.shape[i] == 1}
    else:
        drop = {_axis(ctx, a, x.ndim) for a in axes}
    if 0 in drop:
        raise ctx.fail("squeezing the batch dimension is not supported")
    if any(x.shape[i] != 1 for i in drop):
        raise ctx.fail(f"axes {sorted(drop)} include a dimension that is not 1 in shape {list(x.shape[1:])}")
    return _reshape_to([d for i, d in enumerate(x.shape) if i and i not in drop])


@_register("Unsqueeze")
def _unsqueeze(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    axes = _axes(ctx)
    if not axes:
        raise ctx.fail("axes are required")
    out_rank = x.ndim + len(axes)
    inserted = {_axis(ctx, a, out_rank) for a in axes}
    if 0 in inserted:
        raise ctx.fail("a new axis before the batch dimension is not supported")
    dims = iter(x.shape[1:])
    shape = [1 if i in inserted else next(dims) for i in range(1, out_rank)]
    return _reshape_to(shape)


@_register("Transpose")
def _transpose(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    perm = [int(p) for p in ctx.attr("perm") or range(x.ndim - 1, -1, -1)]
    if sorted(perm) != list(range(x.ndim)):
        raise ctx.fail(f"perm {perm} is not a permutation of rank {x.ndim}")
    if perm[0] != 0:
        raise ctx.fail(f"perm {perm} moves the batch dimension")
    return Permute(perm)


@_register("Concat")
def _concat(ctx: NodeContext) -> nn.Module:
    batched = ctx.batched_inputs()
    if len(batched) != len([v for v in ctx.inputs if v is not None]):
        raise ctx.fail("concatenating a constant with batched tensors is not supported")
    ranks = {v.example.ndim for v in batched if v.example is not None}
    if len(ranks) != 1:
        raise ctx.fail(f"inputs have different ranks {sorted(ranks)}")
    axis = _axis(ctx, int(ctx.attr("axis", 1)), ranks.pop())
    if axis == 0:
        raise ctx.fail("concatenating along the batch dimension is not supported")
    return Concat(axis)


class Narrow(nn.Module):
    """x[..., start:start + length, ...] along one non-batch axis (traces to Slice)."""

    def __init__(self, axis: int, start: int, length: int) -> None:
        super().__init__()
        self.axis, self.start, self.length = axis, start, length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.narrow(x, self.axis, self.start, self.length)

    def extra_repr(self) -> str:
        return f"axis={self.axis}, start={self.start}, length={self.length}"


class Select(nn.Module):
    """Gather of constant indices along one non-batch axis: index_select, then the indices' shape."""

    index: torch.Tensor

    def __init__(self, axis: int, indices: np.ndarray, out_shape: Sequence[int]) -> None:
        super().__init__()
        self.axis = axis
        self.register_buffer("index", torch.tensor(np.array(indices, dtype=np.int64).reshape(-1)))
        self.out_shape = tuple(int(d) for d in out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, self.axis, self.index).reshape(-1, *self.out_shape)


class Steps(nn.Module):
    """Several modules applied one after the other (a Slice over several axes)."""

    def __init__(self, parts: Sequence[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for part in self.parts:
            x = part(x)
        return x


class MultiOutput(nn.Module):
    """A converter's answer for a node with several outputs: one module per output, each from the same
    inputs (`onnx_to_torch` makes each its own step)."""

    def __init__(self, parts: Sequence[nn.Module | None]) -> None:
        super().__init__()
        self.parts = list(parts)


class Neg(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.neg(x)


class Square(nn.Module):
    """x ** 2 as x * x: exactly what onnxruntime computes for Pow(x, 2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class Reduce(nn.Module):
    def __init__(self, mean: bool, axes: Sequence[int], keepdim: bool) -> None:
        super().__init__()
        self.mean = mean
        self.axes = tuple(int(a) for a in axes)
        self.keepdim = keepdim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean:
            return torch.mean(x, dim=self.axes, keepdim=self.keepdim)
        return torch.sum(x, dim=self.axes, keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"{'mean' if self.mean else 'sum'}, axes={self.axes}, keepdim={self.keepdim}"


class Expand(nn.Module):
    """Broadcast each sample to `shape` (the batch stays as it is)."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(d) for d in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, *self.shape)


class Masked(nn.Module):
    """Where(mask, a, b) with a constant mask as a · m + b · (1 − m) + c: exact for finite values, and
    affine, so every bounder follows it. `c` holds the constant branch where it is chosen."""

    keep_a: torch.Tensor
    keep_b: torch.Tensor
    const: torch.Tensor

    def __init__(self, keep_a: np.ndarray | None, keep_b: np.ndarray | None, const: np.ndarray) -> None:
        super().__init__()
        self.has_a, self.has_b = keep_a is not None, keep_b is not None
        self.register_buffer("keep_a", _buffer(keep_a if keep_a is not None else np.zeros(1)))
        self.register_buffer("keep_b", _buffer(keep_b if keep_b is not None else np.zeros(1)))
        self.register_buffer("const", _buffer(const))

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        values = list(xs)
        out = self.const
        if self.has_a:
            out = out + values.pop(0) * self.keep_a
        if self.has_b:
            out = out + values.pop(0) * self.keep_b
        return out


@_register("Neg")
def _neg(ctx: NodeContext) -> nn.Module:
    ctx.data()
    return Neg()


@_register("LeakyRelu")
def _leaky_relu(ctx: NodeContext) -> nn.Module:
    ctx.data()
    return nn.LeakyReLU(float(ctx.attr("alpha", 0.01)))


_FLOAT_TYPES = {onnx.TensorProto.FLOAT}


@_register("Cast")
def _cast(ctx: NodeContext) -> nn.Module:
    ctx.data()
    to = int(ctx.attr("to", onnx.TensorProto.FLOAT))
    if to not in _FLOAT_TYPES:
        name = onnx.TensorProto.DataType.Name(to)
        raise ctx.fail(f"casting a value computed from the input to {name} is not supported (only to FLOAT)")
    return nn.Identity()


@_register("Pow")
def _pow(ctx: NodeContext) -> nn.Module:
    ctx.data()
    exponent = np.asarray(ctx.const(1, "exponent"), dtype=np.float64)
    if exponent.size != 1 or exponent.reshape(-1)[0] not in (1.0, 2.0):
        raise ctx.fail(
            f"exponent {exponent.reshape(-1).tolist()[:4]}: only the constant exponents 1 and 2 are supported"
        )
    if exponent.ndim > ctx.data().ndim:
        raise ctx.fail("the exponent's shape would broadcast over the batch dimension")
    return nn.Identity() if exponent.reshape(-1)[0] == 1.0 else Square()


def _reduce_axes(ctx: NodeContext, rank: int) -> list[int] | None:
    """The axes of ReduceMean/ReduceSum: an attribute, or an input (ReduceSum from 13, ReduceMean from 18)."""
    from_input = ctx.opset >= (13 if ctx.node.op_type == "ReduceSum" else 18)
    if from_input:
        axes = ctx.optional_const(1, "axes")
        values = None if axes is None or axes.size == 0 else [int(a) for a in axes.reshape(-1)]
    else:
        attr = ctx.attr("axes")
        values = None if attr is None or len(attr) == 0 else [int(a) for a in attr]
    return None if values is None else sorted({_axis(ctx, a, rank) for a in values})


@_register("ReduceMean", "ReduceSum")
def _reduce(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    axes = _reduce_axes(ctx, x.ndim)
    if axes is None:
        if ctx.attr("noop_with_empty_axes", 0):
            return nn.Identity()
        axes = list(range(x.ndim))
    if 0 in axes:
        raise ctx.fail("reducing over the batch axis mixes the samples")
    return Reduce(ctx.node.op_type == "ReduceMean", axes, bool(ctx.attr("keepdims", 1)))


def _slice_indices(size: int, start: int, end: int, step: int) -> np.ndarray:
    """The positions ONNX's Slice keeps along an axis of `size` (its clamping is Python's slicing's)."""
    big = 2**62
    start, end = max(-big, min(big, start)), max(-big, min(big, end))
    return np.arange(size)[slice(start, end, step)]


def _take(axis: int, indices: np.ndarray, size: int) -> nn.Module:
    """Keep `indices` (a 1-D array) along `axis`: a Narrow when contiguous and ascending, else Select."""
    if len(indices) and np.all(np.diff(indices) == 1):
        return Narrow(axis, int(indices[0]), len(indices))
    return Select(axis, indices, [])  # out_shape filled by the caller


@_register("Slice")
def _slice(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    if ctx.opset < 10:
        starts = [int(v) for v in ctx.attr("starts")]
        ends = [int(v) for v in ctx.attr("ends")]
        axes_list = ctx.attr("axes")
        steps = [1] * len(starts)
    else:
        starts = [int(v) for v in ctx.const(1, "starts").reshape(-1)]
        ends = [int(v) for v in ctx.const(2, "ends").reshape(-1)]
        axes_c = ctx.optional_const(3, "axes")
        axes_list = None if axes_c is None else [int(v) for v in axes_c.reshape(-1)]
        steps_c = ctx.optional_const(4, "steps")
        steps = [1] * len(starts) if steps_c is None else [int(v) for v in steps_c.reshape(-1)]
    axes = list(range(len(starts))) if axes_list is None else [_axis(ctx, int(a), x.ndim) for a in axes_list]
    if not len(starts) == len(ends) == len(axes) == len(steps) or len(set(axes)) != len(axes):
        raise ctx.fail("starts, ends, axes and steps must have one entry per distinct axis")
    shape = list(x.shape)
    parts: list[nn.Module] = []
    for axis, start, end, step in zip(axes, starts, ends, steps, strict=True):
        if step == 0:
            raise ctx.fail("a step of 0")
        size = 1 if axis == 0 else shape[axis]
        indices = _slice_indices(size, start, end, step)
        if axis == 0:
            if ctx.fixed_batch and len(indices) == 1:
                continue  # a fixed batch of 1 kept whole
            raise ctx.fail("slicing the batch dimension is not supported")
        if len(indices) == 0:
            raise ctx.fail(f"the slice of axis {axis} is empty")
        if len(indices) == size and np.all(indices == np.arange(size)):
            continue
        part = _take(axis, indices, size)
        shape[axis] = len(indices)
        if isinstance(part, Select):
            part = Select(axis, indices, shape[1:])
        parts.append(part)
    if not parts:
        return nn.Identity()
    return parts[0] if len(parts) == 1 else Steps(parts)


@_register("Gather")
def _gather(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    indices = np.asarray(ctx.const(1, "indices"), dtype=np.int64)
    axis = _axis(ctx, int(ctx.attr("axis", 0)), x.ndim)
    if axis == 0:
        raise ctx.fail("gathering along the batch dimension is not supported")
    size = int(x.shape[axis])
    if indices.size == 0 or np.any(indices < -size) or np.any(indices >= size):
        raise ctx.fail(f"indices out of range for an axis of {size}")
    indices = np.where(indices < 0, indices + size, indices)
    out_shape = [*x.shape[1:axis], *indices.shape, *x.shape[axis + 1 :]]
    if indices.ndim == 0:
        return Steps([Narrow(axis, int(indices), 1), _reshape_to(out_shape) if out_shape else Reshape(())])
    return Select(axis, indices, out_shape)


@_register("Expand")
def _expand(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    target = [int(d) for d in ctx.const(1, "shape").reshape(-1)]
    rank = max(len(target), x.ndim)
    if len(target) > x.ndim:
        raise ctx.fail(f"shape {target} adds axes before the batch dimension")
    target = [1] * (rank - len(target)) + target
    if target[0] not in (1, -1):
        raise ctx.fail(f"shape {target} would expand the batch dimension")
    try:
        shape = np.broadcast_shapes(tuple(x.shape[1:]), tuple(target[1:]))
    except ValueError as exc:
        raise ctx.fail(f"shape {target} does not broadcast with {list(x.shape[1:])}") from exc
    return Expand(shape)


@_register("Where")
def _where(ctx: NodeContext) -> nn.Module:
    condition = ctx.const(0, "condition").astype(bool)
    a, b = ctx.input(1), ctx.input(2)
    if a is None or b is None:
        raise ctx.fail("needs a condition and two values")
    batched = [v for v in (a, b) if v.example is not None]
    if not batched:
        raise ctx.fail("no branch depends on the input")  # folded before we get here
    ranks = {v.example.ndim for v in batched if v.example is not None}
    if len(ranks) != 1:
        raise ctx.fail(f"branches of ranks {sorted(ranks)} would broadcast one batch over another axis")
    rank = ranks.pop()
    cond = _elementwise_const(ctx, condition, rank)
    mask = cond.astype(np.float64)
    const = np.zeros((1,) * rank)
    keep_a = keep_b = None
    if a.example is not None:
        keep_a = mask
    else:
        const = const + np.where(cond, _elementwise_const(ctx, np.asarray(a.const, dtype=np.float64), rank), 0.0)
    if b.example is not None:
        keep_b = 1.0 - mask
    else:
        const = const + np.where(cond, 0.0, _elementwise_const(ctx, np.asarray(b.const, dtype=np.float64), rank))
    return Masked(keep_a, keep_b, const)


@_register("Split")
def _split(ctx: NodeContext) -> nn.Module:
    x = ctx.data()
    axis = _axis(ctx, int(ctx.attr("axis", 0)), x.ndim)
    if axis == 0:
        raise ctx.fail("splitting the batch dimension is not supported")
    size = int(x.shape[axis])
    outputs = len(ctx.node.output)
    if ctx.opset >= 13:
        given = ctx.optional_const(1, "split")
        sizes = None if given is None else [int(v) for v in given.reshape(-1)]
    else:
        attr = ctx.attr("split")
        sizes = None if attr is None else [int(v) for v in attr]
    if sizes is None:
        if ctx.opset >= 18 and ctx.attr("num_outputs") is not None:
            count = int(ctx.attr("num_outputs"))
            chunk = -(-size // count)
            sizes = [min(chunk, size - i * chunk) for i in range(count)]
        else:
            if size % outputs:
                raise ctx.fail(f"an axis of {size} does not split into {outputs} equal parts")
            sizes = [size // outputs] * outputs
    if len(sizes) != outputs or sum(sizes) != size or min(sizes) < 1:
        raise ctx.fail(f"split sizes {sizes} do not cut an axis of {size} into {outputs} non-empty parts")
    offsets = np.cumsum([0, *sizes[:-1]])
    return MultiOutput([Narrow(axis, int(o), int(n)) for o, n in zip(offsets, sizes, strict=True)])


def _fold_shape(ctx: NodeContext) -> np.ndarray:
    """Shape of a value computed from the input, as a constant: the sample's dims behind a batch of 1.

    The graph is then read per sample, like a file with a fixed batch of 1 (the caller says so to
    later nodes); the cross-check against onnxruntime on a real batch catches any graph for which
    that reading is wrong."""
    shape = np.array([1, *ctx.data().shape[1:]], dtype=np.int64)
    rank = len(shape)
    start = int(ctx.attr("start", 0))
    end = ctx.attr("end")
    start = max(0, min(rank, start + rank if start < 0 else start))
    stop = rank if end is None else max(0, min(rank, int(end) + rank if int(end) < 0 else int(end)))
    return shape[start:stop]


# --------------------------------------------------------------------------------------------------
# The graph module
# --------------------------------------------------------------------------------------------------


class _Step(NamedTuple):
    key: str  # in OnnxGraphModule.nodes
    inputs: tuple[str, ...]  # ONNX names of the batched inputs, in the order the module takes them
    output: str
    onnx_node: str  # for messages and repr


class OnnxGraphModule(nn.Module):
    """Runs the converted nodes in the ONNX graph's (topological) order.

    The walk is a fixed Python list: tracing unrolls it, so the traced graph holds only the node
    modules' torch ops, whatever the batch size.
    """

    def __init__(self, input_name: str, output_name: str, nodes: dict[str, nn.Module], steps: list[_Step]) -> None:
        super().__init__()
        self.input_name = input_name
        self.output_name = output_name
        self.nodes = nn.ModuleDict(nodes)
        self.steps = list(steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {self.input_name: x}
        for step in self.steps:
            values[step.output] = self.nodes[step.key](*[values[name] for name in step.inputs])
        return values[self.output_name]


@dataclass(frozen=True)
class ImportedModel:
    """An ONNX classifier as a torch module, with the facts the verifier needs about its input."""

    module: nn.Module  # eval mode, float32, no gradients on weights; maps (N, *input_shape) → (N, ...)
    input_shape: tuple[int, ...]  # per sample, without the batch dimension
    input_name: str
    output_name: str
    metadata: dict[str, str] = field(default_factory=dict)
    output_shape: tuple[int, ...] = ()  # per sample
    fixed_batch: bool = False  # the file bakes in a batch of 1 (onnxruntime runs one sample at a time)
    max_abs_diff: float | None = None  # largest |torch - onnxruntime| seen by import_onnx's check


def _graph_io(model: onnx.ModelProto) -> tuple[onnx.ValueInfoProto, str]:
    """The one model input (initializers listed as inputs do not count) and the one output name."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ModelError(f"the ONNX graph has {len(inputs)} inputs {[i.name for i in inputs]}; expected one")
    if len(graph.output) != 1:
        raise ModelError(
            f"the ONNX graph has {len(graph.output)} outputs {[o.name for o in graph.output]}; expected one"
        )
    return inputs[0], graph.output[0].name


def _input_signature(value: onnx.ValueInfoProto) -> tuple[tuple[int, ...], bool]:
    """(per-sample shape, whether the batch is fixed at 1): the first axis is the batch."""
    tensor_type = value.type.tensor_type
    if tensor_type.elem_type != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(tensor_type.elem_type)
        raise ModelError(f"input {value.name!r} has element type {kind}; only float32 inputs are supported")
    if not tensor_type.HasField("shape") or len(tensor_type.shape.dim) < 2:
        raise ModelError(
            f"input {value.name!r} needs a shape of rank >= 2: a batch dimension, then the sample's dimensions"
        )
    batch, *dims = tensor_type.shape.dim
    fixed = batch.HasField("dim_value")
    if fixed and batch.dim_value != 1:
        raise ModelError(
            f"input {value.name!r} has a fixed first dimension {batch.dim_value}; expected a batch dimension "
            "(dynamic or 1)"
        )
    shape = []
    for i, dim in enumerate(dims, 1):
        if not dim.HasField("dim_value") or dim.dim_value <= 0:
            raise ModelError(f"dimension {i} of input {value.name!r} is not a fixed size")
        shape.append(int(dim.dim_value))
    return tuple(shape), fixed


def _default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return int(opset.version)
    return 1


def _attributes(node: onnx.NodeProto) -> dict[str, Any]:
    attrs = {}
    for attribute in node.attribute:
        value = onnx.helper.get_attribute_value(attribute)
        attrs[attribute.name] = value.decode() if isinstance(value, bytes) else value
    return attrs


def _needed_nodes(graph: onnx.GraphProto, output: str) -> set[int]:
    """Indices of the nodes the output depends on: dead nodes may hold ops we need not support."""
    producer = {name: i for i, node in enumerate(graph.node) for name in node.output if name}
    needed: set[int] = set()
    stack = [output]
    while stack:
        index = producer.get(stack.pop())
        if index is not None and index not in needed:
            needed.add(index)
            stack.extend(name for name in graph.node[index].input if name)
    return needed


def _fold(model: onnx.ModelProto, node: onnx.NodeProto, inputs: Sequence[_Value | None]) -> list[np.ndarray]:
    """Evaluate a node whose inputs are all constants (shape arithmetic, Constant) at import time."""
    from onnx.reference import ReferenceEvaluator  # imported on first use: it is slow to import

    initializers = [numpy_helper.from_array(v.const, v.name) for v in inputs if v is not None and v.const is not None]
    graph = onnx.helper.make_graph(
        [node],
        "fold",
        [],
        [onnx.helper.make_empty_tensor_value_info(name) for name in node.output if name],
        initializer=initializers,
    )
    single = onnx.helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        return [np.asarray(out) for out in ReferenceEvaluator(single).run(None, {})]
    except Exception as exc:  # the reference evaluator raises many types for ops it cannot run
        raise ModelError(f"cannot fold the constant {node.op_type} node {_node_label(node)}: {one_line(exc)}") from exc


def _unsupported(node: onnx.NodeProto) -> ModelError:
    op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    return ModelError(
        f"unsupported ONNX op {op} (node {_node_label(node)}); supported ops: {', '.join(supported_ops())}"
    )


def _affine_layer(module: nn.Module) -> nn.Linear | nn.modules.conv._ConvNd | None:
    """The Linear or Conv layer whose output `module` returns, if any."""
    if isinstance(module, nn.Sequential) and len(module):
        module = module[-1]
    return module if isinstance(module, nn.Linear | nn.modules.conv._ConvNd) else None


def _absorb(layer: nn.Linear | nn.modules.conv._ConvNd, op: nn.Module, rank: int) -> bool:
    """Fold `op` into the layer before it when op is x · scale + shift per output channel.

    Why: a bias Add after MatMul, and BatchNormalization after Conv or Gemm, then reach the bounder
    as one Linear/Conv, i.e. fewer nodes to bound; and auto_LiRPA 0.3's CROWN fails on a separate
    bias Add after a MatMul (it takes that Add for a convolution's, in "patches" mode).
    Exact up to float rounding: the folded weights are computed in float64.
    """
    if isinstance(op, Affine):
        scale, shift = op.scale, op.shift
    elif isinstance(op, BinaryConst) and (op.fn is operator.add or (op.fn is operator.sub and not op.const_first)):
        scale, shift = torch.ones(()), op.const if op.fn is operator.add else -op.const
    else:
        return False
    linear = isinstance(layer, nn.Linear)
    channels = int(layer.weight.shape[0])  # out_features / out_channels
    axis = rank - 1 if linear else 1

    def per_channel(t: torch.Tensor) -> torch.Tensor | None:
        if t.ndim not in (0, rank) or any(d != 1 for i, d in enumerate(t.shape) if i != axis):
            return None
        if t.ndim and t.shape[axis] not in (1, channels):
            return None
        return t.reshape(-1).expand(channels).to(torch.float64)

    scale64, shift64 = per_channel(scale), per_channel(shift)
    if scale64 is None or shift64 is None:
        return False
    with torch.no_grad():
        weight = layer.weight.to(torch.float64)
        factor = scale64.reshape(-1, *([1] * (weight.ndim - 1)))
        bias = layer.bias.to(torch.float64) if layer.bias is not None else torch.zeros(channels, dtype=torch.float64)
        layer.weight.copy_(weight * factor)
        layer.bias = nn.Parameter((bias * scale64 + shift64).float(), requires_grad=False)
    return True


def onnx_to_torch(model: onnx.ModelProto) -> ImportedModel:
    """Convert a (checked) ONNX classifier into a batch-first torch module made of plain torch ops."""
    graph = model.graph
    input_value, output_name = _graph_io(model)
    input_shape, fixed_batch = _input_signature(input_value)
    opset = _default_opset(model)
    values: dict[str, _Value] = {
        init.name: _Value(init.name, numpy_helper.to_array(init), None) for init in graph.initializer
    }
    generator = torch.Generator().manual_seed(0)
    example = torch.rand((_EXAMPLE_BATCH, *input_shape), generator=generator)
    values[input_value.name] = _Value(input_value.name, None, example)
    needed = _needed_nodes(graph, output_name)
    # read per sample: a fixed batch of 1, or (from the first Shape of a batched value on) shape arithmetic
    per_sample = fixed_batch
    uses: dict[str, int] = {output_name: 1}
    for i in needed:
        for name in graph.node[i].input:
            uses[name] = uses.get(name, 0) + 1

    nodes: dict[str, nn.Module] = {}
    steps: list[_Step] = []
    step_of: dict[str, int] = {}  # batched value → index of the step producing it
    for index, node in enumerate(graph.node):
        if index not in needed:
            continue
        try:
            inputs = tuple(values[name] if name else None for name in node.input)
        except KeyError as exc:
            raise ModelError(f"node {_node_label(node)} reads {exc.args[0]!r}, which nothing defines") from exc
        standard = node.domain in ("", "ai.onnx")
        if standard and node.op_type not in _NONDETERMINISTIC and all(v is None or not v.batched for v in inputs):
            for name, array in zip(node.output, _fold(model, node, inputs), strict=False):
                values[name] = _Value(name, array, None)
            continue
        if standard and node.op_type == "Shape" and inputs and inputs[0] is not None and inputs[0].batched:
            ctx = NodeContext(node, _attributes(node), inputs, opset, per_sample)
            values[node.output[0]] = _Value(node.output[0], _fold_shape(ctx), None)
            per_sample = True
            continue
        converter = CONVERTERS.get(node.op_type) if standard else None
        if converter is None:
            raise _unsupported(node)
        ctx = NodeContext(node, _attributes(node), inputs, opset, per_sample)
        module = converter(ctx).eval()
        if isinstance(module, MultiOutput):
            batched = [v for v in inputs if v is not None and v.batched]
            for output, part in zip(node.output, module.parts, strict=False):
                if not output or part is None:
                    continue
                try:
                    with torch.no_grad():
                        out = part(*[v.example for v in batched])
                except Exception as exc:
                    raise ctx.fail(f"torch cannot run it on the example batch: {one_line(exc)}") from exc
                key = f"{re.sub(r'(?<!^)(?=[A-Z])', '_', node.op_type).lower()}_{len(steps)}"
                nodes[key] = part
                step_of[output] = len(steps)
                steps.append(_Step(key, tuple(v.name for v in batched), output, _node_label(node)))
                values[output] = _Value(output, None, out)
            continue
        extra = [name for name in node.output[1:] if name and name in uses]
        if extra:
            raise ctx.fail(f"its extra outputs {extra} are used; only the first output is supported")
        batched = [v for v in inputs if v is not None and v.batched]
        source = batched[0].name if len(batched) == 1 else ""
        if uses.get(source) == 1 and source in step_of and batched[0].example is not None:
            producer = steps[step_of[source]]
            layer = _affine_layer(nodes[producer.key])
            if layer is not None and _absorb(layer, module, batched[0].example.ndim):
                with torch.no_grad():
                    out = nodes[producer.key](*[values[name].example for name in producer.inputs])
                label = f"{producer.onnx_node} + {_node_label(node)}"
                index = step_of.pop(source)
                steps[index] = producer._replace(output=node.output[0], onnx_node=label)
                step_of[node.output[0]] = index
                values[node.output[0]] = _Value(node.output[0], None, out)
                continue
        try:
            with torch.no_grad():
                out = module(*[v.example for v in batched])
        except Exception as exc:  # shape errors surface here, as ones onnxruntime would also raise
            raise ctx.fail(f"torch cannot run it on the example batch: {one_line(exc)}") from exc
        if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != _EXAMPLE_BATCH:
            raise ctx.fail("its output lost the batch dimension")
        key = f"{re.sub(r'(?<!^)(?=[A-Z])', '_', node.op_type).lower()}_{len(steps)}"
        nodes[key] = module
        step_of[node.output[0]] = len(steps)
        steps.append(_Step(key, tuple(v.name for v in batched), node.output[0], _node_label(node)))
        values[node.output[0]] = _Value(node.output[0], None, out)

    result = values.get(output_name)
    if result is None or result.example is None:
        raise ModelError(f"the output {output_name!r} does not depend on the input {input_value.name!r}")
    module = OnnxGraphModule(input_value.name, output_name, nodes, steps).float().eval()
    module.requires_grad_(False)
    return ImportedModel(
        module=module,
        input_shape=input_shape,
        input_name=input_value.name,
        output_name=output_name,
        metadata={prop.key: prop.value for prop in model.metadata_props},
        output_shape=tuple(result.example.shape[1:]),
        fixed_batch=fixed_batch,
    )


# --------------------------------------------------------------------------------------------------
# Loading, and onnxruntime as the referee
# --------------------------------------------------------------------------------------------------


def _check_finite(model: onnx.ModelProto) -> None:
    """NaN/Inf weights make every bound NaN; name the culprit instead."""
    tensors = [(f"initializer {t.name!r}", t) for t in model.graph.initializer]
    for node in model.graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                tensors.append((f"constant of node {_node_label(node)}", attribute.t))
    for what, tensor in tensors:
        array = numpy_helper.to_array(tensor)
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise ModelError(f"{what} contains NaN or Inf values")


def load_onnx(path: PathLike) -> onnx.ModelProto:
    """Read and check an ONNX file (or a gzipped one, `.onnx.gz` as VNN-COMP ships them); every way it
    can be unusable becomes a one-line ModelError."""
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"ONNX file not found: {file}")
    try:
        if file.suffix == ".gz":
            data = file.read_bytes()
            if data[:2] != b"\x1f\x8b":
                raise ModelError(f"{file} is named .gz but is not a gzip file")
            model = onnx.load_from_string(gzip.decompress(data))
        else:
            model = onnx.load(str(file))
    except ModelError:
        raise
    except Exception as exc:  # protobuf DecodeError, onnx errors, missing external data, bad gzip, ...
        raise ModelError(f"cannot read ONNX file {file}: {one_line(exc)}") from exc
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError, or a C++ error for a malformed proto
        raise ModelError(f"invalid ONNX model {file}: {one_line(exc)}") from exc
    _graph_io(model)
    _check_finite(model)
    return model


def _validate(
    model: onnx.ModelProto, module: nn.Module, x: np.ndarray, atol: float, label: str, referee: Referee | None = None
) -> float:
    input_value, _ = _graph_io(model)
    input_shape, _ = _input_signature(input_value)
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != input_shape or len(x) == 0:
        raise ModelError(
            f"samples of shape {list(x.shape)} do not fit {label}: expected [N, {', '.join(map(str, input_shape))}]"
        )
    check = agreement(module, model if referee is None else referee, x)
    if not check.same_shape:
        raise ModelError(
            f"the torch module gives outputs of shape {list(check.torch_shape)} but onnxruntime "
            f"{list(check.onnx_shape)} for {label}"
        )
    if not check.within(atol, relative=True):  # relative for large logits
        tolerance = atol * max(1.0, check.scale)
        raise ModelError(
            f"the imported module disagrees with onnxruntime on {label}: max |diff| = {check.max_abs_diff:.3g} > "
            f"{tolerance:.3g}"
        )
    return check.max_abs_diff


def validate_against_onnxruntime(
    path_or_model: PathLike | onnx.ModelProto,
    module: nn.Module,
    x: np.ndarray,
    atol: float = 1e-4,
    referee: Referee | None = None,
) -> float:
    """Run onnxruntime and `module` on the batch x; raise ModelError if they differ by more than atol.

    Bounds are computed on the torch module but the property is about the ONNX file, so any
    disagreement must stop the check rather than certify the wrong network. Returns the max diff.
    `referee`: an onnxruntime session already open on the same file (a check's own), used rather than
    a new one (a session costs ~0.03 s per member of a vote).
    """
    if isinstance(path_or_model, onnx.ModelProto):
        return _validate(path_or_model, module, x, atol, "the ONNX model", referee)
    return _validate(load_onnx(path_or_model), module, x, atol, str(path_or_model), referee)


def import_onnx(
    path: PathLike,
    *,
    samples: np.ndarray | None = None,
    lower: float | np.ndarray | None = None,
    upper: float | np.ndarray | None = None,
    n_random: int = 16,
    seed: int = 0,
    atol: float = 1e-4,
) -> ImportedModel:
    """Load, convert and cross-check an ONNX classifier against onnxruntime, failing loudly.

    The check runs on `samples` if given, else on `n_random` seeded points uniform in
    [lower, upper] (default [0, 1]; scalars or arrays broadcasting to the input shape).
    """
    model = load_onnx(path)
    imported = onnx_to_torch(model)
    shape = imported.input_shape
    if samples is not None:
        x = np.asarray(samples, dtype=np.float32)
        if x.shape == shape:
            x = x[None]
    else:
        try:
            lo = np.broadcast_to(np.asarray(0.0 if lower is None else lower, dtype=np.float64), (n_random, *shape))
            hi = np.broadcast_to(np.asarray(1.0 if upper is None else upper, dtype=np.float64), (n_random, *shape))
        except ValueError as exc:
            raise ModelError(f"lower/upper do not broadcast to the input shape {list(shape)}") from exc
        if (lo > hi).any():
            raise ModelError("lower exceeds upper for some input coordinate")
        x = np.random.default_rng(seed).uniform(lo, hi).astype(np.float32)
    diff = _validate(model, imported.module, x, atol, str(path))
    return replace(imported, max_abs_diff=diff)
