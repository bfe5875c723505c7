"""The importer's affine and elementwise ops for real benchmark files (issue 12, item 6), each against
onnxruntime: hand-built graphs (dynamic batch and VNN-COMP's fixed batch of 1), the exporter's
Shape → Gather → Unsqueeze → Concat → Reshape chain, and the onnx package's own node test cases with
their non-data inputs made constants. What would mix samples is refused."""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from uverify.errors import ModelError
from uverify.verifier.onnx_import import ImportedModel, onnx_to_torch, supported_ops, validate_against_onnxruntime

ATOL = 1e-5


def make_model(
    nodes: list[onnx.NodeProto], x_shape: list[int], inits: dict[str, Any] | None = None, *, opset: int = 17,
    batch: str | int = "N",
) -> onnx.ModelProto:  # fmt: skip
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()]
    graph = helper.make_graph(
        nodes,
        "ops",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *x_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=9)
    model = onnx.shape_inference.infer_shapes(model)
    onnx.checker.check_model(model)
    return model


def rand(shape: list[int], n: int = 4, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def check(model: onnx.ModelProto, x: np.ndarray) -> ImportedModel:
    """Import and compare with onnxruntime on the batch x; the traced module must agree too."""
    imported = onnx_to_torch(model)
    assert validate_against_onnxruntime(model, imported.module, x, atol=ATOL) <= ATOL
    traced: Any = torch.jit.trace(imported.module, torch.from_numpy(x))
    assert torch.equal(traced(torch.from_numpy(x)), imported.module(torch.from_numpy(x)))
    return imported


def i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def test_new_ops_are_listed() -> None:
    new = {"Shape", "Slice", "Gather", "Cast", "Neg", "Pow", "ReduceMean", "ReduceSum", "Expand", "Where"}
    assert new | {"Split", "LeakyRelu"} <= set(supported_ops())


@pytest.mark.parametrize("batch", ["N", 1])
def test_shape_gather_unsqueeze_concat_reshape_chain_is_folded(batch: str | int) -> None:
    # torch's `x.view(x.size(0), -1)` as exporters write it
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["r"]),
        helper.make_node("Gemm", ["r", "w"], ["y"], transB=1),
    ]
    inits = {"zero": np.array(0, dtype=np.int64), "axes": i64(0), "minus_one": i64(-1), "w": rand([12], n=3, seed=1)}
    model = make_model(nodes, [3, 2, 2], inits, opset=13, batch=batch)
    imported = check(model, rand([3, 2, 2], n=1 if batch == 1 else 5))
    assert imported.output_shape == (3,)


def test_shape_feeds_constant_of_shape_and_expand() -> None:
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node(
            "ConstantOfShape", ["s"], ["ones"], value=numpy_helper.from_array(np.array([2.0], np.float32))
        ),
        helper.make_node("Mul", ["x", "ones"], ["y"]),
    ]
    check(make_model(nodes, [3, 4], {}, batch=1), rand([3, 4], n=1))


@pytest.mark.parametrize(
    ("starts", "ends", "axes", "steps"),
    [
        ([1], [3], [1], [1]),
        ([0, 1], [4, -1], [2, 1], [2, 1]),
        ([-1], [-100], [2], [-1]),  # a negative step reverses
        ([2], [100], [-1], [3]),
    ],
)
def test_slice(starts: list[int], ends: list[int], axes: list[int], steps: list[int]) -> None:
    inits = {"starts": i64(*starts), "ends": i64(*ends), "axes": i64(*axes), "steps": i64(*steps)}
    check(make_model([helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])], [3, 5], inits),
          rand([3, 5]))  # fmt: skip


def test_slice_of_the_batch_is_refused_but_a_fixed_batch_kept_whole_is_not() -> None:
    inits = {"starts": i64(0), "ends": i64(1), "axes": i64(0)}
    slice_node = helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["y"])
    with pytest.raises(ModelError, match="batch"):
        onnx_to_torch(make_model([slice_node], [3], inits))
    check(make_model([slice_node], [3], inits, batch=1), rand([3], n=1))


@pytest.mark.parametrize(("indices", "axis"), [(i64(2, 0, 1), 1), (np.array(1, dtype=np.int64), 2), (i64(-1), 1)])
def test_gather_with_constant_indices(indices: np.ndarray, axis: int) -> None:
    model = make_model([helper.make_node("Gather", ["x", "i"], ["y"], axis=axis)], [3, 4], {"i": indices})
    check(model, rand([3, 4]))


def test_gather_along_the_batch_is_refused() -> None:
    model = make_model([helper.make_node("Gather", ["x", "i"], ["y"], axis=0)], [3], {"i": i64(0)})
    with pytest.raises(ModelError, match="batch"):
        onnx_to_torch(model)


def test_cast_to_float_is_the_identity_and_to_int_is_refused() -> None:
    check(make_model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.FLOAT)], [3]), rand([3]))
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=TensorProto.INT64), helper.make_node("Cast", ["c"], ["y"], to=1)]
    with pytest.raises(ModelError, match="INT64"):
        onnx_to_torch(make_model(nodes, [3]))


def test_neg_pow_leaky_relu() -> None:
    nodes = [
        helper.make_node("Neg", ["x"], ["n"]),
        helper.make_node("Pow", ["n", "two"], ["p"]),
        helper.make_node("LeakyRelu", ["x"], ["l"], alpha=0.2),
        helper.make_node("Add", ["p", "l"], ["y"]),
    ]
    check(make_model(nodes, [2, 3], {"two": np.array(2.0, np.float32)}), rand([2, 3]))


def test_pow_with_another_exponent_is_refused() -> None:
    model = make_model([helper.make_node("Pow", ["x", "e"], ["y"])], [3], {"e": np.array(3.0, np.float32)})
    with pytest.raises(ModelError, match="exponent"):
        onnx_to_torch(model)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce(op: str, keepdims: int) -> None:
    model = make_model([helper.make_node(op, ["x", "axes"], ["y"], keepdims=keepdims)], [3, 4], {"axes": i64(-1)},
                       opset=18)  # fmt: skip
    check(model, rand([3, 4]))


def test_reduce_over_the_batch_is_refused() -> None:
    model = make_model([helper.make_node("ReduceSum", ["x", "axes"], ["y"])], [3], {"axes": i64(0)}, opset=13)
    with pytest.raises(ModelError, match="batch"):
        onnx_to_torch(model)


def test_expand() -> None:
    model = make_model([helper.make_node("Expand", ["x", "s"], ["y"])], [3, 1], {"s": i64(1, 3, 4)})
    check(model, rand([3, 1]))


def test_where_with_a_constant_condition() -> None:
    condition = np.array([[True, False, True]])
    nodes = [helper.make_node("Where", ["c", "x", "k"], ["w"]), helper.make_node("Where", ["c", "w", "x"], ["y"])]
    inits = {"c": condition, "k": np.array([5.0, -1.0, 2.0], np.float32)}
    check(make_model(nodes, [2, 3], inits), rand([2, 3]))


def test_equal_on_constants_feeds_where() -> None:
    nodes = [helper.make_node("Equal", ["a", "b"], ["c"]), helper.make_node("Where", ["c", "x", "zero"], ["y"])]
    inits = {"a": i64(1, 2, 3), "b": i64(1, 0, 3), "zero": np.array(0.0, np.float32)}
    check(make_model(nodes, [3], inits), rand([3]))


@pytest.mark.parametrize("opset", [13, 18])
def test_split_into_several_used_outputs(opset: int) -> None:
    split = helper.make_node("Split", ["x", "sizes"], ["a", "b", "c"], axis=1)  # sizes as an input since 13
    nodes = [split, helper.make_node("Concat", ["c", "a", "b"], ["y"], axis=1)]
    check(make_model(nodes, [6, 2], {"sizes": i64(1, 2, 3)}, opset=opset), rand([6, 2]))


def test_softmax_over_the_batch_is_refused() -> None:
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=0)], [3])
    with pytest.raises(ModelError, match="batch"):
        onnx_to_torch(model)


# --------------------------------------------------------------------------------------------------
# The onnx package's node test cases, their extra inputs made constants
# --------------------------------------------------------------------------------------------------


def _node_cases(*modules: str) -> dict[str, Any]:
    """The node test cases of a few op modules: importing a module records its cases (collecting all of
    them, `collect_testcases()`, imports every op and takes most of a minute)."""
    import onnx.backend.test.case.node as registry

    for module in modules:
        importlib.import_module(f"onnx.backend.test.case.node.{module}")
    return {case.name: case for case in registry._NodeTestCases if case.model is not None}


_CASES = _node_cases(
    "leakyrelu", "neg", "slice", "gather", "reducemean", "reducesum", "expand", "split", "softmax", "cast"
)
ACCEPTED = [
    "test_leakyrelu",
    "test_leakyrelu_default",
    "test_neg",
    "test_slice_neg",
    "test_slice_end_out_of_bounds",
    "test_gather_1",
    "test_gather_2d_indices",
    "test_reduce_mean_keepdims_random",
    "test_reduce_mean_do_not_keepdims_random",
    "test_reduce_mean_negative_axes_keepdims_random",
    "test_reduce_sum_keepdims_random",
    "test_reduce_sum_do_not_keepdims_random",
    "test_reduce_sum_negative_axes_keepdims_random",
    "test_reduce_sum_empty_axes_input_noop",
    "test_split_equal_parts_2d_opset13",
    "test_split_variable_parts_2d_opset18",
    "test_split_2d_uneven_split_opset18",
    "test_softmax_axis_1",
    "test_softmax_axis_2",
    "test_softmax_default_axis",
]
REFUSED = [
    "test_softmax_axis_0",  # over the batch
    "test_slice",  # slices the batch
    "test_gather_0",  # gathers along the batch
    "test_reduce_sum_default_axes_keepdims_random",  # reduces the batch
    "test_expand_dim_unchanged",  # expands the batch axis
    "test_slice_start_out_of_bounds",  # an empty result
    "test_cast_FLOAT_to_DOUBLE",  # leaves float32
]


def _as_one_input_model(name: str) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """The case's model with every input but the first an initializer (its test value) and, for several
    outputs, a Concat of them in reverse order (so each output is used); with its data and expected output."""
    case = _CASES[name]
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, expected = case.data_sets[0]
    graph = model.graph
    data = np.asarray(inputs[0])
    for value, array in zip(list(graph.input)[1:], inputs[1:], strict=True):
        graph.initializer.append(numpy_helper.from_array(np.asarray(array), value.name))
        graph.input.remove(value)
    dim = graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_param = "N"  # the first axis is the batch
    outputs = [np.asarray(e) for e in expected]
    if len(graph.output) > 1:
        axis = next(a.i for a in graph.node[0].attribute if a.name == "axis")
        names = [o.name for o in graph.output][::-1]
        graph.node.append(helper.make_node("Concat", names, ["joined"], axis=axis))
        del graph.output[:]
        graph.output.append(helper.make_tensor_value_info("joined", TensorProto.FLOAT, None))
        outputs = [np.concatenate(outputs[::-1], axis=axis)]
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    return model, data, outputs[0]


@pytest.mark.parametrize("name", ACCEPTED)
def test_onnx_node_cases(name: str) -> None:
    model, data, expected = _as_one_input_model(name)
    imported = check(model, data)
    got = imported.module(torch.from_numpy(data)).numpy()
    np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", REFUSED)
def test_onnx_node_cases_that_mix_samples_are_empty_or_leave_float32_are_refused(name: str) -> None:
    model, _, _ = _as_one_input_model(name)
    with pytest.raises(ModelError):
        onnx_to_torch(model)
