"""The run directory that training writes and unlearning updates, and the deletion requests.

A run directory holds, whatever the method:
    run.json          what kind of run this is (schema uverify.run/1): method, training, model file
    spec.json         the validated spec, defaults filled in
    model.onnx        the current model: M after training, M' after each deletion (or vote.json plus
                      shards/*.onnx for SISA's majority vote, which is not one graph)
    train_log.json    per-shard / per-epoch metrics, accuracies, export check, timings
    deleted_ids.npy   every id deleted so far (sorted int64), absent before the first deletion
    deletions.json    the deletion log, one entry per request that changed the model
    sisa/ or amnesiac/  the method's own state (checkpoints and manifest, or the update store)

Training writes it into a staging folder that replaces the target whole; a deletion changes a
hard-linked copy that replaces it whole (`files.staged_update`): a run killed half-way leaves the
previous model valid, and a rerun completes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from uverify.errors import UverifyError
from uverify.files import read_int_vector
from uverify.specs.schema import Spec

RUN_FILE = "run.json"
RUN_SCHEMA = "uverify.run/1"
DELETED_FILE = "deleted_ids.npy"
LOG_FILE = "deletions.json"


class RunInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["uverify.run/1"] = Field("uverify.run/1", alias="schema")
    method: Literal["sisa", "amnesiac"]
    training: Literal["standard", "adversarial"]
    model: str = Field(description="the file `uverify check --model` takes, relative to the run")
    spec_sha256: str
    uverify_version: str
    deleted: int = Field(0, description="how many training ids have been deleted so far")


@dataclass(frozen=True)
class Run:
    path: Path
    info: RunInfo
    spec: Spec

    @property
    def model_path(self) -> Path:
        return self.path / self.info.model

    def deleted_ids(self) -> np.ndarray:
        return read_deleted_ids(self.path)

    def log(self) -> list[dict[str, Any]]:
        file = self.path / LOG_FILE
        if not file.is_file():
            return []
        try:
            entries = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            raise UverifyError(f"run {self.path}: {LOG_FILE} is not readable JSON") from None
        if not isinstance(entries, list):
            raise UverifyError(f"run {self.path}: {LOG_FILE} must hold a list of deletions")
        return entries


def open_run(path: str | Path) -> Run:
    """Read a run directory back; anything that is not a complete uverify run is a one-line error."""
    folder = Path(path)
    if not folder.is_dir():
        raise UverifyError(f"run {folder}: no such directory")
    info_file = folder / RUN_FILE
    if not info_file.is_file():
        raise UverifyError(f"run {folder}: no {RUN_FILE}, so not a uverify run directory (made by `uverify train`)")
    try:
        info = RunInfo.model_validate_json(info_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        raise UverifyError(f"run {folder}: {RUN_FILE} is not readable") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise UverifyError(f"run {folder}: {RUN_FILE} is not a {RUN_SCHEMA} file ({where}: {first['msg']})") from None
    try:
        spec = Spec.model_validate_json((folder / "spec.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        raise UverifyError(f"run {folder}: spec.json is missing or unreadable (a half-written run?)") from None
    except ValidationError as exc:
        raise UverifyError(f"run {folder}: spec.json does not validate ({exc.errors()[0]['msg']})") from None
    run = Run(folder, info, spec)
    if not run.model_path.is_file():
        raise UverifyError(f"run {folder}: {info.model} is missing (a half-written run?)")
    deleted = run.deleted_ids()
    if len(deleted) != info.deleted:
        raise UverifyError(f"run {folder}: {DELETED_FILE} holds {len(deleted)} ids but {RUN_FILE} says {info.deleted}")
    return run


def read_deleted_ids(folder: Path) -> np.ndarray:
    return read_int_vector(folder / DELETED_FILE, f"run {folder}: {DELETED_FILE}")


# ----------------------------------------------------------------------------------- deletion requests
_ID = re.compile(r"^[+-]?\d+$")


def read_id_file(path: str | Path) -> np.ndarray:
    """Sample ids, one per line (commas or spaces also separate them; `#` starts a comment).

    An id file that does not exist, is empty, or holds anything but integers is an error that names
    the file and the line."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is not an id
    except FileNotFoundError:
        raise UverifyError(f"id file {file}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UverifyError(f"id file {file}: not readable text ({exc})") from None
    ids: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        for token in line.split("#", 1)[0].replace(",", " ").split():
            if not _ID.match(token):
                raise UverifyError(f"id file {file}, line {number}: {token!r} is not an integer sample id")
            if not -(2**63) <= int(token) < 2**63:
                raise UverifyError(f"id file {file}, line {number}: {token} is out of the range of sample ids")
            ids.append(int(token))
    if not ids:
        raise UverifyError(f"id file {file}: holds no sample ids")
    return np.unique(np.asarray(ids, np.int64))


def sample_fraction(train_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded `fraction` of the training ids (at least one), drawn from the original training set so
    that the same request always names the same ids."""
    if not 0.0 < fraction < 1.0:
        raise UverifyError(f"delete fraction must lie in (0, 1), got {fraction:g}")
    count = max(1, round(fraction * len(train_ids)))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.sort(train_ids), size=count, replace=False)).astype(np.int64)


def unknown_ids(requested: np.ndarray, train_ids: np.ndarray) -> np.ndarray:
    return np.setdiff1d(requested, train_ids)


def describe_ids(ids: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


class Method(Protocol):
    """What the pipeline needs from an unlearning method (SISA, Amnesiac); every path is a run
    directory being written (a staging folder), so a method writes only with `atomic_write`."""

    def fit(self, run: Path, *, progress: bool = True) -> tuple[nn.Module, list[dict[str, Any]]]:
        """Train M from scratch into `run`; returns M and per-step log rows."""
        ...

    def load(self, run: Path) -> nn.Module:
        """The current model of a run (M, or M' after deletions)."""
        ...

    def unlearn(
        self, run: Path, new_ids: np.ndarray, deleted: np.ndarray, *, progress: bool = True
    ) -> tuple[nn.Module, list[dict[str, Any]]]:
        """Delete `new_ids` (`deleted`: every id deleted so far, these included); returns M' and what was touched."""
        ...

    def retrain(self, run: Path, deleted: np.ndarray, scratch: Path, *, progress: bool = True) -> nn.Module:
        """The baseline: the same training from scratch without `deleted` (`scratch`: a folder to use)."""
        ...

    def check_files(self, run: Path) -> None:
        """Raise a one-line UverifyError when the method's own files are missing or do not match."""
        ...

    def storage_bytes(self, run: Path) -> int: ...


__all__ = [
    "DELETED_FILE",
    "LOG_FILE",
    "RUN_FILE",
    "Method",
    "Run",
    "RunInfo",
    "describe_ids",
    "open_run",
    "read_deleted_ids",
    "read_id_file",
    "sample_fraction",
    "unknown_ids",
]
