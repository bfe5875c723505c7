"""SISA unlearning (Bourtoule et al., "Machine Unlearning", IEEE S&P 2021): Sharded, Isolated,
Sliced, Aggregated training, and exact deletion by retraining only what saw the deleted samples.

The training ids are permuted (seeded) and cut into S shards, each shard into R slices; the manifest
records every id's shard and slice. Shard k's model trains slice by slice: step r trains on slices
1..r together, and a checkpoint (weights, optimiser state and both random streams) is written after
every step. Deleting ids retrains each affected shard from the checkpoint before the first slice that
held one of them, on the same data without the deleted ids: the result is bit-for-bit the model that
SISA would have trained from scratch without them (same manifest, same seeds).

Epoch budget: every step trains `slice_epochs(E, R) = round(2E / (R + 1))` epochs (at least one), so a
shard's whole schedule costs about E epochs over the shard, as training it unsliced would
(sum_r r/R * 2E/(R+1) = E). Under that budget the expected cost of one deletion is (2R+1)/(3R) of a
shard's training, and the expected speed-up over retraining one model on all data is S*3R/(2R+1).

Aggregation: mean_logits (default) and mean_softmax are one torch module, exported as one ONNX graph
(an Add chain times 1/S: auto_LiRPA 0.3 cannot bound torch.stack(...).mean(0)) so CROWN bounds the
whole ensemble; majority_vote counts each shard's argmax (ties go to the lowest class) and is exported
shard by shard with a vote manifest (see models/vote.py).

Parallel: a shard's training (from scratch, or from a checkpoint after a deletion) is one pure task,
`train_shard`: it gets the shard's data and starting checkpoint as arrays and bytes, and returns its
checkpoints and weights, which this process writes into the run. So the shards run on any executor
(compute.py) and the workers need neither the data files nor the run directory; every shard carries
its own seed, so serial, process-pool and Dask runs write the same bytes.
"""

from __future__ import annotations

import io
import pickle  # only for its error type: checkpoints are read with weights_only=True
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from uverify.compute import SERIAL, Executor, TaskFuture
from uverify.datasets import Dataset
from uverify.errors import UverifyError, one_line
from uverify.files import atomic_write, atomic_write_bytes, atomic_write_npz, read_npz
from uverify.kinds import Aggregation, UnlearningMethod
from uverify.models import ExportReport, build_model, export_onnx
from uverify.models.vote import write_vote_manifest
from uverify.rundir import RunDir
from uverify.specs.schema import AdversarialSpec, Spec
from uverify.unlearning.train import Trainer

MANIFEST_FILE = "manifest.npz"


def slice_epochs(epochs: int, slices: int) -> int:
    """Epochs per slice step, so that a shard's schedule costs about `epochs` epochs over the shard."""
    return max(1, round(2 * epochs / (slices + 1)))


def shard_seed(seed: int, shard: int) -> int:
    """Shard k's own seed (initial weights, shuffling, attack starts), independent of the others."""
    return int(np.random.SeedSequence([seed, shard]).generate_state(1)[0])


@dataclass(frozen=True)
class Manifest:
    """Which shard and which slice each training id belongs to (in training order within a slice)."""

    ids: np.ndarray  # int64, every training id once, grouped by shard then slice
    shard: np.ndarray  # int32 per id
    slice: np.ndarray  # int32 per id, 0-based
    shards: int
    slices: int

    @classmethod
    def build(cls, train_ids: np.ndarray, shards: int, slices: int, seed: int) -> Manifest:
        n = len(train_ids)
        if shards * slices > n:
            raise UverifyError(
                f"unlearning.sisa: {shards} shards x {slices} slices need at least {shards * slices} training "
                f"samples; the training set has {n}"
            )
        order = np.random.default_rng(np.random.SeedSequence([seed, 0x515A])).permutation(np.sort(train_ids))
        ids, shard, slice_ = [], [], []
        for k, shard_ids in enumerate(np.array_split(order, shards)):
            for r, slice_ids in enumerate(np.array_split(shard_ids, slices)):
                ids.append(slice_ids)
                shard.append(np.full(len(slice_ids), k, np.int32))
                slice_.append(np.full(len(slice_ids), r, np.int32))
        return cls(np.concatenate(ids).astype(np.int64), np.concatenate(shard), np.concatenate(slice_), shards, slices)

    def members(self, shard: int, up_to_slice: int, exclude: np.ndarray) -> np.ndarray:
        """Ids of `shard` in slices 0..up_to_slice, in manifest order, without `exclude`."""
        mask = (self.shard == shard) & (self.slice <= up_to_slice)
        if len(exclude):
            mask &= ~np.isin(self.ids, exclude)
        return self.ids[mask]

    def locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard, slice) of each id; every id must be in the manifest."""
        order = np.argsort(self.ids)
        pos = np.searchsorted(self.ids[order], ids)
        pos = np.minimum(pos, len(order) - 1)
        found = self.ids[order][pos] == ids
        if not found.all():
            raise UverifyError(f"sample id {int(ids[~found][0])} is not in the SISA manifest")
        return self.shard[order][pos], self.slice[order][pos]

    def save(self, path: Path) -> None:
        shape = np.array([self.shards, self.slices])
        atomic_write_npz(path, {"ids": self.ids, "shard": self.shard, "slice": self.slice, "shape": shape})

    @classmethod
    def load(cls, path: Path) -> Manifest:
        data = read_npz(path, f"SISA manifest {path}", ("ids", "shard", "slice", "shape"))
        ids, shard, slice_, shape = data["ids"], data["shard"], data["slice"], data["shape"]
        if not (len(ids) == len(shard) == len(slice_)) or shape.shape != (2,):
            raise UverifyError(f"SISA manifest {path}: arrays of different lengths")
        return cls(ids.astype(np.int64), shard.astype(np.int32), slice_.astype(np.int32), int(shape[0]), int(shape[1]))


class SisaEnsemble(nn.Module):
    """The aggregate M = M1 ◇ ... ◇ MS as one module.

    mean_logits and mean_softmax are written as a sum over members times 1/S (one ONNX graph that
    CROWN bounds); majority_vote returns the vote counts per class, for accuracy only."""

    def __init__(self, members: list[nn.Module], aggregation: Aggregation) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.aggregation = Aggregation(aggregation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for member in self.members:
            out = member(x)
            if self.aggregation == Aggregation.MEAN_SOFTMAX:
                out = torch.softmax(out, dim=1)
            elif self.aggregation == Aggregation.MAJORITY_VOTE:
                out = nn.functional.one_hot(out.argmax(1), out.shape[1]).to(out.dtype)
            total = out if total is None else total + out
        assert total is not None
        return total if self.aggregation == Aggregation.MAJORITY_VOTE else total * (1.0 / len(self.members))


@dataclass(frozen=True)
class SliceLog:
    shard: int
    slice: int
    samples: int
    epochs: int
    loss: float | None
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


@dataclass(frozen=True)
class ShardTask:
    """Everything one shard's training needs, picklable for any executor's worker."""

    spec: Spec
    adversarial: AdversarialSpec | None
    shard: int
    first: int  # the first slice step to train (0-based); the checkpoint after first-1 is `start`
    data: Dataset  # the shard's ids in slices first.. (deleted ones left out), in manifest order
    slice_of: np.ndarray  # each row's slice (0-based): step r trains on the rows with slice_of <= r
    epochs: int  # per slice step
    start: bytes | None  # the checkpoint after slice first-1; None when first == 0
    start_name: str  # that checkpoint's path, for its error message
    progress: bool


@dataclass(frozen=True)
class ShardResult:
    shard: int
    checkpoints: list[bytes]  # after each slice step first..R-1
    weights: dict[str, torch.Tensor]  # the final model's
    logs: list[SliceLog]
    seconds: float


def train_shard(task: ShardTask) -> ShardResult:
    """Train one shard from its start (fresh or a checkpoint) through its last slice: a pure function
    of the task, so it gives the same bytes in any process."""
    started = time.perf_counter()
    trainer = _trainer(task)
    slices = task.spec.unlearning.sisa.slices
    checkpoints, logs = [], []
    for r in range(task.first, slices):
        data = task.data.subset(np.flatnonzero(task.slice_of <= r))
        step_started = time.perf_counter()
        history = []
        if len(data):  # every earlier slice deleted: nothing to train on yet, the model stays as it is
            history = trainer.fit(
                data, task.epochs, progress=task.progress,
                desc=f"shard {task.shard + 1}/{task.spec.unlearning.sisa.shards} slice {r + 1}",
            )  # fmt: skip
        checkpoints.append(_checkpoint_bytes(trainer.state_dict()))
        logs.append(
            SliceLog(
                task.shard, r + 1, len(data), task.epochs, history[-1].loss if history else None,
                time.perf_counter() - step_started,
            )
        )  # fmt: skip
    weights = {k: v.detach().contiguous() for k, v in trainer.model.state_dict().items()}
    return ShardResult(task.shard, checkpoints, weights, logs, time.perf_counter() - started)


def _trainer(task: ShardTask) -> Trainer:
    """The shard's trainer, fresh or as its starting checkpoint left it."""
    seed = shard_seed(task.spec.train.seed, task.shard)
    model = build_model(task.spec.model, task.data.input_shape, task.data.num_classes, seed=seed)
    spec = task.spec
    trainer = Trainer(model, spec.train, adversarial=task.adversarial, norm=spec.property.norm, seed=seed)
    if task.start is not None:
        try:
            trainer.load_state_dict(torch.load(io.BytesIO(task.start), weights_only=True))
        except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as exc:
            raise UverifyError(f"SISA checkpoint {task.start_name}: not readable ({one_line(exc)})") from None
        trainer.model.eval()
    return trainer


class Sisa:
    """Training, loading, deletion and export of a SISA ensemble inside a run directory."""

    kind = UnlearningMethod.SISA

    def __init__(self, spec: Spec, train: Dataset, adversarial: AdversarialSpec | None) -> None:
        self.spec = spec
        self.cfg = spec.unlearning.sisa
        self.train = train
        self.adversarial = adversarial
        self.epochs = slice_epochs(spec.train.epochs, self.cfg.slices)
        order = np.argsort(train.ids)
        self._sorted_ids, self._order = train.ids[order], order
        self.executor: Executor = SERIAL  # where the shards train (the pipeline sets the command's)

    # ------------------------------------------------------------------------------------ files
    @staticmethod
    def checkpoint(run: Path, shard: int, slice_: int) -> Path:
        return RunDir(run).method_dir(UnlearningMethod.SISA) / f"shard_{shard:03d}" / f"slice_{slice_ + 1:03d}.pt"

    @staticmethod
    def weights(run: Path, shard: int) -> Path:
        """The shard's final weights alone (the last checkpoint also holds optimiser state)."""
        return RunDir(run).method_dir(UnlearningMethod.SISA) / f"shard_{shard:03d}" / "model.safetensors"

    def manifest(self, run: Path) -> Manifest:
        manifest = Manifest.load(self._manifest_file(run))
        if (manifest.shards, manifest.slices) != (self.cfg.shards, self.cfg.slices):
            raise UverifyError(
                f"run {run}: the manifest has {manifest.shards}x{manifest.slices} shards x slices, the spec "
                f"{self.cfg.shards}x{self.cfg.slices}"
            )
        if not np.array_equal(np.sort(manifest.ids), self._sorted_ids):
            raise UverifyError(f"run {run}: the SISA manifest does not match the spec's training set")
        return manifest

    def check_files(self, run: Path) -> None:
        expected = [self.checkpoint(run, k, r) for k in range(self.cfg.shards) for r in range(self.cfg.slices)]
        missing = [p for p in expected + [self.weights(run, k) for k in range(self.cfg.shards)] if not p.is_file()]
        if missing:
            raise UverifyError(f"run {run}: SISA file {missing[0].relative_to(run)} is missing")

    def storage_bytes(self, run: Path) -> int:
        return sum(p.stat().st_size for p in RunDir(run).method_dir(self.kind).rglob("*") if p.is_file())

    @staticmethod
    def _manifest_file(run: Path) -> Path:
        return RunDir(run).method_dir(UnlearningMethod.SISA) / MANIFEST_FILE

    # --------------------------------------------------------------------------------- training
    def fit(
        self, run: Path, *, manifest: Manifest | None = None, exclude: np.ndarray | None = None, progress: bool = True
    ) -> tuple[SisaEnsemble, list[dict[str, Any]]]:
        """Train every shard from scratch into `run` (a staging folder), writing the manifest and
        all checkpoints; `exclude` leaves ids out (the exactness baseline: SISA without them)."""
        manifest = manifest or Manifest.build(self.train.ids, self.cfg.shards, self.cfg.slices, self.spec.train.seed)
        exclude = np.zeros(0, np.int64) if exclude is None else exclude
        manifest.save(self._manifest_file(run))
        futures = [self._train_shard(run, manifest, k, 0, exclude, progress) for k in range(self.cfg.shards)]
        members, logs = [], []
        for result in self.executor.gather(futures):
            members.append(self._write_shard(run, result, 0))
            logs += [log.to_json() for log in result.logs]
        return SisaEnsemble(members, self.cfg.aggregation), logs

    def retrain(self, run: Path, deleted: np.ndarray, scratch: Path, *, progress: bool = True) -> SisaEnsemble:
        """The exact baseline: SISA from scratch into `scratch`, same manifest and seeds, without `deleted`."""
        model, _ = self.fit(scratch, manifest=self.manifest(run), exclude=deleted, progress=progress)
        return model

    def load(self, run: Path) -> SisaEnsemble:
        self.manifest(run)
        self.check_files(run)
        return SisaEnsemble([self._member(run, k) for k in range(self.cfg.shards)], self.cfg.aggregation)

    def _member(self, run: Path, shard: int) -> nn.Module:
        """Shard `shard`'s final model from its weights file (lighter than the full last checkpoint)."""
        path = self.weights(run, shard)
        model = build_model(self.spec.model, self.train.input_shape, self.train.num_classes, seed=0)
        try:
            model.load_state_dict(load_file(str(path)))
        except (OSError, RuntimeError, SafetensorError) as exc:
            raise UverifyError(f"SISA weights {path}: not readable ({one_line(exc)})") from None
        return model.eval()

    def unlearn(
        self, run: Path, new_ids: np.ndarray, deleted: np.ndarray, *, progress: bool = True
    ) -> tuple[SisaEnsemble, list[dict[str, Any]]]:
        """Retrain the shards that held `new_ids` from the checkpoint before the first slice that held
        one, without any of `deleted` (all ids deleted so far, `new_ids` included). Writes into `run`."""
        manifest = self.manifest(run)
        self.check_files(run)
        shard, slice_ = manifest.locate(new_ids)
        touched = []
        for k in np.unique(shard):
            if len(manifest.members(int(k), self.cfg.slices - 1, deleted)) == 0:
                raise UverifyError(
                    f"deleting these ids leaves SISA shard {int(k)} without training data; use fewer shards"
                )
        firsts = {k: int(slice_[shard == k].min()) for k in map(int, np.unique(shard))}
        futures = [self._train_shard(run, manifest, k, first, deleted, progress) for k, first in firsts.items()]
        for result in self.executor.gather(futures):
            k, first = result.shard, firsts[result.shard]
            self._write_shard(run, result, first)
            touched.append(
                {
                    "shard": k,
                    "from_slice": first + 1,
                    "slices_retrained": self.cfg.slices - first,
                    "ids": int((shard == k).sum()),
                    "samples_seen": int(sum(log.samples * log.epochs for log in result.logs)),
                    "seconds": result.seconds,
                }
            )
        return self.load(run), touched

    def export(self, model: nn.Module, run: Path, samples: np.ndarray, metadata: dict[str, Any]) -> ExportReport:
        """mean_logits and mean_softmax: the ensemble as one graph. majority_vote: each member as its own
        graph (a vote is not a graph bound propagation passes through) and a manifest listing them."""
        folder = RunDir(run)
        metadata = metadata | {"sisa": self.cfg.model_dump(mode="json")}
        if self.cfg.aggregation != Aggregation.MAJORITY_VOTE:
            return export_onnx(model, folder.model_file, samples, metadata)
        assert isinstance(model, SisaEnsemble)
        reports = [
            export_onnx(member, folder.shard_file(k), samples, metadata | {"sisa_shard": k})
            for k, member in enumerate(model.members)
        ]
        write_vote_manifest(folder.vote_file, [r.path for r in reports], metadata.get("spec_sha256"))
        ops = sorted({op for r in reports for op in r.ops})
        return ExportReport(folder.vote_file, max(r.max_abs_diff for r in reports), ops, reports[0].opset)

    def _train_shard(
        self, run: Path, manifest: Manifest, shard: int, first: int, exclude: np.ndarray, progress: bool
    ) -> TaskFuture[ShardResult]:
        """Submit shard `shard`'s training from slice `first` (0: from scratch) to the executor."""
        members = manifest.members(shard, self.cfg.slices - 1, exclude)
        _, slice_of = manifest.locate(members)
        start, start_name = None, ""
        if first > 0:
            path = self.checkpoint(run, shard, first - 1)
            start_name = str(path)
            try:
                start = path.read_bytes()
            except OSError as exc:
                raise UverifyError(f"SISA checkpoint {path}: not readable ({one_line(exc)})") from None
        task = ShardTask(
            self.spec, self.adversarial, shard, first, self._subset(members), slice_of, self.epochs, start,
            start_name, progress and self.executor.kind == "serial",
        )  # fmt: skip
        return self.executor.submit(train_shard, task)

    def _write_shard(self, run: Path, result: ShardResult, first: int) -> nn.Module:
        """Write a shard's checkpoints and weights into `run`; its final model, as the ensemble's member."""
        for r, data in enumerate(result.checkpoints, start=first):
            atomic_write_bytes(self.checkpoint(run, result.shard, r), data)
        atomic_write(self.weights(run, result.shard), lambda tmp: save_file(result.weights, str(tmp)))
        model = build_model(self.spec.model, self.train.input_shape, self.train.num_classes, seed=0)
        model.load_state_dict(result.weights)
        return model.eval()

    def _subset(self, ids: np.ndarray) -> Dataset:
        pos = np.searchsorted(self._sorted_ids, ids)
        return self.train.subset(self._order[pos])


__all__ = [
    "Manifest",
    "ShardResult",
    "ShardTask",
    "Sisa",
    "SisaEnsemble",
    "SliceLog",
    "shard_seed",
    "slice_epochs",
    "train_shard",
]


def _checkpoint_bytes(state: dict[str, Any]) -> bytes:
    """torch.save into memory: saved to a path, the zip archive is named after the (random) temporary
    file, so the same weights would give different bytes in every run."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()
