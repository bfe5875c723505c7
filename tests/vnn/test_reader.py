"""The VNN-LIB reader: 1.0 and 2.0 files through the vnnlib package, into `Property`, and its one-line errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from uverify.errors import UverifyError
from uverify.testing.vnn import v1_query
from uverify.vnn.reader import VnnlibError, parse_vnnlib, read_vnnlib, to_vnnlib2

V2_HEADER = "(vnnlib-version <2.0>)\n(declare-network net (declare-input X real [1,3]) (declare-output Y real [2]))\n"


def test_v1_box_and_output_rows() -> None:
    query = parse_vnnlib(v1_query([-1, 0.5], [1e-1, 2], "(>= Y_0 Y_1)"))
    assert query.version == "1.0" and query.num_inputs == 2 and query.num_outputs == 2
    (prop,) = query.properties
    (box,) = prop.boxes
    np.testing.assert_array_equal(box.lower, [-1.0, 0.5])
    np.testing.assert_array_equal(box.upper, [0.1, 2.0])
    (conj,) = prop.violation
    np.testing.assert_array_equal(conj.C, [[-1.0, 1.0]])  # Y_0 >= Y_1  ⇔  -Y_0 + Y_1 <= 0
    np.testing.assert_array_equal(conj.d, [0.0])


def test_v1_numbers_keep_their_value_and_lines_their_numbers() -> None:
    text = v1_query([-1.5e-3, 0], [2.5e2, 1], "(<= (+ Y_0 (* 3 Y_1)) -7)")
    rewritten = to_vnnlib2(text)
    assert len(rewritten.split("\n")) == len(text.split("\n"))
    assert "X[0]" in rewritten and "-0.0015" in rewritten and "250.0" in rewritten and "(* 3.0 Y[1])" in rewritten
    (prop,) = parse_vnnlib(text).properties
    np.testing.assert_array_equal(prop.boxes[0].lower, [-0.0015, 0.0])
    np.testing.assert_array_equal(prop.violation[0].C, [[1.0, 3.0]])
    np.testing.assert_array_equal(prop.violation[0].d, [-7.0])
    # a parse error points at the line of the original file
    broken = text.replace("(assert (<= X_1 1))", "(assert (<= X_1 ))")
    with pytest.raises(VnnlibError, match="line 9"):
        parse_vnnlib(broken)


def test_v2_tensor_indices_are_flattened_row_major() -> None:
    text = V2_HEADER + "".join(f"(assert (>= X[0,{i}] 0.0))(assert (<= X[0,{i}] {i + 1}.0))" for i in range(3))
    text += "(assert (or (<= Y[1] -1.0) (and (>= Y[0] 2.0) (<= (- Y[0] Y[1]) 0.5))))"
    query = parse_vnnlib(text)
    assert query.version == "2.0" and query.network == "net" and query.input.shape == (1, 3)
    (prop,) = query.properties
    np.testing.assert_array_equal(prop.boxes[0].upper, [1.0, 2.0, 3.0])
    first, second = prop.violation
    np.testing.assert_array_equal(first.C, [[0.0, 1.0]])
    np.testing.assert_array_equal(first.d, [-1.0])
    np.testing.assert_array_equal(second.C, [[-1.0, 0.0], [1.0, -1.0]])
    np.testing.assert_array_equal(second.d, [-2.0, 0.5])
    assert prop.violated_by(np.array([[2.2, 2.0], [0.0, -2.0], [1.0, 0.0]])).tolist() == [True, True, False]


def test_disjuncts_with_their_own_boxes_become_properties() -> None:
    text = v1_query([0, 0], [1, 1], "(or (and (<= X_0 0.5) (>= Y_0 1)) (and (>= X_0 0.5) (<= Y_1 0)))")
    query = parse_vnnlib(text)
    assert len(query.properties) == 2
    (a,), (b,) = (p.boxes for p in query.properties)
    assert (a.lower[0], a.upper[0], b.lower[0], b.upper[0]) == (0.0, 0.5, 0.5, 1.0)


def test_a_disjunct_without_output_constraint_is_unsafe_everywhere() -> None:
    query = parse_vnnlib(v1_query([0, 0], [1, 1], "(or (<= Y_0 -100) (and))").replace("(and)", "(<= X_0 0.25)"))
    holds_anywhere = [p for p in query.properties if p.boxes[0].upper[0] == 0.25]
    assert holds_anywhere and holds_anywhere[0].violated_by(np.array([[5.0, 5.0]]))[0]


def test_strict_and_equal_comparisons() -> None:
    (prop,) = parse_vnnlib(v1_query([0, 0], [1, 1], "(and (< Y_0 Y_1) (= Y_1 2))")).properties
    np.testing.assert_array_equal(prop.violation[0].C, [[1.0, -1.0], [0.0, 1.0], [0.0, -1.0]])


def test_gzipped_files(tmp_path: Path) -> None:
    path = tmp_path / "q.vnnlib.gz"
    path.write_bytes(gzip.compress(v1_query([0, 0], [1, 1], "(>= Y_0 0)").encode()))
    assert read_vnnlib(path).properties[0].boxes[0].upper.tolist() == [1.0, 1.0]


BAD = {
    "does not parse": ("(assert (<= X_0", "does not parse"),
    "unknown variable": (v1_query([0, 0], [1, 1], "(>= Y_2 0)"), "out of bounds"),
    "undeclared tensor": (V2_HEADER + "(assert (<= Z[0] 1.0))", "Undeclared"),
    "empty box": (v1_query([0, 1], [1, 0], "(>= Y_0 0)"), "empty input box"),
    "unbounded input": (v1_query([0, 0], [1, 1], "(>= Y_0 0)").replace("(assert (>= X_1 0))", ""), "no lower bound"),
    "mixed constraint": (v1_query([0, 0], [1, 1], "(<= X_0 Y_0)"), "mixing inputs and outputs"),
    "not a box": (v1_query([0, 0], [1, 1], "(<= (+ X_0 X_1) 1)"), "not a box"),
    "not equal": (v1_query([0, 0], [1, 1], "(distinct Y_0 Y_1)").replace("distinct", "!="), "!= is not supported"),
    "non-linear": (V2_HEADER + "(assert (<= (* Y[0] Y[1]) 1.0))", "[Nn]on-linear"),
    "other names": ("(declare-const in_0 Real)", "expected X_i"),
    "two networks": (
        V2_HEADER + "(declare-network g (declare-input A real [1]) (declare-output B real [1]))(assert (<= A[0] 1.0))",
        "2 networks",
    ),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_bad_input_is_one_line(case: str) -> None:
    text, match = BAD[case]
    with pytest.raises(VnnlibError, match=match) as info:
        parse_vnnlib(text, "q.vnnlib")
    assert isinstance(info.value, UverifyError) and "\n" not in str(info.value)


def test_bad_files(tmp_path: Path) -> None:
    fake = tmp_path / "q.vnnlib.gz"
    fake.write_text("(declare-const X_0 Real)")
    with pytest.raises(VnnlibError, match="not a gzip file"):
        read_vnnlib(fake)
    truncated = tmp_path / "t.vnnlib.gz"
    truncated.write_bytes(gzip.compress(b"(declare-const X_0 Real)" * 50)[:30])
    with pytest.raises(VnnlibError, match="gzip"):
        read_vnnlib(truncated)
    with pytest.raises(VnnlibError, match="no such file"):
        read_vnnlib(tmp_path / "missing.vnnlib")


def test_shipped_vnncomp_files(vnncomp_root: Path) -> None:
    root = vnncomp_root
    acas = read_vnnlib(root / "acasxu" / "vnnlib" / "prop_3.vnnlib")
    (prop,) = acas.properties
    np.testing.assert_array_equal(prop.boxes[0].lower, [-0.303531156, -0.009549297, 0.493380324, 0.3, 0.3])
    assert prop.violation[0].C.shape == (4, 5)  # COC minimal: Y_0 <= Y_j for j = 1..4
    mnist = read_vnnlib(root / "mnistfc" / "vnnlib" / "prop_0_0.05.vnnlib")
    (prop,) = mnist.properties
    assert mnist.num_inputs == 784 and len(prop.violation) == 9
    widths = prop.boxes[0].upper - prop.boxes[0].lower
    assert widths.max() == pytest.approx(0.1, abs=1e-6) and widths.min() >= 0
