"""One root error type: the CLI turns every `UverifyError` into a one-line message and exit code 2."""

from __future__ import annotations

from enum import IntEnum


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
