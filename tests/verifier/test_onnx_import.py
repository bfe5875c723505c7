"""The ONNX importer against onnxruntime: per op, on torch exports, on real VNN-COMP files, on bad files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from uverify.errors import ModelError, UverifyError
from uverify.verifier.onnx_import import (
    ImportedModel,
    import_onnx,
    load_onnx,
    onnx_to_torch,
    supported_ops,
    validate_against_onnxruntime,
)

from helpers import VNNCOMP, vnncomp_file

ATOL = 1e-5


def make_model(
    nodes: list[onnx.NodeProto],
    x_shape: list[int],
    inits: dict[str, Any] | None = None,
    *,
    opset: int = 17,
    batch: str | int = "N",
    y_shape: list[Any] | None = None,
) -> onnx.ModelProto:
    """A checked one-input ("x", batch first) one-output ("y") model."""
    initializers = []
    for name, value in (inits or {}).items():
        array = np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        initializers.append(numpy_helper.from_array(array, name))
    graph = helper.make_graph(
        nodes,
        "test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *x_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    if y_shape is None:
        model = onnx.shape_inference.infer_shapes(model)  # gives "y" the shape the checker requires
    onnx.checker.check_model(model)
    return model


def rand(shape: tuple[int, ...] | list[int], n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def check(model: onnx.ModelProto, x: np.ndarray, atol: float = ATOL) -> ImportedModel:
    """Import the model and compare it with onnxruntime on x (a batch)."""
    imported = onnx_to_torch(model)
    assert imported.input_shape == tuple(x.shape[1:])
    assert not imported.module.training
    diff = validate_against_onnxruntime(model, imported.module, x, atol=atol)
    assert diff <= atol
    return imported


def node(op: str, inputs: list[str], output: str = "y", **attrs: Any) -> onnx.NodeProto:
    return helper.make_node(op, inputs, [output], name=f"{op.lower()}_{output}", **attrs)


def weights(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# Per op
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("trans_b", "alpha", "beta", "bias_shape"),
    [
        (0, 1.0, 1.0, (3,)),
        (1, 1.0, 1.0, (3,)),
        (1, 0.5, 2.0, (1, 3)),
        (0, -1.5, 0.3, ()),
        (1, 2.0, 1.0, (1, 1)),
        (0, 1.0, 1.0, None),
    ],
)
def test_gemm(trans_b: int, alpha: float, beta: float, bias_shape: tuple[int, ...] | None) -> None:
    b = weights(3, 4) if trans_b else weights(4, 3)
    inits: dict[str, Any] = {"B": b}
    inputs = ["x", "B"]
    if bias_shape is not None:
        inits["C"] = weights(*bias_shape, seed=2)
        inputs.append("C")
    gemm = node("Gemm", inputs, transB=trans_b, alpha=alpha, beta=beta)
    imported = check(make_model([gemm], [4], inits), rand([4]))
    assert isinstance(imported.module.nodes["gemm_0"], nn.Linear)


def test_gemm_fixed_batch_bias_with_a_row() -> None:
    gemm = node("Gemm", ["x", "B", "C"], transB=1)
    model = make_model([gemm], [4], {"B": weights(3, 4), "C": weights(1, 3)}, batch=1)
    check(model, rand([4], n=5))


def test_gemm_trans_a_on_the_batch_is_rejected() -> None:
    gemm = node("Gemm", ["x", "B"], transA=1)
    with pytest.raises(ModelError, match="transA"):
        onnx_to_torch(make_model([gemm], [4], {"B": weights(4, 3)}, y_shape=[4, 3]))


def test_matmul_add_becomes_one_linear() -> None:
    nodes = [node("MatMul", ["x", "W"], "h"), node("Add", ["h", "b"])]
    imported = check(make_model(nodes, [4], {"W": weights(4, 3), "b": weights(1, 3)}), rand([4]))
    assert list(imported.module.nodes) == ["mat_mul_0"]
    assert isinstance(imported.module.nodes["mat_mul_0"], nn.Linear)


@pytest.mark.parametrize(
    ("nodes", "inits", "steps"),
    [
        # x @ W - c folds into the bias; c - x @ W does not
        ([node("MatMul", ["x", "W"], "h"), node("Sub", ["h", "c"])], {"c": weights(3)}, 1),
        ([node("MatMul", ["x", "W"], "h"), node("Sub", ["c", "h"])], {"c": weights(3)}, 2),
        # h feeds two nodes: the bias stays a separate Add
        (
            [node("MatMul", ["x", "W"], "h"), node("Add", ["h", "c"], "a"), node("Add", ["a", "h"])],
            {"c": weights(3)},
            3,
        ),
        # Gemm with a bias, then a scalar Add, then BatchNormalization: one Linear
        (
            [
                node("Gemm", ["x", "W", "c"], "g"),
                node("Add", ["g", "s"], "a"),
                node("BatchNormalization", ["a", "c", "c", "c", "v"]),
            ],
            {"c": weights(3), "s": np.array(0.25, np.float32), "v": np.abs(weights(3)) + 0.1},
            1,
        ),
        # an elementwise (not per-channel) constant stays an Add
        ([node("MatMul", ["x", "W"], "h"), node("Add", ["h", "c"])], {"c": weights(2, 3)}, 2),
    ],
)
def test_affine_ops_fold_into_the_layer_before(nodes: list[onnx.NodeProto], inits: dict[str, Any], steps: int) -> None:
    x_shape = [2, 4] if inits["c"].ndim == 2 else [4]
    imported = check(make_model(nodes, x_shape, {"W": weights(4, 3), **inits}), rand(x_shape))
    assert len(imported.module.nodes) == steps


@pytest.mark.parametrize(
    ("x_shape", "inputs", "inits"),
    [
        ([2, 4], ["x", "W"], {"W": weights(4, 3)}),  # weight on the right, rank-3 input
        ([2, 4], ["W", "x"], {"W": weights(5, 2)}),  # weight on the left
        ([2, 4], ["x", "W"], {"W": weights(1, 4, 3)}),  # rank-3 weight with a batch axis of 1
        ([3, 3], ["x", "x"], {}),  # two batched operands
    ],
)
def test_matmul(x_shape: list[int], inputs: list[str], inits: dict[str, Any]) -> None:
    check(make_model([node("MatMul", inputs)], x_shape, inits), rand(x_shape))


def test_matmul_constant_left_of_a_row_batch_is_rejected() -> None:
    with pytest.raises(ModelError, match="constant on the left"):
        onnx_to_torch(make_model([node("MatMul", ["W", "x"])], [4], {"W": weights(3, 4)}))


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
@pytest.mark.parametrize("const_shape", [(1, 3, 1, 1), (3, 1, 1), (4,), ()])
@pytest.mark.parametrize("const_first", [False, True])
def test_binary_with_constant(op: str, const_shape: tuple[int, ...], const_first: bool) -> None:
    const = np.abs(weights(*const_shape)) + 0.5
    inputs = ["c", "x"] if const_first else ["x", "c"]
    x = np.abs(rand([3, 2, 4])) + 0.5  # away from 0: c / x is well conditioned
    check(make_model([node(op, inputs)], [3, 2, 4], {"c": const}), x)


@pytest.mark.parametrize("op", ["Add", "Sub", "Mul", "Div"])
def test_binary_with_two_tensors(op: str) -> None:
    nodes = [node("Sigmoid", ["x"], "s"), node(op, ["x", "s"])]
    check(make_model(nodes, [5], {}), rand([5]), atol=1e-4)  # onnxruntime's sigmoid is approximate


def test_binary_constant_across_the_batch_is_rejected() -> None:
    model = make_model([node("Add", ["x", "c"])], [3], {"c": weights(2, 3)})
    with pytest.raises(ModelError, match="broadcast over the batch"):
        onnx_to_torch(model)


def test_normalisation_constants_in_a_fixed_batch_file() -> None:
    """(x - mean) / std with [1, 1, 1, 5] constants, as in the ACAS Xu files."""
    nodes = [node("Sub", ["x", "mean"], "centred"), node("Div", ["centred", "std"], "scaled")]
    nodes += [node("Flatten", ["scaled"], "flat", axis=1), node("MatMul", ["flat", "W"])]
    inits = {"mean": weights(1, 1, 1, 5), "std": np.abs(weights(1, 1, 1, 5)) + 0.5, "W": weights(5, 5)}
    model = make_model(nodes, [1, 1, 5], inits, batch=1)
    check(model, rand([1, 1, 5], n=4))


@pytest.mark.parametrize("op", ["Relu", "Sigmoid", "Tanh", "Identity"])
def test_elementwise(op: str) -> None:
    check(make_model([node(op, ["x"])], [2, 3], {}), rand([2, 3]))


@pytest.mark.parametrize(("opset", "axis"), [(13, -1), (13, 1), (11, 2)])
def test_softmax(opset: int, axis: int) -> None:
    check(make_model([node("Softmax", ["x"], axis=axis)], [4, 3], {}, opset=opset), rand([4, 3]))


def test_dropout_is_the_identity_in_inference() -> None:
    dropout = helper.make_node("Dropout", ["x", "ratio"], ["y"], name="drop")
    imported = check(make_model([dropout], [6], {"ratio": np.array(0.5, dtype=np.float32)}), rand([6]))
    assert isinstance(imported.module.nodes["dropout_0"], nn.Identity)


def test_constant_nodes_are_folded_into_buffers() -> None:
    value = numpy_helper.from_array(weights(3), "value")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=value),
        helper.make_node("Constant", [], ["s"], value_float=2.0),
        node("Mul", ["c", "s"], "c2"),  # constant arithmetic: evaluated at import time
        node("Add", ["x", "c2"]),
    ]
    imported = check(make_model(nodes, [3], {}), rand([3]))
    assert list(imported.module.nodes) == ["add_0"]


@pytest.mark.parametrize(
    ("x_shape", "weight_shape", "attrs"),
    [
        ([3, 8, 8], (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}),
        ([3, 8, 8], (4, 3, 3, 3), {"pads": [0, 1, 2, 0]}),
        ([3, 9, 7], (4, 3, 3, 2), {"strides": [2, 3]}),
        ([3, 9, 9], (4, 3, 3, 3), {"dilations": [2, 1], "pads": [2, 1, 2, 1]}),
        ([4, 6, 6], (6, 2, 3, 3), {"group": 2}),
        ([3, 7, 7], (2, 3, 3, 3), {"auto_pad": "VALID"}),
        ([3, 7, 8], (2, 3, 3, 3), {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
        ([3, 8, 8], (2, 3, 2, 2), {"auto_pad": "SAME_LOWER"}),
        ([3, 10], (4, 3, 3), {"pads": [1, 2]}),  # Conv1d, asymmetric
        ([3, 10], (4, 3, 5), {"strides": [2], "dilations": [2]}),
    ],
)
@pytest.mark.parametrize("bias", [True, False])
def test_conv(x_shape: list[int], weight_shape: tuple[int, ...], attrs: dict[str, Any], bias: bool) -> None:
    inits: dict[str, Any] = {"W": weights(*weight_shape)}
    if bias:
        inits["B"] = weights(weight_shape[0], seed=2)
    conv = node("Conv", ["x", *inits], **attrs)
    check(make_model([conv], x_shape, inits), rand(x_shape))


def test_batch_normalization_after_conv() -> None:
    channels = 4
    bn = [np.abs(weights(channels, seed=s)) + 0.1 for s in range(4)]
    inits = {"W": weights(channels, 2, 3, 3), "scale": bn[0], "bias": bn[1], "mean": bn[2], "var": bn[3]}
    nodes = [
        node("Conv", ["x", "W"], "c", pads=[1, 1, 1, 1]),
        node("BatchNormalization", ["c", "scale", "bias", "mean", "var"], epsilon=1e-3),
    ]
    imported = check(make_model(nodes, [2, 5, 5], inits), rand([2, 5, 5]))
    assert list(imported.module.nodes) == ["conv_0"]  # folded into the convolution


def test_batch_normalization_on_features() -> None:
    bn = [np.abs(weights(6, seed=s)) + 0.1 for s in range(4)]
    inits = dict(zip(["scale", "bias", "mean", "var"], bn, strict=True))
    check(make_model([node("BatchNormalization", ["x", *inits])], [6], inits), rand([6]))


@pytest.mark.parametrize(("x_shape", "axis"), [([2, 3, 4], 1), ([1, 3, 4], 2), ([5], -1), ([2, 3], 1)])
def test_flatten(x_shape: list[int], axis: int) -> None:
    check(make_model([node("Flatten", ["x"], axis=axis)], x_shape, {}), rand(x_shape))


def test_flatten_axis_0_in_a_fixed_batch_file() -> None:
    check(make_model([node("Flatten", ["x"], axis=0)], [784, 1], {}, batch=1), rand([784, 1], n=3))


@pytest.mark.parametrize(("x_shape", "axis", "match"), [([2, 3, 4], 2, "merges"), ([2, 3], 0, "axis=0")])
def test_flatten_across_the_batch_is_rejected(x_shape: list[int], axis: int, match: str) -> None:
    with pytest.raises(ModelError, match=match):
        onnx_to_torch(make_model([node("Flatten", ["x"], axis=axis)], x_shape, {}))


@pytest.mark.parametrize(
    ("x_shape", "shape", "batch", "allowzero"),
    [
        ([2, 3, 2], [0, -1], "N", 0),
        ([2, 3, 2], [-1, 12], "N", 1),
        ([2, 3, 2], [0, 3, -1], "N", 0),
        ([2, 3, 2], [-1, 4, 3], "N", 0),
        ([2, 3, 2], [0, 0, 6], "N", 0),
        ([784, 1], [1, 784], 1, 0),  # the batch of 1 baked in (VNN-COMP style)
        ([784, 1], [1, -1, 28], 1, 0),
    ],
)
def test_reshape(x_shape: list[int], shape: list[int], batch: str | int, allowzero: int) -> None:
    reshape = node("Reshape", ["x", "shape"], allowzero=allowzero)
    inits = {"shape": np.array(shape, dtype=np.int64)}
    imported = check(make_model([reshape], x_shape, inits, opset=14, batch=batch), rand(x_shape, n=4))
    traced: Any = torch.jit.trace(imported.module, torch.zeros(2, *x_shape))
    x = torch.from_numpy(rand(x_shape, n=5, seed=3))
    assert torch.equal(traced(x), imported.module(x))


@pytest.mark.parametrize(("shape", "batch"), [([1, -1], "N"), ([-1, 6], "N"), ([2, 6], 1), ([0, 2, 2], "N")])
def test_reshape_across_the_batch_is_rejected(shape: list[int], batch: str | int) -> None:
    inits = {"shape": np.array(shape, dtype=np.int64)}
    model = make_model([node("Reshape", ["x", "shape"])], [2, 3, 2], inits, batch=batch)
    with pytest.raises(ModelError, match="Reshape"):
        onnx_to_torch(model)


def test_reshape_to_the_shape_of_the_input_is_folded() -> None:
    # Shape of a batched value folds to the sample's shape behind a batch of 1 (test_onnx_import_ops.py)
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape_of_x"), node("Reshape", ["x", "s"])]
    check(make_model(nodes, [3], {}), rand([3], n=1))


def test_reshape_shape_from_folded_constants() -> None:
    nodes = [
        helper.make_node("Constant", [], ["a"], value_ints=[-1]),
        helper.make_node("Constant", [], ["b"], value_ints=[6]),
        helper.make_node("Concat", ["a", "b"], ["shape"], axis=0),
        node("Reshape", ["x", "shape"]),
    ]
    check(make_model(nodes, [2, 3], {}), rand([2, 3]))


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze(opset: int) -> None:
    if opset < 13:
        nodes = [node("Squeeze", ["x"], "s", axes=[1]), node("Unsqueeze", ["s"], axes=[-1, 1])]
        inits: dict[str, Any] = {}
    else:
        nodes = [node("Squeeze", ["x", "a1"], "s"), node("Unsqueeze", ["s", "a2"])]
        inits = {"a1": np.array([1], dtype=np.int64), "a2": np.array([-1, 1], dtype=np.int64)}
    imported = check(make_model(nodes, [1, 4], inits, opset=opset), rand([1, 4]))
    assert imported.output_shape == (1, 4, 1)


def test_squeeze_without_axes() -> None:
    check(make_model([node("Squeeze", ["x"])], [1, 4, 1], {}, y_shape=["N", 4]), rand([1, 4, 1]))


def test_squeeze_of_the_batch_is_rejected() -> None:
    model = make_model([node("Squeeze", ["x", "a"])], [4], {"a": np.array([0], dtype=np.int64)}, batch=1)
    with pytest.raises(ModelError, match="batch"):
        onnx_to_torch(model)


def test_transpose() -> None:
    check(make_model([node("Transpose", ["x"], perm=[0, 2, 1])], [3, 4], {}), rand([3, 4]))


def test_transpose_of_the_batch_is_rejected() -> None:
    with pytest.raises(ModelError, match="moves the batch"):
        onnx_to_torch(make_model([node("Transpose", ["x"], perm=[1, 0, 2])], [3, 4], {}))


@pytest.mark.parametrize("axis", [1, -1])
def test_concat(axis: int) -> None:
    nodes = [node("Relu", ["x"], "r"), node("Tanh", ["x"], "t"), node("Concat", ["r", "t", "x"], axis=axis)]
    check(make_model(nodes, [2, 3], {}), rand([2, 3]))


@pytest.mark.parametrize(
    ("x_shape", "attrs"),
    [
        ([2, 6, 6], {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ([2, 6, 6], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 0}),
        ([2, 6, 6], {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
        ([2, 6, 6], {"kernel_shape": [3, 3], "pads": [0, 0, 1, 2], "count_include_pad": 1}),
        ([2, 7, 7], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
        ([2, 7, 5], {"kernel_shape": [3, 2], "strides": [2, 1], "auto_pad": "VALID"}),
        ([2, 9], {"kernel_shape": [3], "strides": [2]}),
    ],
)
def test_average_pool(x_shape: list[int], attrs: dict[str, Any]) -> None:
    check(make_model([node("AveragePool", ["x"], **attrs)], x_shape, {}), rand(x_shape))


@pytest.mark.parametrize(
    ("x_shape", "attrs"),
    [
        ([2, 6, 6], {"kernel_shape": [2, 2], "strides": [2, 2]}),
        ([2, 7, 7], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
        ([2, 8, 8], {"kernel_shape": [2, 2], "dilations": [2, 2]}),
        ([2, 7, 7], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}),
        ([2, 9], {"kernel_shape": [3], "strides": [2]}),
    ],
)
def test_max_pool(x_shape: list[int], attrs: dict[str, Any]) -> None:
    check(make_model([node("MaxPool", ["x"], **attrs)], x_shape, {}), rand(x_shape))


def test_max_pool_asymmetric_pads_are_rejected() -> None:
    model = make_model([node("MaxPool", ["x"], kernel_shape=[2, 2], pads=[0, 0, 1, 1])], [2, 6, 6], {})
    with pytest.raises(ModelError, match=r"MaxPool.*pads"):
        onnx_to_torch(model)


def test_global_average_pool() -> None:
    check(make_model([node("GlobalAveragePool", ["x"])], [3, 5, 4], {}), rand([3, 5, 4]))


def test_pad() -> None:
    pads = np.array([0, 0, 1, 2, 0, 1, 0, 3], dtype=np.int64)
    inits = {"pads": pads, "value": np.array(0.5, dtype=np.float32)}
    check(make_model([node("Pad", ["x", "pads", "value"])], [2, 3, 3], inits, opset=13), rand([2, 3, 3]))


def test_dead_nodes_with_unsupported_ops_are_ignored() -> None:
    nodes = [node("Erf", ["x"], "unused"), node("Relu", ["x"])]
    check(make_model(nodes, [3], {}), rand([3]))


def test_supported_ops_cover_the_design() -> None:
    expected = {"Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Conv"}
    expected |= {"BatchNormalization", "Flatten", "Reshape", "AveragePool", "MaxPool", "Identity"}
    assert expected <= set(supported_ops())


# --------------------------------------------------------------------------------------------------
# Unsupported and bad models
# --------------------------------------------------------------------------------------------------


def test_unsupported_op_names_op_node_and_supported_ops() -> None:
    model = make_model([node("Erf", ["x"], "e"), node("Relu", ["e"])], [3], {})
    with pytest.raises(ModelError) as info:
        onnx_to_torch(model)
    message = str(info.value)
    assert "Erf" in message and "'erf_e'" in message and "Gemm" in message and "\n" not in message


def test_unsupported_lstm() -> None:
    hidden = 2
    lstm = helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="lstm", hidden_size=hidden)
    inits = {"W": weights(1, 4 * hidden, 3), "R": weights(1, 4 * hidden, hidden)}
    with pytest.raises(ModelError, match="LSTM"):
        onnx_to_torch(make_model([lstm], [1, 3], inits))


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def small_model() -> onnx.ModelProto:
    nodes = [node("Gemm", ["x", "W", "b"], "h", transB=1), node("Relu", ["h"])]
    return make_model(nodes, [4], {"W": weights(3, 4), "b": weights(3)})


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_onnx(tmp_path / "absent.onnx")


def test_truncated_file(tmp_path: Path) -> None:
    data = small_model().SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as info:
        import_onnx(path)
    assert "truncated.onnx" in str(info.value)


def test_truncated_vnncomp_file(tmp_path: Path) -> None:
    data = vnncomp_file("mnistfc/onnx/mnist-net_256x2.onnx").read_bytes()
    path = tmp_path / "half.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match=re.escape("half.onnx")):
        load_onnx(path)


@pytest.mark.parametrize("data", [b"\xde\xad\xbe\xef" * 64, b"this is not an onnx file\n" * 20, b""])
def test_garbage_file(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "garbage.onnx"
    path.write_bytes(data)
    with pytest.raises(ModelError) as info:
        load_onnx(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weight_names_the_initializer(tmp_path: Path, bad: float) -> None:
    model = small_model()
    w = weights(3, 4)
    w[1, 2] = bad
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    with pytest.raises(ModelError, match=r"initializer 'W'.*NaN or Inf"):
        load_onnx(save(model, tmp_path / "nan.onnx"))


def test_invalid_graph_fails_the_checker(tmp_path: Path) -> None:
    model = small_model()
    model.graph.node[1].input[0] = "undefined"
    with pytest.raises(ModelError, match="invalid ONNX model"):
        load_onnx(save(model, tmp_path / "invalid.onnx"))


def test_two_inputs_or_outputs_are_rejected(tmp_path: Path) -> None:
    model = small_model()
    model.graph.input.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4]))
    with pytest.raises(ModelError, match="2 inputs"):
        load_onnx(save(model, tmp_path / "two_inputs.onnx"))
    model = small_model()
    model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 3]))
    with pytest.raises(ModelError, match="2 outputs"):
        load_onnx(save(model, tmp_path / "two_outputs.onnx"))


@pytest.mark.parametrize(("batch", "match"), [(4, "fixed first dimension 4"), ("N", "not a fixed size")])
def test_input_without_a_batch_dimension_is_rejected(batch: int | str, match: str) -> None:
    x_shape: list[Any] = [4] if batch == 4 else ["features"]
    model = make_model([node("Relu", ["x"])], x_shape, {}, batch=batch)
    with pytest.raises(ModelError, match=match):
        onnx_to_torch(model)


def test_errors_are_uverify_errors() -> None:
    assert issubclass(ModelError, UverifyError)


def test_validation_catches_a_wrong_module() -> None:
    model = small_model()
    imported = onnx_to_torch(model)
    with torch.no_grad():
        imported.module.nodes["gemm_0"].weight[0, 0] += 0.5
    with pytest.raises(ModelError, match=r"max \|diff\|"):
        validate_against_onnxruntime(model, imported.module, np.ones((4, 4), np.float32))


def test_validation_rejects_samples_of_the_wrong_shape(tmp_path: Path) -> None:
    path = save(small_model(), tmp_path / "m.onnx")
    with pytest.raises(ModelError, match="do not fit"):
        import_onnx(path, samples=np.zeros((2, 5), np.float32))


def test_import_onnx_with_samples_bounds_and_metadata(tmp_path: Path) -> None:
    model = small_model()
    model.metadata_props.add(key="uverify.arch", value="mlp")
    path = save(model, tmp_path / "m.onnx")
    imported = import_onnx(path, samples=np.ones(4, np.float32))
    assert imported.metadata == {"uverify.arch": "mlp"}
    assert imported.max_abs_diff is not None and imported.max_abs_diff <= 1e-4
    imported = import_onnx(path, lower=-np.ones(4), upper=np.ones(4), n_random=5, seed=3)
    assert (imported.input_name, imported.output_name, imported.output_shape) == ("x", "y", (3,))
    with pytest.raises(ModelError, match="lower exceeds upper"):
        import_onnx(path, lower=1.0, upper=0.0)


# --------------------------------------------------------------------------------------------------
# Models exported by torch (dynamo exporter, dynamic batch)
# --------------------------------------------------------------------------------------------------


def export(model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    program = torch.onnx.export(
        model.eval(),
        (x,),
        None,
        dynamo=True,
        opset_version=18,
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        input_names=["input"],
        output_names=["logits"],
        verbose=False,
    )
    assert program is not None
    program.save(str(path))
    return path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path, tuple[int, ...]]]:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("exported")
    mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3))
    batch_norm = nn.BatchNorm2d(4)
    cnn = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        batch_norm,
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 1 * 1, 10),
    )
    with torch.no_grad():  # non-trivial running statistics
        batch_norm.running_mean.uniform_(-0.5, 0.5)  # type: ignore[union-attr]
        batch_norm.running_var.uniform_(0.5, 2.0)  # type: ignore[union-attr]
    models: dict[str, tuple[nn.Module, Path, tuple[int, ...]]] = {}
    for name, model, shape in [("mlp", mlp, (6,)), ("cnn", cnn, (1, 6, 6))]:
        path = export(model, torch.rand(2, *shape), folder / f"{name}.onnx")
        models[name] = (model.eval(), path, shape)
    return models


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_torch_export_round_trip(exported: dict[str, tuple[nn.Module, Path, tuple[int, ...]]], name: str) -> None:
    original, path, shape = exported[name]
    imported = import_onnx(path)
    assert imported.input_shape == shape and not imported.fixed_batch
    assert (imported.input_name, imported.output_name) == ("input", "logits")
    x = torch.rand(7, *shape)
    with torch.no_grad():
        assert torch.allclose(imported.module(x), original(x), atol=1e-5)
    traced: Any = torch.jit.trace(imported.module, torch.rand(2, *shape))
    assert torch.allclose(traced(x), imported.module(x))


# --------------------------------------------------------------------------------------------------
# VNN-COMP files (fixed batch of 1)
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["1_1", "1_2", "1_7", "1_9"])
def test_acasxu(net: str) -> None:
    path = vnncomp_file(f"acasxu/onnx/ACASXU_run2a_{net}_batch_2000.onnx")
    imported = import_onnx(path, lower=-0.5, upper=0.5)
    assert imported.input_shape == (1, 1, 5) and imported.output_shape == (5,) and imported.fixed_batch
    # A batch through the module equals onnxruntime run one sample at a time.
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (6, 1, 1, 5)).astype(np.float32)
    with torch.no_grad():
        assert imported.module(torch.from_numpy(x)).shape == (6, 5)
    assert validate_against_onnxruntime(path, imported.module, x, atol=ATOL) <= ATOL


def test_acasxu_counterexamples_reproduce() -> None:
    folder = vnncomp_file("acasxu/counterexamples_vnncomp2022_nnenum")
    files = sorted(folder.glob("*.counterexample"))
    assert files
    for file in files:
        net = re.match(r"(ACASXU_run2a_\d_\d_batch_2000)_prop_\d+", file.stem)
        assert net is not None
        values = dict(re.findall(r"\((\w+) ([-\d.eE+]+)\)", file.read_text()))
        x = np.array([float(values[f"X_{i}"]) for i in range(5)], np.float32).reshape(1, 1, 1, 5)
        y = np.array([float(values[f"Y_{i}"]) for i in range(5)], np.float32)
        module = import_onnx(VNNCOMP / "acasxu" / "onnx" / f"{net.group(1)}.onnx").module
        with torch.no_grad():
            out = module(torch.from_numpy(x))[0].numpy()
        np.testing.assert_allclose(out, y, atol=1e-5)


def test_mnistfc() -> None:
    path = vnncomp_file("mnistfc/onnx/mnist-net_256x2.onnx")
    imported = import_onnx(path)
    assert imported.input_shape == (784, 1) and imported.output_shape == (10,) and imported.fixed_batch
    x = np.random.default_rng(2).uniform(0, 1, (8, 784, 1)).astype(np.float32)
    assert validate_against_onnxruntime(path, imported.module, x, atol=1e-4) <= 1e-4
    traced: Any = torch.jit.trace(imported.module, torch.from_numpy(x[:1]))
    batch = torch.from_numpy(x)
    assert torch.allclose(traced(batch), imported.module(batch))
