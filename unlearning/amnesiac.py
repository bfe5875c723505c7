"""Amnesiac unlearning (Graves, Nagisetty, Ganesh, "Amnesiac Machine Learning", AAAI 2021).

Training records, for every batch b, the parameter update Δθ_b = θ after optimizer.step() − θ before it,
and which sample ids b held. Deleting samples subtracts the updates of every batch that held any of
them, θ_M′ = θ_M − Σ_b Δθ_b, then repairs the accuracy this costs with `repair_epochs` epochs of the
run's own training (standard or adversarial) on the retained data.

It is approximate, unlike SISA: the later updates were computed on weights that the deleted batches
had already moved, and subtracting whole batches also removes what their retained samples taught. It
pays off for small deletions: a 0.1% request touches a few batches per epoch, while a 1% request with
batches of 128 already touches most of them (1 − 0.99^128 ≈ 72%).

Store, under `<run>/amnesiac/`, written once by training and only read afterwards:
    updates.npy        (batches, n_params) in `unlearning.amnesiac.dtype`, a .npy file memory-mapped
                       while training (each update goes straight to disk) and read-only afterwards
    batches.npz        the batch -> ids index: `ids` (flat, in training order), `offsets` (batches + 1),
                       `epoch` (per batch, 1-based)
    row_hashes.npy     (batches, 16) uint8: a BLAKE2b digest of each row of updates.npy, computed as
                       training writes the row (no extra pass over the store)
    store.json         what the store holds: dtype, sizes, parameter names and shapes, and hashes of the
                       architecture, the training configuration, the training ids, batches.npz and
                       row_hashes.npy, so a store that does not belong to the run's model is a one-line
                       error instead of a silent wrong subtraction. A deletion checks each row it
                       subtracts against its recorded digest as it reads it: that is as safe as hashing
                       the whole of updates.npy first for what it decides (no unchecked byte is ever
                       subtracted; a row that is never subtracted never touches M'), and costs no read
                       beyond the rows it needs, where a whole-file hash would cost what a deletion costs
A deletion writes (always by replacing the file, as `files.staged_update` requires):
    weights.safetensors  the current θ (M after training, M′ after each deletion)
    subtracted.npy       the batch indices subtracted so far (sorted int64): a batch that held ids of
                         two requests is subtracted once, by the first

Repair starts from θ_M′ with a fresh optimiser (and random streams seeded by the spec and the deleted
set), not from the optimiser state training ended with: Adam's moments average every gradient, the
deleted batches' included, so no optimiser state is kept.

Models must have no buffers (no BatchNorm, models/registry.py builds none): a running statistic is
not a parameter update, so subtracting updates could not remove what a batch left in it.

Known limitation: the repair epochs are not recorded, so ids deleted by a *later* request also took
part in an earlier request's repair, and that part of their influence is not subtracted. With
`repair_epochs: 0` every bit of training that saw an id is in the store.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils import parameters_to_vector

from uverify.datasets import Dataset
from uverify.errors import ModelError, UverifyError
from uverify.files import (
    atomic_write,
    atomic_write_json,
    atomic_write_npy,
    atomic_write_npz,
    read_int_vector,
    read_npz,
    sha256_file,
)
from uverify.kinds import UnlearningMethod
from uverify.models import ExportReport, build_model, export_onnx
from uverify.rundir import RunDir
from uverify.specs.schema import AdversarialSpec, Spec
from uverify.unlearning.retrain import retrain, trainer_for
from uverify.unlearning.train import Trainer

AMNESIAC_DIR = UnlearningMethod.AMNESIAC.value  # the folder RunDir.method_dir gives the store
UPDATES_FILE = "updates.npy"
INDEX_FILE = "batches.npz"
STORE_FILE = "store.json"
WEIGHTS_FILE = "weights.safetensors"
SUBTRACTED_FILE = "subtracted.npy"
ROW_HASHES_FILE = "row_hashes.npy"
STORE_SCHEMA = "uverify.amnesiac/1"
READ_CHUNK_BYTES = 64 << 20  # float64 rows summed at a time: bounds memory whatever the model size


def _sha256(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def check_no_buffers(model: nn.Module) -> None:
    """Amnesiac can only undo what lives in parameters; a buffer (BatchNorm's running mean) would keep
    what the deleted batches put in it."""
    names = [name for name, _ in model.named_buffers()]
    if names:
        raise ModelError(f"Amnesiac unlearning needs a model without buffers (no BatchNorm); this one has {names[0]}")


@dataclass(frozen=True)
class Store:
    """An opened, checked update store; `updates` is memory-mapped read-only."""

    folder: Path
    updates: np.ndarray  # (batches, n_params), np.memmap
    ids: np.ndarray  # int64, every batch's ids one after the other
    offsets: np.ndarray  # int64, batch b holds ids[offsets[b]:offsets[b + 1]]
    epoch: np.ndarray  # int32, 1-based
    info: dict[str, Any]
    row_hashes: np.ndarray  # (batches, 16) uint8: what each row of `updates` hashed to when training wrote it

    @property
    def batches(self) -> int:
        return int(self.updates.shape[0])

    @property
    def row_bytes(self) -> int:
        return int(self.updates.shape[1] * self.updates.dtype.itemsize)

    def batches_holding(self, ids: np.ndarray) -> np.ndarray:
        """Sorted indices of the batches that held any of `ids`."""
        hit = np.flatnonzero(np.isin(self.ids, ids))
        return np.unique(np.searchsorted(self.offsets, hit, side="right") - 1).astype(np.int64)

    def batch_ids(self, batch: int) -> np.ndarray:
        return self.ids[self.offsets[batch] : self.offsets[batch + 1]]

    def sum_updates(self, batches: np.ndarray) -> np.ndarray:
        """Σ Δθ_b over `batches` in float64, read in sorted order a chunk of rows at a time; every row read
        must hash to what training recorded for it, or nothing is subtracted."""
        total = np.zeros(self.updates.shape[1], np.float64)
        rows = np.sort(np.asarray(batches, np.int64))
        step = max(1, READ_CHUNK_BYTES // max(1, self.updates.shape[1] * 8))
        for start in range(0, len(rows), step):
            chunk = np.asarray(self.updates[rows[start : start + step]])
            for row, values in zip(rows[start : start + step], chunk, strict=True):
                if row_hash(values) != bytes(self.row_hashes[row]):
                    raise UverifyError(
                        f"{self.folder / UPDATES_FILE}: the recorded update of batch {int(row)} has changed since "
                        "training wrote it (damaged or tampered); nothing was subtracted"
                    )
            total += chunk.astype(np.float64).sum(axis=0)
        return total


def row_hash(row: np.ndarray) -> bytes:
    """A 16-byte BLAKE2b digest of one stored update row, as stored (its dtype's bytes)."""
    return hashlib.blake2b(np.ascontiguousarray(row).tobytes(), digest_size=16).digest()


class _Recorder:
    """The `on_step` hook: writes θ_now − θ_before as the next row of the store and keeps the batch's ids.

    θ_before is the snapshot the previous step's hook took (the initial weights for the first batch),
    so recording adds one flatten per step and touches no random stream: training is unchanged."""

    def __init__(self, model: nn.Module, updates: np.ndarray, per_epoch: int) -> None:
        self.params = list(model.parameters())
        self.updates = updates
        self.per_epoch = per_epoch
        with torch.no_grad():
            self.before = parameters_to_vector(self.params).detach().clone()
        self.ids: list[np.ndarray] = []
        self.hashes: list[bytes] = []

    def __call__(self, ids: np.ndarray) -> None:
        row = len(self.ids)
        if row >= len(self.updates):
            raise RuntimeError(f"Amnesiac recorder: more batches than the {len(self.updates)} planned")
        with torch.no_grad():
            now = parameters_to_vector(self.params).detach().clone()
        self.updates[row] = (now - self.before).numpy()  # cast to the store's dtype here
        self.hashes.append(row_hash(self.updates[row]))  # while the row is at hand: no second pass over the store
        if self.updates.dtype == np.float16 and not np.isfinite(self.updates[row]).all():
            raise ModelError("a parameter update overflows float16; use unlearning.amnesiac.dtype: float32")
        self.before = now
        self.ids.append(np.asarray(ids, np.int64).copy())
        if (row + 1) % self.per_epoch == 0 and isinstance(self.updates, np.memmap):
            self.updates.flush()  # an epoch at a time to disk: dirty pages stay bounded


class Amnesiac:
    """Training with recorded updates, loading, deletion by subtraction plus repair, and export, in a run
    directory."""

    kind = UnlearningMethod.AMNESIAC

    def __init__(self, spec: Spec, train: Dataset, adversarial: AdversarialSpec | None) -> None:
        self.spec = spec
        self.cfg = spec.unlearning.amnesiac
        self.train = train
        self.adversarial = adversarial
        self.per_epoch = max(1, -(-len(train) // spec.train.batch_size))
        self.batches = spec.train.epochs * self.per_epoch
        self.ids_sha256 = hashlib.sha256(np.sort(train.ids).astype(np.int64).tobytes()).hexdigest()

    # ------------------------------------------------------------------------------------ model
    def _model(self) -> nn.Module:
        model = build_model(self.spec.model, self.train.input_shape, self.train.num_classes, seed=self.spec.train.seed)
        check_no_buffers(model)
        return model

    @cached_property
    def params(self) -> list[dict[str, Any]]:
        """Name and shape of every parameter, in the order of the store's columns."""
        return [{"name": name, "shape": list(p.shape)} for name, p in self._model().named_parameters()]

    @property
    def n_params(self) -> int:
        return sum(int(np.prod(p["shape"])) for p in self.params)

    @cached_property
    def architecture_sha256(self) -> str:
        return _sha256(
            {
                "model": self.spec.model.model_dump(mode="json"),
                "input_shape": list(self.train.input_shape),
                "classes": self.train.num_classes,
                "params": self.params,
            }
        )

    @cached_property
    def training_sha256(self) -> str:
        """Everything the recorded updates depend on: a store from any other training is not this run's."""
        adv = self.adversarial
        return _sha256(
            {
                "architecture": self.architecture_sha256,
                "data": self.spec.data.model_dump(mode="json"),
                "train": self.spec.train.model_dump(mode="json"),
                "adversarial": adv.model_dump(mode="json") if adv else None,
                "norm": self.spec.property.norm if adv else None,
                "dtype": self.cfg.dtype,
            }
        )

    # ------------------------------------------------------------------------------------ files
    @staticmethod
    def _folder(run: Path) -> Path:
        return RunDir(run).method_dir(UnlearningMethod.AMNESIAC)

    def check_files(self, run: Path) -> None:
        self._open_store(run)
        if not (self._folder(run) / WEIGHTS_FILE).is_file():
            raise UverifyError(f"run {run}: {AMNESIAC_DIR}/{WEIGHTS_FILE} is missing (a half-written run?)")

    def storage_bytes(self, run: Path) -> int:
        folder = self._folder(run)
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0

    def _open_store(self, run: Path) -> Store:
        """The run's store, checked against the spec's model and training set; any mismatch is one line."""
        folder = self._folder(run)
        where = f"run {run}: {AMNESIAC_DIR}/"
        n_params = self.n_params
        try:
            info = json.loads((folder / STORE_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UverifyError(f"{where}{STORE_FILE} is missing (not an Amnesiac run, or a half-written one)") from None
        except (OSError, UnicodeDecodeError, ValueError):
            raise UverifyError(f"{where}{STORE_FILE} is not readable JSON") from None
        if not isinstance(info, dict) or info.get("schema") != STORE_SCHEMA:
            raise UverifyError(f"{where}{STORE_FILE} is not a {STORE_SCHEMA} file")
        if info.get("architecture_sha256") != self.architecture_sha256:
            raise UverifyError(
                f"{where}{STORE_FILE} was recorded for another model ({info.get('n_params')} parameters: "
                f"{_describe_params(info.get('params'))}); the spec's model has {n_params}: "
                f"{_describe_params(self.params)}"
            )
        if info.get("training_sha256") != self.training_sha256:
            raise UverifyError(
                f"{where}{STORE_FILE} was recorded by another training (data, train settings, adversarial or dtype "
                "differ from the run's spec)"
            )
        if info.get("training_ids_sha256") != self.ids_sha256:
            raise UverifyError(f"{where}{STORE_FILE} was recorded on another training set (the data changed?)")
        batches, dtype = info.get("batches"), np.dtype(self.cfg.dtype)
        path = folder / UPDATES_FILE
        if not path.is_file():
            raise UverifyError(f"{where}{UPDATES_FILE} is missing")
        size = path.stat().st_size
        if size != info.get("bytes"):
            raise UverifyError(
                f"{where}{UPDATES_FILE} holds {size} bytes, {STORE_FILE} says {info.get('bytes')} "
                "(truncated or replaced?)"
            )
        try:
            updates = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise UverifyError(f"{where}{UPDATES_FILE} is not a readable .npy file ({exc})") from None
        if updates.shape != (batches, n_params) or updates.dtype != dtype:
            raise UverifyError(
                f"{where}{UPDATES_FILE} holds {updates.dtype} {updates.shape}, expected {dtype} {(batches, n_params)}"
            )
        try:
            if sha256_file(folder / INDEX_FILE) != info.get("index_sha256"):
                raise UverifyError(
                    f"{where}{INDEX_FILE} is not the index {STORE_FILE} describes (replaced or damaged?)"
                )
        except FileNotFoundError:
            raise UverifyError(f"{where}{INDEX_FILE} is missing") from None
        index = read_npz(folder / INDEX_FILE, f"{where}{INDEX_FILE}", ("ids", "offsets", "epoch"))
        row_hashes = self._row_hashes(folder, info, where, updates.shape[0])
        ids, offsets, epoch = index["ids"], index["offsets"], index["epoch"]
        consistent = (
            offsets.shape == (updates.shape[0] + 1,)
            and epoch.shape == (updates.shape[0],)
            and ids.ndim == 1
            and len(offsets) > 0
            and offsets[0] == 0
            and offsets[-1] == len(ids)
            and bool(np.all(np.diff(offsets) >= 0))
        )
        if not consistent:
            raise UverifyError(
                f"{where}{INDEX_FILE} does not describe the {updates.shape[0]} batches of {UPDATES_FILE}"
            )
        return Store(
            folder, updates, ids.astype(np.int64), offsets.astype(np.int64), epoch.astype(np.int32), info, row_hashes
        )

    @staticmethod
    def _row_hashes(folder: Path, info: dict[str, Any], where: str, batches: int) -> np.ndarray:
        """Each row's hash as training recorded it; the file itself must be the one store.json names."""
        path = folder / ROW_HASHES_FILE
        if "row_hashes_sha256" not in info or not path.is_file():
            raise UverifyError(f"{where}{ROW_HASHES_FILE} is missing (a store without tamper evidence: train again)")
        if sha256_file(path) != info["row_hashes_sha256"]:
            raise UverifyError(f"{where}{ROW_HASHES_FILE} is not the one {STORE_FILE} describes (replaced or damaged?)")
        try:
            hashes = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            raise UverifyError(f"{where}{ROW_HASHES_FILE} is not a readable .npy file") from None
        if hashes.shape != (batches, 16) or hashes.dtype != np.uint8:
            raise UverifyError(f"{where}{ROW_HASHES_FILE} does not hold one 16-byte hash per recorded batch")
        return hashes

    def _subtracted(self, run: Path, store: Store) -> np.ndarray:
        name = f"run {run}: {AMNESIAC_DIR}/{SUBTRACTED_FILE}"
        done = read_int_vector(self._folder(run) / SUBTRACTED_FILE, name)
        if np.any((done < 0) | (done >= store.batches)):
            raise UverifyError(f"{name} must list batch indices of the store")
        return np.unique(done)

    # --------------------------------------------------------------------------------- training
    def fit(self, run: Path, *, progress: bool = True) -> tuple[nn.Module, list[dict[str, Any]]]:
        """Train M exactly as `retrain` would with nothing deleted, recording every batch's update."""
        trainer = trainer_for(self.spec, self.train, self.adversarial)
        model = trainer.model
        check_no_buffers(model)
        folder = self._folder(run)
        n_params = sum(p.numel() for p in model.parameters())
        history: list[dict[str, Any]] = []
        recorded: list[np.ndarray] = []
        hashes: list[bytes] = []

        def record(tmp: Path) -> None:
            updates = np.lib.format.open_memmap(tmp, mode="w+", dtype=self.cfg.dtype, shape=(self.batches, n_params))
            recorder = _Recorder(model, updates, self.per_epoch)
            epochs = trainer.fit(self.train, self.spec.train.epochs, on_step=recorder, progress=progress)
            if len(recorder.ids) != self.batches:
                raise RuntimeError(f"Amnesiac recorder: {len(recorder.ids)} batches, planned {self.batches}")
            updates.flush()
            history.extend(e.to_json() for e in epochs)
            recorded.extend(recorder.ids)
            hashes.extend(recorder.hashes)

        atomic_write(folder / UPDATES_FILE, record)
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in recorded])]).astype(np.int64)
        epoch = (np.arange(self.batches) // self.per_epoch + 1).astype(np.int32)

        atomic_write_npz(
            folder / INDEX_FILE, {"ids": np.concatenate(recorded).astype(np.int64), "offsets": offsets, "epoch": epoch}
        )
        atomic_write_npy(folder / ROW_HASHES_FILE, np.frombuffer(b"".join(hashes), np.uint8).reshape(-1, 16))
        self._save_weights(run, model)
        dtype = np.dtype(self.cfg.dtype)
        atomic_write_json(
            folder / STORE_FILE,
            {
                "schema": STORE_SCHEMA,
                "dtype": self.cfg.dtype,
                "n_params": n_params,
                "batches": self.batches,
                "batches_per_epoch": self.per_epoch,
                "epochs": self.spec.train.epochs,
                "batch_size": self.spec.train.batch_size,
                "training_ids": len(self.train),
                "training": "adversarial" if self.adversarial else "standard",
                "row_bytes": n_params * dtype.itemsize,
                "bytes": (folder / UPDATES_FILE).stat().st_size,
                "params": self.params,
                "architecture_sha256": self.architecture_sha256,
                "training_sha256": self.training_sha256,
                "training_ids_sha256": self.ids_sha256,
                "index_sha256": sha256_file(folder / INDEX_FILE),
                "row_hashes_sha256": sha256_file(folder / ROW_HASHES_FILE),
            },
        )
        return model.eval(), history

    def retrain(self, run: Path, deleted: np.ndarray, scratch: Path, *, progress: bool = True) -> nn.Module:
        """The gold standard: the same training from scratch without `deleted` (needs neither run nor scratch)."""
        return retrain(self.spec, self.train, self.adversarial, deleted, progress=progress)

    def load(self, run: Path) -> nn.Module:
        path = self._folder(run) / WEIGHTS_FILE
        model = self._model()
        try:
            tensors = load_safetensors(path.read_bytes())
        except FileNotFoundError:
            raise UverifyError(f"run {run}: {AMNESIAC_DIR}/{WEIGHTS_FILE} is missing (a half-written run?)") from None
        except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
            raise UverifyError(f"run {run}: {AMNESIAC_DIR}/{WEIGHTS_FILE} is not readable ({exc})") from None
        expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        if {name: tuple(t.shape) for name, t in tensors.items()} != expected:
            raise UverifyError(f"run {run}: {AMNESIAC_DIR}/{WEIGHTS_FILE} does not hold the spec's model's parameters")
        model.load_state_dict(tensors)
        return model.eval()

    def _save_weights(self, run: Path, model: nn.Module) -> None:
        state = {name: t.detach().contiguous().clone() for name, t in model.state_dict().items()}
        atomic_write(self._folder(run) / WEIGHTS_FILE, lambda tmp: save_file(state, tmp))

    def export(self, model: nn.Module, run: Path, samples: np.ndarray, metadata: dict[str, Any]) -> ExportReport:
        """One model, one graph."""
        return export_onnx(model, RunDir(run).model_file, samples, metadata)

    # --------------------------------------------------------------------------------- deletion
    def unlearn(
        self, run: Path, new_ids: np.ndarray, deleted: np.ndarray, *, progress: bool = True
    ) -> tuple[nn.Module, list[dict[str, Any]]]:
        """Subtract every not yet subtracted batch that held one of `new_ids`, then repair on the data
        without `deleted` (every id deleted so far). Writes into `run` (a staging copy)."""
        store = self._open_store(run)
        model = self.load(run)
        done = self._subtracted(run, store)
        holding = store.batches_holding(np.asarray(new_ids, np.int64))
        fresh = np.setdiff1d(holding, done)
        started = time.perf_counter()
        params = list(model.parameters())
        with torch.no_grad():
            theta = parameters_to_vector(params).double().numpy()
            theta = (theta - store.sum_updates(fresh)).astype(np.float32)
            vector = torch.from_numpy(theta)
            offset = 0
            for p in params:  # copied into the parameters' own storage (vector_to_parameters would alias theta)
                p.copy_(vector[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        subtract_seconds = time.perf_counter() - started

        started = time.perf_counter()
        retained = self.train.without(deleted)
        if self.cfg.repair_epochs and len(retained):
            self._repair_trainer(model, deleted).fit(retained, self.cfg.repair_epochs, progress=progress, desc="repair")
        repair_seconds = time.perf_counter() - started

        self._save_weights(run, model)
        subtracted = np.union1d(done, fresh).astype(np.int64)
        atomic_write_npy(self._folder(run) / SUBTRACTED_FILE, subtracted)
        touched = {
            "batches_subtracted": len(fresh),
            "batches_already_subtracted": len(holding) - len(fresh),
            "batches_total": store.batches,
            "fraction_of_batches": len(fresh) / store.batches,
            "subtracted_total": len(subtracted),
            "bytes_read": len(fresh) * store.row_bytes,
            "subtract_seconds": subtract_seconds,
            "repair_epochs": self.cfg.repair_epochs if len(retained) else 0,
            "repair_samples": len(retained),
            "repair_seconds": repair_seconds,
        }
        return model.eval(), [touched]

    def _repair_trainer(self, model: nn.Module, deleted: np.ndarray) -> Trainer:
        """A fresh optimiser, not the one training ended with: Adam's moments are running averages of
        every gradient, the deleted batches' included (the second moment forgets with 0.999 per step),
        so resuming them would feed the deleted samples back in. Fresh, M′ depends only on θ − ΣΔθ and
        the retained data. The seed is the spec's and the deleted set's: the same deletions repair alike."""
        digest = hashlib.sha256(np.asarray(np.sort(deleted), np.int64).tobytes()).digest()
        seed = int.from_bytes(hashlib.sha256(f"{self.spec.train.seed}".encode() + digest).digest()[:7], "big")
        return Trainer(model, self.spec.train, adversarial=self.adversarial, norm=self.spec.property.norm, seed=seed)


def _describe_params(params: Any) -> str:
    if not isinstance(params, list):
        return "unknown shapes"
    try:
        return " ".join("x".join(str(d) for d in p["shape"]) for p in params)
    except (TypeError, KeyError):
        return "unknown shapes"


__all__ = ["AMNESIAC_DIR", "Amnesiac", "Store", "check_no_buffers"]
