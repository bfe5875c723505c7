"""`Property` → VNN-LIB text, and a check's properties → a benchmark folder in VNN-COMP's layout.

Two dialects, one content:

* VNN-LIB 1.0 (`(declare-const X_0 Real)` …), what `uverify check --export-vnnlib` writes: the dialect
  α,β-CROWN, NeuralSAT, Marabou and every VNN-COMP harness read. Each input bound is its own
  `(assert (<= X_i v))`; the output condition is one `(assert (or (and …) …))`, each comparison in
  the simplest form the competition's parsers know — `(<= Y_a Y_b)` for a row `y_a − y_b <= 0`,
  `(<= Y_a v)` / `(>= Y_a v)` for a bound on one output — and `(<= (+ (* c Y_i) …) v)` otherwise.
* VNN-LIB 2.0 (`(vnnlib-version <2.0>)`, one `declare-network`), what the external-solver backend hands
  a chapter-5 solver (`vnn/external.py`), with the network's own input and output shapes.

Several boxes become one disjunction of box conjunctions (the reader multiplies it back out).

Numbers are written exactly: every value is a float64 (the check's float32 box bounds are exact in
float64), written as the shortest decimal that reads back to the same float64, in plain positional
form (the 2.0 grammar has no exponent; 1.0 parsers differ on it). `reader.read_vnnlib` gets back
the same bits, which the tests check.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Protocol

import numpy as np

from uverify.errors import UverifyError
from uverify.files import atomic_write, staged_dir
from uverify.verifier.property import Box, Conjunction, Property

__all__ = [
    "EXPECTED_FILE",
    "INSTANCES_FILE",
    "ExportedProperty",
    "check_benchmark_folder",
    "format_number",
    "format_vnnlib",
    "property_file_name",
    "write_benchmark",
    "write_vnnlib",
]

PathLike = str | os.PathLike[str]
INSTANCES_FILE = "instances.csv"
EXPECTED_FILE = "expected.csv"  # what `uverify check` decided, as a ground truth `uverify vnncomp` reads
Var = Callable[[int], str]  # flat index → the variable as the dialect writes it
_EXPECTED = {"verified": "unsat", "falsified": "sat", "misclassified": "sat", "unknown": "unknown"}


def format_number(value: float) -> str:
    """`value` as a plain decimal that reads back to the same float64 (no exponent, always a point)."""
    value = float(value)
    if not math.isfinite(value):
        raise UverifyError(f"VNN-LIB has no literal for {value}")
    text = format(Decimal(repr(value + 0.0)), "f")  # + 0.0: no "-0.0"
    return text if "." in text else text + ".0"


def _term(coeff: float, var: str) -> str:
    return var if coeff == 1.0 else f"(* {format_number(coeff)} {var})"


def _row(coeffs: np.ndarray, bound: float, var: Var) -> str:
    """One row `coeffs · y <= bound` as a comparison, in the simplest form (see the module docstring)."""
    nz = [int(i) for i in np.flatnonzero(coeffs)]
    if len(nz) == 2 and bound == 0.0 and sorted(coeffs[nz].tolist()) == [-1.0, 1.0]:
        pos, neg = (nz[0], nz[1]) if coeffs[nz[0]] == 1.0 else (nz[1], nz[0])
        return f"(<= {var(pos)} {var(neg)})"
    if len(nz) == 1 and abs(coeffs[nz[0]]) == 1.0:
        op = "<=" if coeffs[nz[0]] > 0 else ">="
        value = bound if coeffs[nz[0]] > 0 else -bound
        return f"({op} {var(nz[0])} {format_number(value)})"
    if not nz:  # 0 <= bound: a row that always holds (or never, for a negative bound)
        return f"(<= 0.0 {format_number(bound)})"
    terms = [_term(float(coeffs[i]), var(i)) for i in nz]
    lhs = terms[0] if len(terms) == 1 else f"(+ {' '.join(terms)})"
    return f"(<= {lhs} {format_number(bound)})"


def _conjunction(conj: Conjunction, var: Var) -> str:
    rows = [_row(conj.C[r], float(conj.d[r]), var) for r in range(len(conj.d))]
    return f"(and {' '.join(rows)})"


def _box_bounds(box: Box, var: Var) -> list[str]:
    out = []
    for i, (lo, hi) in enumerate(zip(box.lower.tolist(), box.upper.tolist(), strict=True)):
        out += [f"(>= {var(i)} {format_number(lo)})", f"(<= {var(i)} {format_number(hi)})"]
    return out


def format_vnnlib(
    prop: Property,
    *,
    version: str = "1.0",
    input_shape: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    network: str = "N",
    comments: Sequence[str] = (),
) -> str:
    """The VNN-LIB text of `prop` (its unsafe set: some box, some disjunct). `input_shape` and
    `output_shape` (2.0 only) default to flat; their sizes must match the property's."""
    in_shape = tuple(input_shape) if input_shape is not None else (prop.num_inputs,)
    out_shape = tuple(output_shape) if output_shape is not None else (prop.num_outputs,)
    if math.prod(in_shape) != prop.num_inputs or math.prod(out_shape) != prop.num_outputs:
        raise UverifyError(
            f"shapes {list(in_shape)} and {list(out_shape)} do not hold the property's "
            f"{prop.num_inputs} inputs and {prop.num_outputs} outputs"
        )
    lines = [f"; {c}" for text in comments for c in text.splitlines()]
    if version == "1.0":
        x_var: Var = lambda i: f"X_{i}"  # noqa: E731
        y_var: Var = lambda j: f"Y_{j}"  # noqa: E731
        lines += [f"(declare-const X_{i} Real)" for i in range(prop.num_inputs)]
        lines += [f"(declare-const Y_{j} Real)" for j in range(prop.num_outputs)]
    elif version == "2.0":

        def multi(name: str, shape: tuple[int, ...]) -> Var:
            if not shape:
                return lambda k: name
            return lambda k: f"{name}[{','.join(str(int(i)) for i in np.unravel_index(k, shape))}]"

        x_var, y_var = multi("X", in_shape), multi("Y", out_shape)
        dims = lambda s: f"[{','.join(map(str, s))}]"  # noqa: E731
        lines += [
            "(vnnlib-version <2.0>)",
            f"(declare-network {network} (declare-input X real {dims(in_shape)}) "
            f"(declare-output Y real {dims(out_shape)}))",
        ]
    else:
        raise UverifyError(f"VNN-LIB version {version!r}: uverify writes 1.0 and 2.0")
    if len(prop.boxes) == 1:
        lines += [f"(assert {b})" for b in _box_bounds(prop.boxes[0], x_var)]
    else:
        boxes = [f"(and {' '.join(_box_bounds(box, x_var))})" for box in prop.boxes]
        lines.append("(assert (or\n    " + "\n    ".join(boxes) + "\n))")
    disjuncts = [_conjunction(conj, y_var) for conj in prop.violation]
    lines.append("(assert (or\n    " + "\n    ".join(disjuncts) + "\n))")
    return "\n".join(lines) + "\n"


def write_vnnlib(
    path: PathLike,
    prop: Property,
    *,
    version: str = "1.0",
    input_shape: Sequence[int] | None = None,
    output_shape: Sequence[int] | None = None,
    network: str = "N",
    comments: Sequence[str] = (),
) -> Path:
    """Write `format_vnnlib(prop, ...)` to `path` atomically."""
    text = format_vnnlib(
        prop, version=version, input_shape=input_shape, output_shape=output_shape, network=network, comments=comments
    )
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


class ExportedProperty(Protocol):
    """One (sample, epsilon) property of a check, with the check's verdict on it
    (`verifier.check.BallProperty`)."""

    @property
    def sample_id(self) -> int: ...

    @property
    def epsilon(self) -> float: ...

    @property
    def label(self) -> int: ...

    @property
    def prop(self) -> Property: ...

    @property
    def verdict(self) -> str: ...


def property_file_name(item: ExportedProperty) -> str:
    """`idID_epsE.vnnlib`, E as Python writes the float (so distinct epsilons never share a name)."""
    return f"id{item.sample_id}_eps{item.epsilon!r}.vnnlib"


def check_benchmark_folder(folder: PathLike) -> Path:
    """`folder` as `write_benchmark` may replace it (new, empty, or an earlier export), checked before a
    long check rather than after it; a one-line `UverifyError` otherwise."""
    target = Path(folder)
    if target.exists() and not target.is_dir():
        raise UverifyError(f"--export-vnnlib {target}: exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not (target / INSTANCES_FILE).is_file():
        raise UverifyError(f"--export-vnnlib {target}: the folder holds other files; give a new or empty folder")
    return target


def write_benchmark(folder: PathLike, model: PathLike, properties: Sequence[ExportedProperty], timeout: float) -> Path:
    """A self-contained benchmark folder in VNN-COMP's layout, replacing `folder` whole:

        onnx/MODEL.onnx          a copy of the model
        vnnlib/idID_epsE.vnnlib  one VNN-LIB 1.0 file per property
        instances.csv            onnx,vnnlib,timeout rows (paths relative to the folder), no header
        expected.csv             onnx,vnnlib,expected (sat/unsat/unknown),id,epsilon,check_verdict

    `folder` must be new, empty, or an earlier export (it has instances.csv): nothing else is replaced."""
    target = check_benchmark_folder(folder)
    if not (math.isfinite(timeout) and timeout > 0):
        raise UverifyError(f"the export's timeout must be a positive number of seconds, got {timeout}")
    model = Path(model)
    onnx_name = f"onnx/{model.name}"
    instances, expected = io.StringIO(), io.StringIO()
    rows, truth = csv.writer(instances, lineterminator="\n"), csv.writer(expected, lineterminator="\n")
    truth.writerow(["onnx", "vnnlib", "expected", "id", "epsilon", "check_verdict"])
    with staged_dir(target) as staging:
        (staging / "onnx").mkdir()
        (staging / "vnnlib").mkdir()
        shutil.copyfile(model, staging / onnx_name)
        for item in properties:
            name = f"vnnlib/{property_file_name(item)}"
            comment = (
                f"uverify check: sample {item.sample_id}, label {item.label}, epsilon {item.epsilon!r}, "
                f"L_inf ball within the input domain; unsafe: another class scores at least the label. "
                f"uverify's verdict: {item.verdict}"
            )
            (staging / name).write_text(format_vnnlib(item.prop, comments=[comment]), encoding="utf-8")
            rows.writerow([onnx_name, name, f"{timeout:g}"])
            truth.writerow([onnx_name, name, _EXPECTED[item.verdict], item.sample_id, repr(item.epsilon), item.verdict])
        (staging / INSTANCES_FILE).write_text(instances.getvalue(), encoding="utf-8")
        (staging / EXPECTED_FILE).write_text(expected.getvalue(), encoding="utf-8")
    return target
