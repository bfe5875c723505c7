"""One root error type: the CLI turns every `UverifyError` into a one-line message and exit code 2.

Also the one way to turn any exception, or a pydantic validation error, into the single line such a
message carries (`one_line`, `validation_one_line`).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

ONE_LINE_LIMIT = 300


class ExitStatus(IntEnum):
    """Process exit codes; 1 is reserved for "the check ran and the gate failed"."""

    OK = 0
    GATE_FAILED = 1
    BAD_INPUT = 2


class UverifyError(Exception):
    """Bad input or an unusable artefact: the user can fix it, so no traceback is shown."""


class SpecError(UverifyError):
    """The YAML spec is malformed, has unknown keys or values of the wrong type."""


class DataError(UverifyError):
    """A data set file is missing, malformed or lacks required columns."""


class ModelError(UverifyError):
    """A model cannot be built, exported or validated."""


class ExportError(ModelError):
    """An ONNX export disagrees with the torch model it came from."""


def one_line(error: BaseException | str, *, with_type: bool = False, limit: int = ONE_LINE_LIMIT) -> str:
    """An exception's text on one line (whitespace runs folded), its type's name when it has no text,
    cut to `limit` characters; `with_type` prefixes the type's name (for errors from libraries, whose
    type often says more than their text)."""
    text = " ".join(str(error).split())
    if isinstance(error, BaseException):
        name = type(error).__name__
        text = (f"{name}: {text}" if with_type else text) if text else name
    return text if len(text) <= limit else text[: limit - 3] + "..."


def validation_one_line(error: Any) -> str:
    """A pydantic `ValidationError` as `where: what` for its first problem (`where` the dotted key path)."""
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{where}: {first['msg']}"
