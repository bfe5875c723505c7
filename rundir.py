"""The run directory: the one module that knows its layout, reads it, writes it, and turns a deletion
request into sample ids.

    file                          what                                         written by
    run.json                      RunInfo (uverify.run/1): method, training,   write_trained, write_deletion
                                  model file, ids deleted so far
    spec.json                     the validated spec, defaults filled in       write_trained
    train_log.json                per-shard / per-epoch metrics, export check  write_trained
    model.onnx                    the current model: M, then M' after each     the method's `export`, at
                                  deletion                                     `RunDir.model_file`
    vote.json, shards/*.onnx      instead, for SISA's majority vote            the method's `export`, at
                                                                               `RunDir.vote_file` / `shard_file`
    deleted_ids.npy               every id deleted so far (sorted int64)       write_deletion
    deletions.json                the deletion log, one entry per request      write_deletion
    unlearn.json                  the latest deletion's metrics                write_deletion
    sisa/, amnesiac/              the method's own state; unlearning/sisa.py and unlearning/amnesiac.py own
                                  the files inside `RunDir.method_dir(...)`
    M/                            the study's copy of M, kept before the       keep_m
                                  deletion (vote manifests with their members)
    report_before.json,           the study's check reports of M and M'        the study, at `report_file`
    report_after.json
    certificates/*.npz            per-shard certificates (bounds of one shard  verifier/incremental.py, through
                                  over one sample set, norm, epsilon and       `write_certificate`; read back by
                                  method), reused after a deletion             `read_certificate` (below)

A run is written into a staging folder beside it that replaces it whole (`creating`), and a deletion
changes a hard-linked copy that replaces it whole (`updating`, `files.staged_update`): a run killed
half-way leaves the previous one valid, and a rerun completes.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from uverify.errors import UverifyError, validation_one_line
from uverify.files import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_npz,
    exclusive_lock,
    read_int_vector,
    read_npz,
    remove_stale_staging,
    staged_dir,
    staged_update,
)
from uverify.kinds import Training, UnlearningMethod
from uverify.models.vote import is_vote_manifest, read_vote_manifest
from uverify.specs.schema import DeleteSpec, Spec

RUN_SCHEMA = "uverify.run/1"
When = Literal["before", "after"]


class RunInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["uverify.run/1"] = Field("uverify.run/1", alias="schema")
    method: UnlearningMethod
    training: Training
    model: str = Field(description="the file `uverify check --model` takes, relative to the run")
    spec_sha256: str
    uverify_version: str
    deleted: int = Field(0, description="how many training ids have been deleted so far")


@dataclass(frozen=True)
class RunDir:
    """Where each file of a run lives; a plain path with names, it reads and checks nothing."""

    path: Path

    run_file_name = "run.json"
    spec_file_name = "spec.json"
    model_file_name = "model.onnx"
    vote_file_name = "vote.json"
    deleted_file_name = "deleted_ids.npy"
    log_file_name = "deletions.json"
    kept_m_name = "M"

    @property
    def run_file(self) -> Path:
        return self.path / self.run_file_name

    @property
    def spec_file(self) -> Path:
        return self.path / self.spec_file_name

    @property
    def train_log_file(self) -> Path:
        return self.path / "train_log.json"

    @property
    def model_file(self) -> Path:
        """The one ONNX graph of M (or M')."""
        return self.path / self.model_file_name

    @property
    def vote_file(self) -> Path:
        """The vote manifest that replaces `model_file` for a majority vote."""
        return self.path / self.vote_file_name

    def shard_file(self, shard: int) -> Path:
        """A majority vote's member `shard`, listed by `vote_file`."""
        return self.path / "shards" / f"shard_{shard:03d}.onnx"

    @property
    def deleted_file(self) -> Path:
        return self.path / self.deleted_file_name

    @property
    def log_file(self) -> Path:
        return self.path / self.log_file_name

    @property
    def unlearn_file(self) -> Path:
        return self.path / "unlearn.json"

    def method_dir(self, method: UnlearningMethod) -> Path:
        """The method's own state (checkpoints and manifest, or the update store)."""
        return self.path / method.value

    @property
    def kept_m_dir(self) -> Path:
        return self.path / self.kept_m_name

    def report_file(self, when: When) -> Path:
        return self.path / f"report_{when}.json"

    @property
    def certificates_dir(self) -> Path:
        return self.path / "certificates"

    def certificate_file(self, shard_sha256: str, meta: dict[str, Any]) -> Path:
        """The cache entry `meta` names; the shard's hash leads the name, so that pruning reads no file."""
        return self.certificates_dir / f"{shard_sha256[:16]}_{_certificate_key(meta)}.npz"


@dataclass(frozen=True)
class Run:
    """A run directory read back and checked: what it is (`info`), its spec, and where its files are."""

    dir: RunDir
    info: RunInfo
    spec: Spec

    @property
    def path(self) -> Path:
        return self.dir.path

    @property
    def model_path(self) -> Path:
        """The current model: what `uverify check --model` takes."""
        return self.path / self.info.model

    @property
    def kept_m_path(self) -> Path:
        """The study's copy of M (before any deletion), at the same place inside `M/`."""
        return self.dir.kept_m_dir / self.info.model

    def deleted_ids(self) -> np.ndarray:
        return read_deleted_ids(self.dir)

    def log(self) -> list[dict[str, Any]]:
        file = self.dir.log_file
        if not file.is_file():
            return []
        try:
            entries = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            raise UverifyError(f"run {self.path}: {file.name} is not readable JSON") from None
        if not isinstance(entries, list):
            raise UverifyError(f"run {self.path}: {file.name} must hold a list of deletions")
        return entries


def is_run(path: str | Path) -> bool:
    """Does `path` look like a run directory (it has run.json)? Says nothing of whether it is whole."""
    return RunDir(Path(path)).run_file.is_file()


def open_run(path: str | Path) -> Run:
    """Read a run directory back; anything that is not a complete uverify run is a one-line error."""
    folder = RunDir(Path(path))
    if not folder.path.is_dir():
        raise UverifyError(f"run {folder.path}: no such directory")
    if not folder.run_file.is_file():
        raise UverifyError(
            f"run {folder.path}: no {folder.run_file.name}, so not a uverify run directory (made by `uverify train`)"
        )
    try:
        info = RunInfo.model_validate_json(folder.run_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        raise UverifyError(f"run {folder.path}: {folder.run_file.name} is not readable") from None
    except ValidationError as exc:
        raise UverifyError(
            f"run {folder.path}: {folder.run_file.name} is not a {RUN_SCHEMA} file ({validation_one_line(exc)})"
        ) from None
    try:
        spec = Spec.model_validate_json(folder.spec_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        raise UverifyError(f"run {folder.path}: spec.json is missing or unreadable (a half-written run?)") from None
    except ValidationError as exc:
        raise UverifyError(f"run {folder.path}: spec.json does not validate ({exc.errors()[0]['msg']})") from None
    run = Run(folder, info, spec)
    if not run.model_path.is_file():
        raise UverifyError(f"run {folder.path}: {info.model} is missing (a half-written run?)")
    if is_vote_manifest(run.model_path):
        _check_vote(run)
    deleted = run.deleted_ids()
    if len(deleted) != info.deleted:
        raise UverifyError(
            f"run {folder.path}: {folder.deleted_file.name} holds {len(deleted)} ids but "
            f"{folder.run_file.name} says {info.deleted}"
        )
    return run


def _check_vote(run: Run) -> None:
    """A majority vote's manifest must list this run's shards: as many as the spec has, of this spec."""
    manifest, _ = read_vote_manifest(run.model_path)
    where = f"run {run.path}: {run.info.model}"
    if manifest.spec_sha256 != run.info.spec_sha256:
        raise UverifyError(f"{where} lists the shards of another spec than the run's")
    shards = run.spec.unlearning.sisa.shards
    if len(manifest.members) != shards:
        raise UverifyError(f"{where} lists {len(manifest.members)} members; the run's spec has {shards} shards")


def read_deleted_ids(folder: RunDir) -> np.ndarray:
    return read_int_vector(folder.deleted_file, f"run {folder.path}: {folder.deleted_file.name}")


# ------------------------------------------------------------------------------ locking and staging
def lock_file(path: str | Path) -> Path:
    """The lock beside a run (or a study) folder: stable while the folder itself is replaced whole."""
    target = Path(path).absolute()
    return target.parent / f".{target.name}.lock"


@contextmanager
def locked(path: str | Path) -> Iterator[None]:
    """Hold the folder's lock for the block (a command that writes a run holds it from start to end), and
    first remove what killed processes left beside it. A second command on the same folder is refused at
    once, with one line naming the process that holds it: it asked about a state that is changing (a
    deletion queued behind another would run on a model its user never saw), and refusing never hangs a
    CI job."""
    target = Path(path).absolute()

    def busy(holder: str) -> str:
        return (
            f"{target} is in use by another uverify command ({holder or 'its pid is unknown'}); try again when it ends"
        )

    with exclusive_lock(lock_file(target), _command_line(), busy):
        remove_stale_staging(target)
        yield


def _command_line() -> str:
    line = " ".join([Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]])
    return line if len(line) <= 200 else line[:197] + "..."


def check_train_target(path: str | Path, *, overwrite: bool) -> str | None:
    """Refuse a target that training must not replace: the current directory (or one above it), a file,
    a folder of other files, or an existing run unless `overwrite`. Returns what an overwrite replaces
    (a short description of the run), else None."""
    target = Path(path).absolute()
    cwd = Path.cwd()
    if target == cwd or target in cwd.parents:
        raise UverifyError(
            f"{target} is the current directory (or holds it): uverify replaces a run directory whole, which "
            "would leave your shell in a deleted folder; name a folder inside it, e.g. ./run"
        )
    if not target.exists():
        return None
    if not target.is_dir():
        raise UverifyError(f"{target} is a file, not a run directory")
    if is_run(target):
        what = describe_run(target)
        if not overwrite:
            raise UverifyError(f"{target} is already a uverify run ({what}); give --overwrite to replace it")
        return what
    if any(target.iterdir()):
        raise UverifyError(
            f"{target} is not empty and not a uverify run: uverify will not delete the files it holds; "
            "name a new or empty folder"
        )
    return None


def describe_run(path: str | Path) -> str:
    """`sisa, adversarial, 32 ids deleted`, or what is wrong with the run."""
    try:
        run = open_run(path)
    except UverifyError:
        return "damaged or half-written"
    return f"{run.info.method}, {run.info.training}, {run.info.deleted} ids deleted"


@contextmanager
def creating(final: str | Path) -> Iterator[RunDir]:
    """A fresh run directory to train into, in a staging folder beside `final` that replaces it whole
    when the block ends without an error (and is deleted when it does not). Hold `locked(final)`."""
    with staged_dir(Path(final)) as staging:
        yield RunDir(staging)


@contextmanager
def updating(run: Run) -> Iterator[RunDir]:
    """A hard-linked copy of `run` to change (files replaced, never modified in place) that replaces
    it whole when the block ends without an error. Hold `locked(run.path)`."""
    with staged_update(run.path) as staging:
        yield RunDir(staging)


def write_trained(folder: RunDir, spec: Spec, info: RunInfo, train_log: dict[str, Any]) -> None:
    """The files every trained run has besides the model and the method's state; run.json last, since
    it is what marks a run directory."""
    atomic_write_json(folder.spec_file, spec.model_dump(mode="json"))
    atomic_write_json(folder.train_log_file, train_log)
    atomic_write_json(folder.run_file, info.model_dump(mode="json", by_alias=True))


def write_deletion(folder: RunDir, run: Run, deleted: np.ndarray, entry: dict[str, Any]) -> None:
    """A deletion's record: every id deleted so far, the log with this entry appended, its metrics, and
    run.json's count and model file."""
    atomic_write_npy(folder.deleted_file, deleted.astype(np.int64))
    atomic_write_json(folder.log_file, [*run.log(), entry])
    atomic_write_json(folder.unlearn_file, entry["metrics"] | {"deletion": entry["number"]})
    info = run.info.model_copy(update={"deleted": len(deleted), "model": entry["export"]["file"]})
    atomic_write_json(folder.run_file, info.model_dump(mode="json", by_alias=True))


def keep_m(run: Run) -> Path:
    """Copy M's model file (a vote manifest with its member files) into `M/`, atomically per file, the
    manifest last: it is what marks the copy complete. Returns the copy of the model file."""
    files = [run.model_path]
    if is_vote_manifest(run.model_path):
        files += read_vote_manifest(run.model_path)[1]
    for file in files[1:] + files[:1]:
        atomic_write_bytes(run.dir.kept_m_dir / file.relative_to(run.path), file.read_bytes())
    return run.kept_m_path


# ---------------------------------------------------------------------------------- certificate cache
# One .npz per (shard, sample set, norm, epsilon, method): the arrays verifier/incremental.py needs to
# compose the ensemble's bound, the entry's full key (`__meta__`, JSON) and a sha256 over key and arrays
# (`__digest__`). An entry is used only when its key is the one asked for and its digest still matches;
# anything else is reported in one line on stderr and ignored. The digest catches damaged bytes and an
# entry copied from another shard or run; it is no signature (whoever can write the run can recompute
# it), so verifier/incremental.py also checks every entry against the shard's own outputs.
CERTIFICATE_SCHEMA = "uverify.certificate/1"
_META, _DIGEST = "__meta__", "__digest__"


def _canonical(meta: dict[str, Any]) -> bytes:
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def _certificate_key(meta: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(meta)).hexdigest()[:32]


def _certificate_digest(meta_json: bytes, arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256(CERTIFICATE_SCHEMA.encode() + b"\0" + meta_json)
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_certificate(folder: RunDir, shard_sha256: str, meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Store one shard's certificate under its key, atomically (a killed writer leaves no half entry)."""
    meta_json = _canonical(meta)
    payload = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    if _META in payload or _DIGEST in payload:
        raise ValueError(f"certificate arrays must not be named {_META} or {_DIGEST}")
    digest = _certificate_digest(meta_json, payload)
    stored = payload | {_META: np.array(meta_json.decode()), _DIGEST: np.array(digest)}
    return atomic_write_npz(folder.certificate_file(shard_sha256, meta), stored)


def read_certificate(
    folder: RunDir, shard_sha256: str, meta: dict[str, Any], expected: dict[str, tuple[tuple[int, ...], str]]
) -> dict[str, np.ndarray] | None:
    """The entry `meta` names, or None: missing (silently), or not to be trusted (with one line on stderr):
    unreadable, another key (another shard, sample set, epsilon, ...), bytes changed since it was written,
    or arrays other than `expected` (name: (shape, dtype))."""
    file = folder.certificate_file(shard_sha256, meta)
    if not file.is_file():
        return None
    try:
        data = read_npz(file, f"certificate {file.name}", (_META, _DIGEST))
    except UverifyError as error:
        certificate_ignored(file, str(error))
        return None
    why = _certificate_problem(data, _canonical(meta), expected)
    if why is not None:
        certificate_ignored(file, why)
        return None
    return data


def _certificate_problem(
    data: dict[str, np.ndarray], meta_json: bytes, expected: dict[str, tuple[tuple[int, ...], str]]
) -> str | None:
    """Why a read entry is not the one asked for, or None; removes the key and digest from `data`."""
    stored_meta, digest = data.pop(_META), data.pop(_DIGEST)
    if stored_meta.shape != () or stored_meta.dtype.kind != "U" or digest.shape != () or digest.dtype.kind != "U":
        return "its key or digest is not a string"
    if str(stored_meta).encode() != meta_json:
        return "it is the entry of another shard, sample set or setting"
    if str(digest) != _certificate_digest(meta_json, data):
        return "its bytes changed since it was written"
    wrong = sorted(set(data) ^ set(expected)) or [
        name for name, (shape, dtype) in expected.items() if data[name].shape != shape or data[name].dtype != dtype
    ]
    return f"array {wrong[0]!r} is missing, extra or of the wrong shape or type" if wrong else None


def certificate_ignored(file: Path, why: str) -> None:
    """The one line on stderr for a cache entry that is not trusted (it is then recomputed)."""
    print(f"warning: certificate cache {file.parent.name}/{file.name} ignored: {why}", file=sys.stderr)


def prune_certificates(folder: RunDir, keep_shards: set[str]) -> int:
    """Remove the entries of shards no longer in the model (a deletion retrained them); returns how many."""
    keep = {sha[:16] for sha in keep_shards}
    removed = 0
    if folder.certificates_dir.is_dir():
        for file in folder.certificates_dir.glob("*.npz"):
            if file.name.split("_", 1)[0] not in keep:
                file.unlink(missing_ok=True)
                removed += 1
    return removed


# ---------------------------------------------------------------------------------- deletion requests
_ID = re.compile(r"^[+-]?\d+$")


@dataclass(frozen=True)
class DeleteRequest:
    """Which training samples to delete: an id file, an id array, or a seeded fraction of the original
    training set (so the same request always names the same ids). `resolve` is the one place a request
    becomes ids."""

    ids_file: Path | None = None
    ids: np.ndarray | None = None
    fraction: float | None = None
    seed: int = 0

    @classmethod
    def build(
        cls,
        *,
        ids_file: str | Path | None = None,
        ids: np.ndarray | None = None,
        fraction: float | None = None,
        seed: int | None = None,
        default: DeleteSpec | None = None,
    ) -> DeleteRequest:
        """Exactly one of `ids_file`, `ids`, `fraction` (with `seed`), or else the `default` request."""
        given = sum(value is not None for value in (ids_file, ids, fraction))
        if given > 1:
            raise UverifyError(
                "give exactly one deletion request: an id file (--delete) or a fraction of the training set "
                "(--delete-fraction), not both"
            )
        if seed is not None and fraction is None:
            raise UverifyError("--seed goes with --delete-fraction (the seed of the drawn fraction)")
        if given == 0:
            if default is None:
                raise UverifyError(
                    "give exactly one deletion request: an id file (--delete) or a fraction of the training set "
                    "(--delete-fraction)"
                )
            return cls.from_spec(default)
        return cls(
            ids_file=None if ids_file is None else Path(ids_file),
            ids=None if ids is None else np.unique(np.asarray(ids, np.int64)),
            fraction=fraction,
            seed=0 if seed is None else seed,
        )

    @classmethod
    def from_spec(cls, delete: DeleteSpec) -> DeleteRequest:
        """The spec's `unlearning.delete` (the schema has made sure it names exactly one source)."""
        return cls(ids_file=delete.ids, fraction=delete.fraction, seed=delete.seed)

    @property
    def source(self) -> str:
        """How the deletion log describes the request."""
        if self.ids_file is not None:
            return f"ids file {self.ids_file}"
        if self.ids is not None:
            return "ids"
        return f"fraction {self.fraction:g}, seed {self.seed}"

    def describe(self) -> str:
        """A short phrase for progress lines: `ids FILE` or `0.01 of the data`."""
        if self.ids_file is not None:
            return f"ids {self.ids_file}"
        if self.ids is not None:
            return f"{len(self.ids)} ids"
        return f"{self.fraction:g} of the data"

    def resolve(self, train_ids: np.ndarray, where: str) -> np.ndarray:
        """The sorted, unique training ids the request names; ids outside `train_ids` are an error that
        names them (`where` says whose training set, e.g. "run runs/x")."""
        if self.ids_file is not None:
            requested = read_id_file(self.ids_file)
        elif self.ids is not None:
            requested = self.ids
        else:
            assert self.fraction is not None
            requested = _sample_fraction(train_ids, self.fraction, self.seed)
        unknown = np.setdiff1d(requested, train_ids)
        if len(unknown):
            raise UverifyError(f"{len(unknown)} id(s) are not in the training set of {where}: {describe_ids(unknown)}")
        return requested


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


def _sample_fraction(train_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A seeded `fraction` of the training ids (at least one), drawn from the original training set so
    that the same request always names the same ids."""
    if not 0.0 < fraction < 1.0:
        raise UverifyError(f"delete fraction must lie in (0, 1), got {fraction:g}")
    count = max(1, round(fraction * len(train_ids)))
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(np.sort(train_ids), size=count, replace=False)).astype(np.int64)


def describe_ids(ids: np.ndarray, limit: int = 8) -> str:
    shown = ", ".join(str(int(i)) for i in ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


__all__ = [
    "CERTIFICATE_SCHEMA",
    "DeleteRequest",
    "Run",
    "RunDir",
    "RunInfo",
    "certificate_ignored",
    "check_train_target",
    "creating",
    "describe_ids",
    "describe_run",
    "is_run",
    "keep_m",
    "lock_file",
    "locked",
    "open_run",
    "prune_certificates",
    "read_certificate",
    "read_deleted_ids",
    "read_id_file",
    "updating",
    "write_certificate",
    "write_deletion",
    "write_trained",
]
