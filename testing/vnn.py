"""A tiny ONNX network in VNN-COMP's layout and VNN-LIB 1.0 queries over it, for tests of `uverify.vnn`
and of anything that drives `uverify vnncomp` or `uverify-solver`: real files, written with the onnx
package, whose truth is known from `forward`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["B1", "B2", "W1", "W2", "Weights", "forward", "random_weights", "v1_query", "write_network"]

W1 = np.array([[1.0, -1.0], [0.5, 2.0], [-1.5, 0.5]], dtype=np.float32)  # (hidden, inputs)
B1 = np.array([0.1, -0.2, 0.3], dtype=np.float32)
W2 = np.array([[1.0, -2.0, 0.5], [-1.0, 1.0, 1.0]], dtype=np.float32)  # (outputs, hidden)
B2 = np.array([0.0, 0.2], dtype=np.float32)


Weights = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # W1 (hidden, in), b1, W2 (out, hidden), b2


def random_weights(inputs: int, hidden: int, outputs: int, seed: int) -> Weights:
    """Weights of a random one-hidden-layer ReLU network (float32), for soundness tests."""
    rng = np.random.default_rng(seed)
    return tuple(  # type: ignore[return-value]
        rng.standard_normal(shape).astype(np.float32)
        for shape in ((hidden, inputs), (hidden,), (outputs, hidden), (outputs,))
    )


def forward(x: np.ndarray, weights: Weights | None = None) -> np.ndarray:
    """The network below in numpy (float64): y = W2 relu(W1 x + b1) + b2."""
    w1, b1, w2, b2 = (W1, B1, W2, B2) if weights is None else weights
    h = np.maximum(x @ w1.T.astype(np.float64) + b1, 0.0)
    return h @ w2.T.astype(np.float64) + b2


def write_network(path: Path, *, batch: str | int = 1, weights: Weights | None = None) -> Path:
    """A one-hidden-layer ReLU network with VNN-COMP's layout: input [1, 1, n] (or a dynamic batch);
    by default the 2-input, 2-output one of W1, B1, W2, B2."""
    w1, b1, w2, b2 = (W1, B1, W2, B2) if weights is None else weights
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w1", "b1"], ["h"], transB=1),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], transB=1),
    ]
    inits = [numpy_helper.from_array(a, n) for n, a in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, w1.shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, w2.shape[0]])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def v1_query(lower: list[float], upper: list[float], output: str, outputs: int = 2) -> str:
    """A VNN-LIB 1.0 query: the box [lower, upper] and one output assertion."""
    lines = ["; tiny network", *(f"(declare-const X_{i} Real)" for i in range(len(lower)))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(outputs)]
    for i, (lo, hi) in enumerate(zip(lower, upper, strict=True)):
        lines += [f"(assert (>= X_{i} {lo}))", f"(assert (<= X_{i} {hi}))"]
    lines.append(f"(assert {output})")
    return "\n".join(lines) + "\n"
