"""VNN-COMP's files: result files, instance lists, results CSVs and the score.

* A result file's first line is `sat`, `unsat`, `unknown`, `timeout` or `error`; after `sat` comes the
  counterexample, `((X_0 v)` … `(Y_0 v)` … `)`, every value the float32 onnxruntime ran (inputs) or
  returned (outputs), written so that it reads back exactly.
* An instance list is VNN-COMP's `instances.csv` (rows `onnx,vnnlib,timeout`, no header, paths relative
  to the benchmark folder, whose name is the category), or a CSV with a header naming at least `onnx`
  and `vnnlib` (and optionally `category`, `timeout`/`timeout_s`, and a ground-truth column such as
  the shipped `ground_truth.csv`'s `consensus_result`).
* The results CSV has VNN-COMP's columns in its order, no header: category, onnx, vnnlib, prepare
  seconds, result, run seconds (what VNN-COMP's scoring scripts read).
* The score is VNN-COMP's since 2022: +10 for a correct `sat` or `unsat`, −150 for a wrong one, 0 for
  anything else. A ground truth of `DISPUTED` is no ground truth: the tools disagreed and no answer is
  scored there. (The shipped DISPUTED rows are ACAS Xu 1_1 and 1_2 on prop_4, 8 tools "holds" against
  1 "violated" in VNN-COMP 2021, which checked no counterexample; no counterexample is known, and the
  Reluplex paper reports that φ4 holds on those networks. Scoring them `sat` would call uverify's
  `unsat` there wrong on no evidence.)
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from uverify.errors import UverifyError
from uverify.files import atomic_write

__all__ = [
    "CORRECT",
    "RESULTS",
    "WRONG",
    "Instance",
    "InstanceResult",
    "ResultFileError",
    "format_counterexample",
    "normalise_truth",
    "parse_result_file",
    "read_ground_truth",
    "read_instances",
    "render_score",
    "score",
    "write_result_file",
    "write_results_csv",
]

PathLike = str | os.PathLike[str]
RESULTS = ("sat", "unsat", "unknown", "timeout", "error")
CORRECT = 10
WRONG = -150
_TRUTH_COLUMNS = ("consensus_result", "ground_truth", "expected", "expected_result", "truth")


class ResultFileError(UverifyError):
    """An instance list, a ground truth or a result file that cannot be read as VNN-COMP writes it."""


@dataclass(frozen=True)
class Instance:
    """One row of an instance list, its paths resolved."""

    category: str
    onnx: Path
    vnnlib: Path
    timeout: float
    onnx_name: str  # as the list writes it (the results CSV repeats it)
    vnnlib_name: str
    truth: str | None = None  # sat / unsat from a ground-truth column, normalised


@dataclass(frozen=True)
class InstanceResult:
    category: str
    onnx: str
    vnnlib: str
    prepare_seconds: float
    result: str
    run_seconds: float
    truth: str | None = None
    stage: str | None = None

    @property
    def points(self) -> int:
        return score(self.result, self.truth)


# --------------------------------------------------------------------------------------------------
# Result files
# --------------------------------------------------------------------------------------------------


def _value(v: float) -> str:
    return repr(float(v))  # a float32 as float64 has an exact, round-tripping repr


def format_counterexample(x: np.ndarray, y: np.ndarray) -> str:
    """VNN-COMP's assignment: `((X_0 v)`, one per line, then the outputs, then `)`."""
    entries = [f"(X_{i} {_value(v)})" for i, v in enumerate(np.asarray(x).ravel())]
    entries += [f"(Y_{j} {_value(v)})" for j, v in enumerate(np.asarray(y).ravel())]
    return "(" + "\n".join(entries) + ")\n"


def write_result_file(path: PathLike, result: str, x: np.ndarray | None = None, y: np.ndarray | None = None) -> Path:
    """Write a result file atomically: the result line, and after `sat` the counterexample."""
    if result not in RESULTS:
        raise ValueError(f"not a VNN-COMP result: {result!r}")
    if result == "sat" and (x is None or y is None):
        raise ValueError("a sat result needs its counterexample")
    text = result + "\n" + (format_counterexample(x, y) if result == "sat" and x is not None and y is not None else "")
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


_ENTRY = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


def parse_result_file(text: str, source: str = "<result>") -> tuple[str, np.ndarray | None, np.ndarray | None]:
    """(result, x, y) from a result file's text; x and y (float64) only after `sat`."""
    lines = text.strip().split("\n", 1)
    first = lines[0].strip().lower() if lines else ""
    aliases = {"holds": "unsat", "violated": "sat", "timed-out": "timeout"}
    first = aliases.get(first, first)
    if first not in RESULTS:
        raise ResultFileError(f"{source}: first line {lines[0][:40]!r} is none of {', '.join(RESULTS)}")
    if first != "sat":
        return first, None, None
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    body = lines[1] if len(lines) > 1 else ""
    for letter, index, value in _ENTRY.findall(body):
        try:
            values[letter][int(index)] = float(value)
        except ValueError:
            raise ResultFileError(f"{source}: {letter}_{index} has value {value!r}, not a number") from None
    arrays = []
    for letter in ("X", "Y"):
        found = values[letter]
        if not found or sorted(found) != list(range(len(found))):
            raise ResultFileError(f"{source}: the counterexample's {letter}_i are missing or not 0..n-1")
        arrays.append(np.array([found[i] for i in range(len(found))]))
    return first, arrays[0], arrays[1]


# --------------------------------------------------------------------------------------------------
# Instance lists and ground truth
# --------------------------------------------------------------------------------------------------


def normalise_truth(value: str | None) -> str | None:
    """sat / unsat / None from the ways result tables write it (`sat(violated)`, `holds`, `DISPUTED`, ...)."""
    if value is None:
        return None
    text = value.strip().lower()
    if not text or text in ("unknown", "-", "none", "timeout", "error"):
        return None
    if text.startswith("unsat") or text.startswith("holds"):
        return "unsat"
    if text.startswith("disputed"):  # the tools disagreed: nothing to score against
        return None
    if text.startswith("sat") or text.startswith("violated"):
        return "sat"
    raise ResultFileError(f"ground truth {value!r} is not sat, unsat, holds, violated or DISPUTED")


def _read_rows(path: Path) -> list[list[str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultFileError(f"cannot read {path}: {exc}") from None
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text))]
    rows = [row for row in rows if any(row) and not row[0].startswith("#")]
    if not rows:
        raise ResultFileError(f"{path} lists no instances")
    return rows


def _timeout(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ResultFileError(f"{where}: timeout {text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value <= 0:
        raise ResultFileError(f"{where}: timeout {text!r} must be positive")
    return value


def read_instances(path: PathLike, root: PathLike | None = None) -> list[Instance]:
    """The instances of a list (see the module docstring); every file must exist."""
    file = Path(path)
    base = Path(root) if root is not None else file.parent
    rows = _read_rows(file)
    header = [c.lower() for c in rows[0]]
    if "onnx" in header and "vnnlib" in header:
        columns = {name: header.index(name) for name in header}
        body = rows[1:]
    else:
        columns = {"onnx": 0, "vnnlib": 1, "timeout": 2}
        body = rows
    timeout_column = next((columns[c] for c in ("timeout", "timeout_s", "timeout_secs") if c in columns), None)
    truth_column = next((columns[c] for c in _TRUTH_COLUMNS if c in columns), None)
    default_category = base.name or "instances"
    instances = []
    for number, row in enumerate(body, 2 if body is not rows else 1):
        where = f"{file} row {number}"
        needed = max(columns["onnx"], columns["vnnlib"], timeout_column if timeout_column is not None else 0)
        if len(row) <= needed:
            raise ResultFileError(f"{where}: expected onnx,vnnlib,timeout, got {','.join(row)!r}")
        onnx_name, vnnlib_name = row[columns["onnx"]], row[columns["vnnlib"]]
        timeout = _timeout(row[timeout_column], where) if timeout_column is not None else math.inf
        category = row[columns["category"]] if "category" in columns else default_category
        truth = normalise_truth(row[truth_column]) if truth_column is not None and truth_column < len(row) else None
        onnx_path, vnnlib_path = base / onnx_name, base / vnnlib_name
        for what in (onnx_path, vnnlib_path):
            if not what.is_file():
                raise ResultFileError(f"{where}: {what} does not exist")
        instances.append(Instance(category, onnx_path, vnnlib_path, timeout, onnx_name, vnnlib_name, truth))
    return instances


def read_ground_truth(path: PathLike) -> dict[tuple[str, str], str]:
    """(onnx file name, vnnlib file name) → sat / unsat from a CSV with a header and a truth column."""
    file = Path(path)
    rows = _read_rows(file)
    header = [c.lower() for c in rows[0]]
    column = next((header.index(c) for c in (*_TRUTH_COLUMNS, "result") if c in header), None)
    if "onnx" not in header or "vnnlib" not in header or column is None:
        raise ResultFileError(
            f"{file}: a ground truth needs a header with onnx, vnnlib and one of {', '.join(_TRUTH_COLUMNS)}"
        )
    truth = {}
    for row in rows[1:]:
        value = normalise_truth(row[column]) if column < len(row) else None
        if value is not None:
            truth[(Path(row[header.index("onnx")]).name, Path(row[header.index("vnnlib")]).name)] = value
    return truth


# --------------------------------------------------------------------------------------------------
# Results CSV and score
# --------------------------------------------------------------------------------------------------


def write_results_csv(path: PathLike, results: Iterable[InstanceResult]) -> Path:
    """VNN-COMP's results CSV (no header): category, onnx, vnnlib, prepare s, result, run s."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for r in results:
        writer.writerow([r.category, r.onnx, r.vnnlib, f"{r.prepare_seconds:.3f}", r.result, f"{r.run_seconds:.3f}"])
    text = buffer.getvalue()
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def score(result: str, truth: str | None) -> int:
    """VNN-COMP's points for one answer: +10 correct sat/unsat, −150 wrong, 0 otherwise or without truth."""
    if truth is None or result not in ("sat", "unsat"):
        return 0
    return CORRECT if result == truth else WRONG


def render_score(results: Sequence[InstanceResult]) -> str:
    """A per-category table: answers by kind, decided, correct and wrong against the truth, score, times."""
    categories: dict[str, list[InstanceResult]] = {}
    for r in results:
        categories.setdefault(r.category, []).append(r)
    head = ["category", "n", "sat", "unsat", "unknown", "timeout", "error", "decided", "correct", "wrong", "score",
            "prepare s", "run s"]  # fmt: skip
    lines = [head]

    def row(name: str, rs: Sequence[InstanceResult]) -> list[str]:
        count = {k: sum(r.result == k for r in rs) for k in RESULTS}
        judged = [r for r in rs if r.truth is not None and r.result in ("sat", "unsat")]
        correct = sum(r.result == r.truth for r in judged)
        return [
            name,
            str(len(rs)),
            *(str(count[k]) for k in RESULTS),
            str(count["sat"] + count["unsat"]),
            str(correct),
            str(len(judged) - correct),
            str(sum(r.points for r in rs)),
            f"{sum(r.prepare_seconds for r in rs):.1f}",
            f"{sum(r.run_seconds for r in rs):.1f}",
        ]

    for name, rs in categories.items():
        lines.append(row(name, rs))
    if len(categories) > 1:
        lines.append(row("total", list(results)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    text = [
        "  ".join(cell.rjust(w) if i else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True)))
        for line in lines
    ]
    has_truth = any(r.truth is not None for r in results)
    note = "score: +10 correct sat/unsat, -150 wrong, 0 otherwise" if has_truth else "no ground truth: no score"
    return "\n".join([*text, note])
