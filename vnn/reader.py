"""VNN-LIB files → `Property`, parsed by the `vnnlib` package (the VNN-LIB 2.0 parser VNN-COMP pins).

A VNN-LIB file asserts the *unsafe* set: its assertions' conjunction, over the input X and the output Y
of one network. It is read as a disjunction of conjunctions (the package's `to_dnf` of each assertion,
multiplied out across assertions); each conjunction splits into bounds on single inputs (an input box)
and linear inequalities over the outputs (one row of `C y <= d` each). Conjunctions with the same box
share it; boxes with the same output disjuncts form one `Property`. The query is `sat` when any of its
properties is, `unsat` when all are.

VNN-LIB 1.0 (`(declare-const X_0 Real)`, the files of VNN-COMP 2021–2025): the `vnnlib` 1.x package
parses only 2.0 (its 0.0.1 release read 1.0 and cannot be installed beside it), so a 1.0 file is first
rewritten token by token into 2.0 — its declarations become one `declare-network` with `X real [n]` and
`Y real [m]`, `X_i` becomes `X[i]`, `=` becomes `==`, a number in exponent form or without a fraction becomes a plain
decimal of the same value — on the same lines, so the package's line numbers still point into the file;
the package then parses and type-checks it like any 2.0 file.

What a file may hold beyond boxes and linear output constraints is refused with one line: constraints
mixing inputs and outputs, linear constraints over several inputs, `!=`, hidden nodes, several networks
or several inputs/outputs, unbounded inputs. A strict `<` is read as `<=` (the closure): an `unsat` over
the closure holds for the open set, and a `sat` is only claimed for a point with every row strictly
violated (see `decide.py`), so both stay sound.
"""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
import re
import zlib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from uverify.errors import UverifyError, one_line
from uverify.verifier.property import Box, Conjunction, Property, PropertyError

__all__ = [
    "MAX_DISJUNCTS",
    "Declaration",
    "Query",
    "VnnlibError",
    "parse_vnnlib",
    "read_text",
    "read_vnnlib",
    "to_vnnlib2",
]

PathLike = str | os.PathLike[str]
# Multiplying out the assertions' disjunctions can explode; past this many conjunctions, refuse.
MAX_DISJUNCTS = 100_000
_GZIP_MAGIC = b"\x1f\x8b"


class VnnlibError(UverifyError):
    """A VNN-LIB file that does not parse, or says something uverify cannot check as asked."""


@dataclass(frozen=True)
class Declaration:
    """One declared tensor of the query's network, as the file declares it."""

    name: str
    element_type: str  # the standard's spelling: real, float32, ...
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class Query:
    """A VNN-LIB file read: its one network's input and output, and the unsafe set."""

    source: str  # the path, or "<string>"
    version: str  # "1.0" or "2.0": what the file was written in
    network: str  # the declared network's name (1.0 files have none: "N")
    input: Declaration
    output: Declaration
    properties: tuple[Property, ...]  # sat iff any is sat

    @property
    def num_inputs(self) -> int:
        return self.input.size

    @property
    def num_outputs(self) -> int:
        return self.output.size


def read_text(path: PathLike) -> str:
    """A file's text, gunzipped when it is gzip (a `.gz` name must be gzip); one line on failure."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        raise VnnlibError(f"{file}: no such file") from None
    except OSError as exc:
        raise VnnlibError(f"cannot read {file}: {exc.strerror or exc}") from None
    if file.suffix == ".gz" or data[:2] == _GZIP_MAGIC:
        if data[:2] != _GZIP_MAGIC:
            raise VnnlibError(f"{file} is named .gz but is not a gzip file")
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise VnnlibError(f"{file} is not a valid gzip file: {one_line(exc)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VnnlibError(f"{file} is not UTF-8 text (byte {exc.start})") from None


def read_vnnlib(path: PathLike) -> Query:
    """Read a VNN-LIB 1.0 or 2.0 file (or its .gz) into a `Query`; a `VnnlibError` says what is wrong."""
    return parse_vnnlib(read_text(path), str(path))


# --------------------------------------------------------------------------------------------------
# VNN-LIB 1.0 → 2.0, token by token
# --------------------------------------------------------------------------------------------------

_DECLARE_CONST = re.compile(r"\(\s*declare-const\s+([^\s()]+)\s+([^\s()]+)\s*\)")
_V1_VARIABLE = re.compile(r"^([XY])_(\d+)$")
_V1_REFERENCE = re.compile(r"(?<![\w.\[])([XY])_(\d+)(?![\w.])")
# A standalone numeric literal (between blanks or parentheses), in any form SMT-LIB readers accept.
_NUMBER = re.compile(r"(?<=[\s(])([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?=[\s)]|$)")
_V2_PLAIN = re.compile(r"-?\d+\.\d+")
_COMMENT = re.compile(r";[^\n]*")
_V1_EQUAL = re.compile(r"\(\s*=(?=[\s(])")  # SMT-LIB's `(= a b)` is 2.0's `(== a b)`


def _is_v1(text: str) -> bool:
    body = _COMMENT.sub("", text)
    return "(vnnlib-version" not in body and _DECLARE_CONST.search(body) is not None


def _plain_decimal(token: str) -> str:
    """The literal's exact value as `-?digits.digits`, the only form the 2.0 grammar has."""
    if _V2_PLAIN.fullmatch(token):
        return token
    try:
        value = Decimal(token)
    except InvalidOperation:  # the pattern admits only numbers; kept for safety
        return token
    text = format(value, "f")
    return text if "." in text else text + ".0"


def to_vnnlib2(text: str, source: str = "<string>") -> str:
    """Rewrite a VNN-LIB 1.0 query as 2.0, line for line (see the module docstring)."""
    inputs: set[int] = set()
    outputs: set[int] = set()
    for match in _DECLARE_CONST.finditer(_COMMENT.sub("", text)):
        name, kind = match.group(1), match.group(2)
        variable = _V1_VARIABLE.match(name)
        if variable is None:
            raise VnnlibError(f"{source}: VNN-LIB 1.0 variable {name!r}: expected X_i (inputs) or Y_i (outputs)")
        if kind.lower() != "real":
            raise VnnlibError(f"{source}: VNN-LIB 1.0 variable {name} has sort {kind!r}; expected Real")
        (inputs if variable.group(1) == "X" else outputs).add(int(variable.group(2)))
    for letter, indices in (("X", inputs), ("Y", outputs)):
        if not indices:
            raise VnnlibError(f"{source}: declares no {letter}_i variables")
        if indices != set(range(len(indices))):
            missing = min(set(range(max(indices) + 1)) - indices)
            raise VnnlibError(f"{source}: declares {letter}_0..{letter}_{max(indices)} without {letter}_{missing}")

    lines = []
    for line in text.split("\n"):
        code, _, comment = line.partition(";")
        code = _DECLARE_CONST.sub("", code)
        code = _NUMBER.sub(lambda m: _plain_decimal(m.group(1)), " " + code)[1:]
        code = _V1_REFERENCE.sub(lambda m: f"{m.group(1)}[{m.group(2)}]", code)
        code = _V1_EQUAL.sub("(==", code)
        lines.append(code + (";" + comment if _ else ""))
    header = (
        f"(vnnlib-version <2.0>) (declare-network N (declare-input X real [{len(inputs)}]) "
        f"(declare-output Y real [{len(outputs)}])) "
    )
    return header + "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Parsing and conversion to properties
# --------------------------------------------------------------------------------------------------


def _package() -> Any:
    try:
        import vnnlib
    except ImportError as exc:  # a broken install, not the user's file
        raise VnnlibError(f"the vnnlib package cannot be imported: {one_line(exc)}") from None
    return vnnlib


def _explain(exc: BaseException) -> str:
    """The package's error, whichever of its two forms (plain text, or a JSON report), on one line."""
    body = str(exc)
    try:
        report = json.loads(body)
    except ValueError:
        return one_line(body)
    errors = report.get("errors") if isinstance(report, dict) else None
    if not isinstance(errors, list) or not errors:
        return one_line(body)
    first = errors[0] if isinstance(errors[0], dict) else {}
    parts = [f"line {first['line']}"] if first.get("line") is not None else []
    parts += [str(first[key]) for key in ("message", "hint") if first.get(key)]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return one_line(": ".join(parts) + more)


_ELEMENT_TYPES = {
    "Real": "real",
    "F16": "float16",
    "F32": "float32",
    "F64": "float64",
    "BF16": "bfloat16",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "Bool": "bool",
}


def _declaration(definition: Any, source: str) -> Declaration:
    kind = _ELEMENT_TYPES.get(definition.dtype.name)
    if kind is None:
        raise VnnlibError(
            f"{source}: {definition.name} has an element type uverify does not know ({definition.dtype.name})"
        )
    return Declaration(str(definition.name), kind, tuple(int(d) for d in definition.shape))


@dataclass
class _Part:
    """One conjunction of comparisons, converted: input bounds and output rows (C y <= d)."""

    lower: dict[int, float]
    upper: dict[int, float]
    rows: list[tuple[dict[int, float], float]]
    infeasible: bool = False


class _Converter:
    def __init__(self, query: Any, source: str, network: Any) -> None:
        self.source = source
        self.input = network.inputs[0]
        self.output = network.outputs[0]
        self.input_shape = tuple(int(d) for d in self.input.shape)
        self.output_shape = tuple(int(d) for d in self.output.shape)

    def _flat(self, var: Any) -> tuple[str, int]:
        shape = self.input_shape if var.name == self.input.name else self.output_shape
        kind = "input" if var.name == self.input.name else "output" if var.name == self.output.name else None
        if kind is None:
            raise VnnlibError(f"{self.source}: line {var.line}: {var.name} is neither the input nor the output")
        indices = [int(i) for i in var.indices]
        if not shape:
            return kind, 0
        return kind, int(np.ravel_multi_index(indices, shape))

    def linear(self, comparison: Any) -> tuple[dict[str, dict[int, float]], float]:
        """lhs - rhs as (coefficients per kind and flat index, constant)."""
        coeffs: dict[str, dict[int, float]] = {"input": {}, "output": {}}
        constant = 0.0
        for side, sign in ((comparison.lhs, 1.0), (comparison.rhs, -1.0)):
            try:
                expr = side.to_linear_expr()
            except Exception as exc:  # the package raises VNNLibException for non-linear terms
                raise VnnlibError(f"{self.source}: {one_line(str(comparison))}: {_explain(exc)}") from None
            constant += sign * float(expr.constant)
            for term in expr.terms:
                kind, index = self._flat(term.var)
                row = coeffs[kind]
                row[index] = row.get(index, 0.0) + sign * float(term.coeff)
        for row in coeffs.values():
            for index in [i for i, c in row.items() if c == 0.0]:
                del row[index]
        return coeffs, constant

    def part(self, conjunction: Any) -> _Part:
        part = _Part({}, {}, [])
        for comparison in conjunction:
            kind = type(comparison).__name__
            if kind == "NotEqual":
                raise VnnlibError(f"{self.source}: {one_line(str(comparison))}: != is not supported")
            coeffs, constant = self.linear(comparison)  # lhs - rhs = a·v + constant
            if kind in ("GreaterEqual", "GreaterThan"):  # rhs - lhs <= 0
                coeffs = {k: {i: -c for i, c in row.items()} for k, row in coeffs.items()}
                constant = -constant
            forms = [(coeffs, constant)]
            if kind == "Equal":
                forms.append(({k: {i: -c for i, c in row.items()} for k, row in coeffs.items()}, -constant))
            elif kind not in ("LessEqual", "LessThan", "GreaterEqual", "GreaterThan"):
                raise VnnlibError(f"{self.source}: {one_line(str(comparison))}: unsupported comparison {kind}")
            for form, const in forms:
                self._add(part, form, const, comparison)
        return part

    def _add(self, part: _Part, coeffs: dict[str, dict[int, float]], constant: float, comparison: Any) -> None:
        """Add `a·x + b·y + constant <= 0` to the conjunction."""
        xs, ys = coeffs["input"], coeffs["output"]
        if xs and ys:
            raise VnnlibError(
                f"{self.source}: {one_line(str(comparison))}: constraints mixing inputs and outputs are not supported"
            )
        if ys:
            part.rows.append((ys, -constant))
        elif len(xs) > 1:
            raise VnnlibError(
                f"{self.source}: {one_line(str(comparison))}: a constraint over several inputs is not a box; "
                "only bounds on single inputs are supported"
            )
        elif xs:
            ((index, a),) = xs.items()
            bound = -constant / a + 0.0  # + 0.0: no -0.0 in messages
            if a > 0:
                part.upper[index] = min(part.upper.get(index, math.inf), bound)
            else:
                part.lower[index] = max(part.lower.get(index, -math.inf), bound)
        elif constant > 0:  # 0 <= -constant is false: this conjunction is empty
            part.infeasible = True


def parse_vnnlib(text: str, source: str = "<string>") -> Query:
    """Parse VNN-LIB text (1.0 or 2.0) into a `Query`; see the module docstring."""
    version = "1.0" if _is_v1(text) else "2.0"
    if version == "1.0":
        text = to_vnnlib2(text, source)
    vnnlib = _package()
    try:
        parsed = vnnlib.parse_query_string(text)
    except Exception as exc:  # VNNLibException carries the parser's or type checker's report
        raise VnnlibError(f"{source} does not parse: {_explain(exc)}") from None
    if parsed is None:
        raise VnnlibError(f"{source} does not parse (the vnnlib package gave no reason)")
    networks = list(parsed.networks)
    if len(networks) != 1:
        raise VnnlibError(f"{source} declares {len(networks)} networks; uverify checks queries over one")
    network = networks[0]
    if len(network.inputs) != 1 or len(network.outputs) != 1:
        raise VnnlibError(
            f"{source}: network {network.name} declares {len(network.inputs)} inputs and "
            f"{len(network.outputs)} outputs; uverify checks networks with one of each"
        )
    if len(network.hidden):
        raise VnnlibError(f"{source}: hidden-node constraints (declare-hidden) are not supported")
    converter = _Converter(parsed, source, network)
    input_decl = _declaration(network.inputs[0], source)
    output_decl = _declaration(network.outputs[0], source)

    shared = _Part({}, {}, [])
    choices: list[list[_Part]] = []
    count = 1
    for assertion in parsed.assertions:
        try:
            dnf = assertion.expr.to_dnf()
        except Exception as exc:
            raise VnnlibError(f"{source}: {_explain(exc)}") from None
        parts = [p for p in (converter.part(conj) for conj in dnf) if not p.infeasible]
        if not parts:
            shared.infeasible = True
        elif len(parts) == 1:
            _merge(shared, parts[0])
        else:
            choices.append(parts)
            count *= len(parts)
            if count > MAX_DISJUNCTS:
                raise VnnlibError(f"{source}: the assertions multiply out to more than {MAX_DISJUNCTS} disjuncts")
    properties = _properties(shared, choices, input_decl.size, output_decl.size, source)
    return Query(source, version, str(network.name), input_decl, output_decl, properties)


def _merge(into: _Part, part: _Part) -> None:
    for index, value in part.lower.items():
        into.lower[index] = max(into.lower.get(index, -math.inf), value)
    for index, value in part.upper.items():
        into.upper[index] = min(into.upper.get(index, math.inf), value)
    into.rows.extend(part.rows)
    into.infeasible |= part.infeasible


def _properties(
    shared: _Part, choices: list[list[_Part]], num_inputs: int, num_outputs: int, source: str
) -> tuple[Property, ...]:
    base_lower = np.full(num_inputs, -np.inf)
    base_upper = np.full(num_inputs, np.inf)
    for index, value in shared.lower.items():
        base_lower[index] = max(base_lower[index], value)
    for index, value in shared.upper.items():
        base_upper[index] = min(base_upper[index], value)
    empty = np.flatnonzero(base_lower > base_upper)
    if len(empty) or shared.infeasible:
        where = f": X[{empty[0]}] has lower {base_lower[empty[0]]} > upper {base_upper[empty[0]]}" if len(empty) else ""
        raise VnnlibError(f"{source}: the unsafe set is empty{where} (empty input box)")

    by_box: dict[tuple[bytes, bytes], tuple[Box, list[Conjunction]]] = {}
    for combination in itertools.product(*choices):
        lower, upper = base_lower.copy(), base_upper.copy()
        rows = list(shared.rows)
        for part in combination:
            for index, value in part.lower.items():
                lower[index] = max(lower[index], value)
            for index, value in part.upper.items():
                upper[index] = min(upper[index], value)
            rows.extend(part.rows)
        if np.any(lower > upper):
            continue  # this disjunct's own bounds contradict the others': it holds for no input
        unbounded = np.flatnonzero(~np.isfinite(lower) | ~np.isfinite(upper))
        if len(unbounded):
            i = int(unbounded[0])
            side = "lower" if not np.isfinite(lower[i]) else "upper"
            raise VnnlibError(f"{source}: input X[{i}] has no {side} bound; uverify needs a bounded input box")
        key = (lower.tobytes(), upper.tobytes())
        if key not in by_box:
            by_box[key] = (Box(lower, upper), [])
        by_box[key][1].append(_conjunction(rows, num_outputs))
    if not by_box:
        raise VnnlibError(
            f"{source}: the unsafe set is empty: every disjunct's input bounds contradict (empty input box)"
        )

    by_violation: dict[bytes, tuple[list[Box], list[Conjunction]]] = {}
    for box, conjunctions in by_box.values():
        violation = b"|".join(c.C.tobytes() + b"/" + c.d.tobytes() for c in conjunctions)
        by_violation.setdefault(violation, ([], conjunctions))[0].append(box)
    try:
        return tuple(Property(tuple(boxes), tuple(conj)) for boxes, conj in by_violation.values())
    except PropertyError as exc:
        raise VnnlibError(f"{source}: {exc}") from None


def _conjunction(rows: list[tuple[dict[int, float], float]], num_outputs: int) -> Conjunction:
    """`C y <= d` from sparse rows; no rows (any output is unsafe) is the one row 0 <= 0."""
    if not rows:
        return Conjunction(np.zeros((1, num_outputs)), np.zeros(1))
    C = np.zeros((len(rows), num_outputs))
    d = np.zeros(len(rows))
    for r, (coeffs, bound) in enumerate(rows):
        for index, value in coeffs.items():
            C[r, index] = value
        d[r] = bound
    return Conjunction(C, d)
