"""An external verifier as a backend of `uverify check`: any solver that speaks the VNN-LIB 2.0
standard's command line (chapter 5), such as `uverify-solver` itself or `vnnlibTestSolver`.

For each property the check leaves unknown, the driver writes a VNN-LIB 2.0 query (`writer.py`, the
network's own shapes, element type `real`) and runs

    COMMAND verify QUERY.vnnlib --network N=MODEL.onnx --timeout S

in its own process group, killed (the whole group) when `S` plus a grace period has passed. It reads
stdout as the standard writes it: the first line `sat`, `unsat`, `unknown` or `timed-out`; after `sat`
the assignment, each variable's header `NAME TYPE [d1,d2,...]` followed by its values one a line,
row-major. stderr is the solver's to fill and is read only to explain a failure.

Anything else is an `error`, never a verdict: an exit code other than 0 (the standard defines none, so
only 0 is a normal answer), death by a signal, a first line that is none of the four, a `sat` whose
assignment does not parse or lacks the input. The check then replays a `sat` assignment with
onnxruntime (`verifier/check.py`), so a solver's word alone never makes a counterexample.

`--timeout` is written as whole seconds (rounded up; `vnnlibTestSolver` accepts only integers).

The solver is asked its `--name` once, when the driver is built: a command that cannot be run or does
not answer is bad input (one line, exit code 2), not a per-sample error.
"""

from __future__ import annotations

import math
import os
import shlex
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from uverify.errors import UverifyError, one_line
from uverify.specs.schema import ExternalSpec
from uverify.verifier.check import ExternalAnswer
from uverify.verifier.property import Property
from uverify.vnn.writer import format_vnnlib

__all__ = ["GRACE_S", "NAME_TIMEOUT_S", "NETWORK", "ExternalSolver", "parse_answer", "solver_for"]

GRACE_S = 5.0  # a solver past its --timeout by this much is killed (it may need to start up and exit)
NAME_TIMEOUT_S = 30.0  # `COMMAND --name` must answer within this
NETWORK = "N"  # the network's name in the queries (and the --network mapping)
Status = Literal["sat", "unsat", "unknown", "timeout", "error"]
_RESULTS: dict[str, Status] = {"sat": "sat", "unsat": "unsat", "unknown": "unknown", "timed-out": "timeout"}


class ExternalSolverError(UverifyError):
    """The external solver's command cannot be used at all (not found, no --name)."""


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return one_line(lines[-1]) if lines else ""


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        process.kill()


@dataclass(frozen=True)
class _Run:
    returncode: int | None  # None: killed at the time limit
    stdout: str
    stderr: str
    seconds: float


def _run(argv: list[str], limit: float) -> _Run:
    """Run `argv` with no stdin, its own process group, killed whole after `limit` seconds."""
    started = time.monotonic()
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
    except OSError as exc:
        raise ExternalSolverError(f"external solver {argv[0]!r} cannot be run: {exc.strerror or exc}") from None
    try:
        out, err = process.communicate(timeout=limit)
        code: int | None = process.returncode
    except subprocess.TimeoutExpired:
        _kill_group(process)
        out, err = process.communicate()
        code = None
    finally:
        if process.poll() is None:
            _kill_group(process)
            process.wait()
    decode = lambda b: b.decode("utf-8", errors="replace")  # noqa: E731
    return _Run(code, decode(out), decode(err), time.monotonic() - started)


def parse_answer(stdout: str, input_name: str, input_size: int) -> tuple[Status, np.ndarray | None, str | None]:
    """(status, flat input assignment after sat, error message) from a solver's stdout (module docstring)."""
    lines = stdout.replace("\r\n", "\n").split("\n")
    first = lines[0].strip() if lines else ""
    status = _RESULTS.get(first)
    if status is None:
        shown = first[:60] or "(empty)"
        return "error", None, f"first line of the answer {shown!r} is none of sat, unsat, unknown, timed-out"
    if status != "sat":
        return status, None, None
    values: dict[str, list[float]] = {}
    body = [line.strip() for line in lines[1:] if line.strip()]
    k = 0
    while k < len(body):
        parts = body[k].split()
        if len(parts) != 3 or not (parts[2].startswith("[") and parts[2].endswith("]")):
            return "error", None, f"sat assignment: expected a header NAME TYPE [DIMS], got {body[k][:60]!r}"
        name, dims = parts[0], parts[2][1:-1]
        try:
            shape = [int(d) for d in dims.split(",")] if dims else []
        except ValueError:
            return "error", None, f"sat assignment: {name} has dimensions {parts[2]!r}, not integers"
        count = math.prod(shape)
        chunk = body[k + 1 : k + 1 + count]
        if len(chunk) != count or any(shape_dim < 0 for shape_dim in shape):
            return "error", None, f"sat assignment: {name} {parts[2]} needs {count} values, got {len(chunk)}"
        try:
            values[name] = [float(v) for v in chunk]
        except ValueError:
            bad = next(v for v in chunk if not _is_float(v))
            return "error", None, f"sat assignment: {name} has value {bad[:30]!r}, not a number"
        k += 1 + count
    x = values.get(input_name)
    if x is None:
        return "error", None, f"sat assignment has no values for the input {input_name}"
    if len(x) != input_size:
        return "error", None, f"sat assignment gives {len(x)} values for {input_name}, which has {input_size}"
    return "sat", np.asarray(x, dtype=np.float64), None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class ExternalSolver:
    """A chapter-5 solver over one ONNX model: `solve` a property, get an `ExternalAnswer`.

    Implements `verifier.check.ExternalStage`."""

    def __init__(self, command: str, timeout_s: float, model: Path, *, grace_s: float = GRACE_S) -> None:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ExternalSolverError(f"external solver command {command!r}: {one_line(exc)}") from None
        if not argv:
            raise ExternalSolverError("the external solver's command is empty")
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise ExternalSolverError(f"the external solver's timeout must be positive seconds, got {timeout_s}")
        self.argv = argv
        self._command = command
        self._timeout_s = float(timeout_s)
        self.model = Path(model).absolute()
        self.grace_s = grace_s
        self._name = self._ask_name()

    @property
    def name(self) -> str:
        return self._name

    @property
    def command(self) -> str:
        return self._command

    @property
    def timeout_s(self) -> float:
        return self._timeout_s

    def _ask_name(self) -> str:
        run = _run([*self.argv, "--name"], NAME_TIMEOUT_S)
        first = run.stdout.strip().split("\n", 1)[0].strip()
        if run.returncode != 0 or not first:
            why = (
                f"did not answer within {NAME_TIMEOUT_S:g} s"
                if run.returncode is None
                else f"exit code {run.returncode}" + (f": {_last_line(run.stderr)}" if run.stderr.strip() else "")
            )
            raise ExternalSolverError(f"external solver {self._command!r} --name failed ({why})")
        return one_line(first, limit=120)

    def solve(
        self, prop: Property, input_shape: tuple[int, ...], output_shape: tuple[int, ...], tag: str
    ) -> ExternalAnswer:
        """The solver's answer on `prop` over the model (shapes are the network's per sample)."""
        query = format_vnnlib(
            prop, version="2.0", input_shape=input_shape, output_shape=output_shape, network=NETWORK,
            comments=[f"uverify check: {tag}"],
        )  # fmt: skip
        seconds = max(1, math.ceil(self._timeout_s))
        with tempfile.TemporaryDirectory(prefix="uverify-external-") as folder:
            path = Path(folder) / f"{tag}.vnnlib"
            path.write_text(query, encoding="utf-8")
            argv = [*self.argv, "verify", str(path), "--network", f"{NETWORK}={self.model}", "--timeout", str(seconds)]
            run = _run(argv, self._timeout_s + self.grace_s)
        return self._answer(run, prop.num_inputs)

    def _answer(self, run: _Run, input_size: int) -> ExternalAnswer:
        stderr = _last_line(run.stderr)
        because = f" (stderr: {stderr})" if stderr else ""
        if run.returncode is None:
            return ExternalAnswer("timeout", run.seconds, message=f"killed after {run.seconds:.1f} s")
        if run.returncode < 0:
            name = signal.Signals(-run.returncode).name if -run.returncode in signal.valid_signals() else "a signal"
            return ExternalAnswer("error", run.seconds, message=f"the solver died of {name}{because}")
        if run.returncode != 0:
            message = f"the solver exited with code {run.returncode}{because}"
            return ExternalAnswer("error", run.seconds, message=message)
        status, x, problem = parse_answer(run.stdout, "X", input_size)
        if status == "error":
            return ExternalAnswer("error", run.seconds, message=f"{problem}{because}")
        return ExternalAnswer(status, run.seconds, x)


def solver_for(spec: ExternalSpec, model: Path, *, grace_s: float = GRACE_S) -> ExternalSolver:
    """The driver of a spec's `verify.external` over `model`."""
    return ExternalSolver(spec.command, spec.timeout_s, model, grace_s=grace_s)
