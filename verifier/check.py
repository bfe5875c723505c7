"""`uverify check`: per sample and per epsilon, a verdict on the L_p-ball property of an ONNX model.

    verified       every margin z_y - z_j has a certified lower bound > 1e-5 over the ball ∩ domain
    falsified      PGD found a point that onnxruntime confirms: in the ball, in the domain, misclassified
    unknown        neither
    misclassified  the clean sample is already wrong (onnxruntime's prediction)

Bounds are computed on the torch module imported from the file (checked against onnxruntime on the
samples when imported). PGD then attacks the same module on the correctly classified samples that the
bounds did not certify: a certified sample has no counterexample to find, and attacking it would
cost most of the run. `cross_check=True` attacks the certified ones too, so that a certified sample
with a confirmed counterexample, a soundness bug, is raised instead of reported; the soundness tests
run that way.

With `verify.complete` in the spec (`uverify check --complete`), branch and bound (verifier/bab) then
runs on every sample still unknown, each within `timeout_s`: it turns unknown into verified or
falsified (its counterexamples replayed by onnxruntime like PGD's), or leaves it unknown with the reason
it stopped. A majority vote, or a mode that does not fit the norm, is not branch-and-bounded: the
verdicts stay the incomplete ones and the report says why.

With an external solver (`verify.external`, `uverify check --external-solver`; vnn/external.py builds
it, the caller passes it in as `external`), every sample still unknown becomes one VNN-LIB property —
the box the bounds used and one disjunct per other class — for a solver that speaks the VNN-LIB 2.0
command line. Its `unsat` is recorded as verified, with the solver named in the report; its `sat`
counts only once onnxruntime replays the assignment exactly as it replays PGD's points (in the open
ball, in the domain, misclassified); an assignment that fails is an `error`, and the sample stays
unknown. `export` (`--export-vnnlib`) receives every (sample, epsilon) property with its verdict.

Parallel (`executor`, from `--workers`/`--scheduler` or the spec's `compute:`): the batches of every
epsilon (bounds, PGD, onnxruntime's confirmation) are tasks, and so is each sample branch and bound
takes up. A task gets the model's files by value (a cluster's workers need not see this machine's
paths) and the settings; each worker process loads and traces the model once, cached by the files'
sha256. Each batch's PGD has its own seed, from the attack seed, the epsilon and the batch's first
position, so no result depends on which worker ran a batch or in which order: the serial run (the
reference, in this process, nothing pickled) and every executor give the same report. `margins`, the
external solver and `--export-vnnlib` run in this process whatever the executor.
"""

from __future__ import annotations

import hashlib
import platform
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn
from tqdm.auto import tqdm

from uverify import __version__
from uverify.attacks import PGD, pgd_for
from uverify.compute import (
    SERIAL,
    Executor,
    ShippedFiles,
    local_copy,
    open_executor,
    ship_files,
    without_compute,
    worker_cached,
)
from uverify.datasets import Domain
from uverify.errors import UverifyError
from uverify.files import atomic_write_npz, ensure_writable_dir, sha256_file
from uverify.models.referee import Referee
from uverify.models.vote import VoteReferee, is_vote_manifest, read_vote_manifest
from uverify.specs.schema import CheckSpec, CompleteSpec, ComputeSpec, Spec, spec_sha256
from uverify.verifier import lirpa_compat
from uverify.verifier.bab import STOP_REASONS, BabError
from uverify.verifier.bab.stage import CompleteStage, SampleDecision
from uverify.verifier.bounds import Bounder, verified
from uverify.verifier.counterexamples import Judge, confirm_counterexamples
from uverify.verifier.onnx_import import load_onnx, onnx_to_torch, validate_against_onnxruntime
from uverify.verifier.property import Property, robustness
from uverify.verifier.report import (
    CompleteResult,
    Counts,
    EpsilonResult,
    ExternalResult,
    Report,
    SampleComplete,
    SampleExternal,
    SampleRow,
    Timings,
    save_report,
)
from uverify.verifier.samples import Samples, samples_for_check
from uverify.verifier.vote import MeanOfLogits, vote_margin

IMPORT_CHECK_SAMPLES = 32
DOMAIN_SLACK = 1e-6  # samples this close outside the domain (float round-off) are clipped into it
COUNTEREXAMPLE_KEYS = ("ids", "epsilon", "x", "x_adv", "y", "logits")


MAX_EXTERNAL_ERRORS = 5  # distinct error messages of the external solver kept in the report
# An external solver's assignment may sit this far (relative to max(1, |bound|)) outside the box it was
# given, the rounding of a printed decimal; onnxruntime then judges the point pulled into the ball.
ASSIGNMENT_TOLERANCE = 1e-6
# an epsilon's bound (or attack) batches go out in at most this many tasks per worker: enough for the
# tasks to even out across the workers, few enough that dispatch does not cost what they compute
TASKS_PER_WORKER = 2
T = TypeVar("T")


class SoundnessError(RuntimeError):
    """A sample was certified and also has a confirmed counterexample: a bug, never a result."""


@dataclass(frozen=True)
class ExternalAnswer:
    """What an external solver said about one property: `x` (flat) is its assignment after `sat`."""

    status: Literal["sat", "unsat", "unknown", "timeout", "error"]
    seconds: float
    x: np.ndarray | None = None
    message: str | None = None


class ExternalStage(Protocol):
    """A solver for the samples the built-in stages leave unknown (vnn/external.py's VNN-LIB driver)."""

    @property
    def name(self) -> str: ...  # the solver's own name, for the report

    @property
    def command(self) -> str: ...

    @property
    def timeout_s(self) -> float: ...

    def solve(
        self, prop: Property, input_shape: tuple[int, ...], output_shape: tuple[int, ...], tag: str
    ) -> ExternalAnswer: ...


@dataclass(frozen=True)
class BallProperty:
    """One (sample, epsilon) property of the check as a `Property` (the box the bounds use, one disjunct
    per other class), with the check's verdict on it: what `--export-vnnlib` writes."""

    sample_id: int
    epsilon: float
    label: int
    prop: Property
    verdict: str


Exporter = Callable[[Sequence[BallProperty]], None]
# Margin lower bounds computed outside the check (verifier/incremental.py composes them from per-shard
# certificates): given every sample (x, y) and the domain (lower, upper) as the check holds them, the
# indices of one batch and the epsilon, the bound whose sign decides, as `_Checker._bound` computes it.
MarginSource = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, float], np.ndarray]


def check(
    model_path: str | Path,
    spec: Spec | CheckSpec,
    samples: Samples,
    domain: Domain | None,
    *,
    progress: bool = True,
    counterexamples: str | Path | None = None,
    cross_check: bool = False,
    assumed: list[str] | None = None,
    external: ExternalStage | None = None,
    export: Exporter | None = None,
    margins: MarginSource | None = None,
    executor: Executor = SERIAL,
) -> Report:
    """Run the certified and the empirical check of the spec's property; see the module docstring.
    `margins` replaces the bound computation (everything after it is the same check; it runs serially,
    in this process). `executor` is where the batches and branch and bound's samples run."""
    started = time.perf_counter()
    model_path = Path(model_path)
    if not model_path.is_file():
        raise UverifyError(f"model {model_path}: no such file")
    if spec.verify.external is not None and external is None:
        raise UverifyError("verify.external is set, but this command does not run external solvers; use uverify check")
    target = _load_target(model_path)
    for what, wanted in (("an external solver", external), ("--export-vnnlib", export)):
        if wanted is not None:
            _check_vnnlib_fits(target, spec, what)
    inputs = _prepare_inputs(target, samples, domain, spec)
    distributed = margins is None and executor.kind != "serial"
    # distributed, the workers trace the model (this process only if branch and bound needs its stage)
    checker = _Checker(target, spec, inputs, cross_check, external, margins, trace=not distributed)
    if distributed:
        checker.distribute(executor)
    outcomes = checker.run(progress)
    if counterexamples is not None:
        _save_counterexamples(counterexamples, outcomes, inputs.x.shape[1:])
    if export is not None:
        export(checker.ball_properties(outcomes))
    seconds = time.perf_counter() - started
    return _report(model_path, spec, samples, target, inputs, outcomes, seconds, assumed or [])


def check_and_save(
    model_path: Path,
    spec: Spec | CheckSpec,
    samples_npz: Path | None,
    out: Path | None,
    *,
    progress: bool = True,
    cross_check: bool = False,
    complete: bool = False,
    timeout: float | None = None,
    external: ExternalStage | None = None,
    export: Exporter | None = None,
    compute: ComputeSpec | None = None,
) -> Report:
    """`uverify check`: the spec's samples (or the user's .npz), checked, and the report written to `out`
    with the confirmed counterexamples beside it (`REPORT.counterexamples.npz`). `complete` turns on
    branch and bound (the spec's `verify.complete`, or its defaults), `timeout` sets its budget;
    `external` and `export` are passed to `check`. `compute` (default: the spec's section) is where the
    batches run; the executor is opened before anything is read or written, so a scheduler that cannot
    be reached changes nothing, and the report records the spec without it."""
    spec = with_complete(spec, complete, timeout)
    if isinstance(spec, Spec):
        compute = compute or spec.compute
        spec = without_compute(spec)
    if out is not None:
        ensure_writable_dir(out.parent)
    with open_executor(compute) as executor:
        chosen = samples_for_check(spec, model_path, samples_npz)
        counterexamples = out.with_suffix(".counterexamples.npz") if out is not None else None
        report = check(
            model_path, spec, chosen.samples, chosen.domain,
            progress=progress, counterexamples=counterexamples, cross_check=cross_check, assumed=chosen.assumed,
            external=external, export=export, executor=executor,
        )  # fmt: skip
    if out is not None:
        save_report(report, out)
    return report


def with_complete(spec: Spec | CheckSpec, complete: bool, timeout: float | None) -> Spec | CheckSpec:
    """The spec with branch and bound on (`--complete`), its timeout replaced by `timeout` when given."""
    if timeout is not None and not complete:
        raise UverifyError("--timeout is the budget of --complete; give --complete too")
    if timeout is not None and not (np.isfinite(timeout) and timeout > 0):
        raise UverifyError(f"--timeout must be a positive number of seconds, got {timeout:g}")
    if not complete:
        return spec
    settings = spec.verify.complete or CompleteSpec()
    if timeout is not None:
        settings = settings.model_copy(update={"timeout_s": float(timeout)})
    return spec.model_copy(update={"verify": spec.verify.model_copy(update={"complete": settings})})


@dataclass(frozen=True)
class _Inputs:
    """The samples as the model takes them, inside the domain, with their labels and clean predictions."""

    x: np.ndarray
    y: np.ndarray  # the property's label: the sample's, or the model's clean prediction
    prediction: np.ndarray  # onnxruntime's
    lower: np.ndarray  # the domain, shaped like one sample
    upper: np.ndarray
    clean_seconds: float
    ids: np.ndarray
    num_classes: int

    @property
    def correct(self) -> np.ndarray:
        return self.prediction == self.y


def _prepare_inputs(target: _Target, samples: Samples, domain: Domain | None, spec: Spec | CheckSpec) -> _Inputs:
    """Shape the samples for the model, check the imported modules against onnxruntime on them, keep
    them inside the domain, and take onnxruntime's clean predictions."""
    shape = target.input_shape
    x = _fit(samples.x, shape, target.path)
    # bounds and PGD run on the imported modules: they must compute what the files compute, here
    target.validate(x[:IMPORT_CHECK_SAMPLES])
    lower, upper = _domain_arrays(domain, shape, target.path)
    flat = x.reshape(len(x), -1)
    outside = ~np.all((flat >= lower.reshape(-1) - DOMAIN_SLACK) & (flat <= upper.reshape(-1) + DOMAIN_SLACK), axis=1)
    if outside.any():
        raise UverifyError(
            f"{int(outside.sum())} sample(s) lie outside the input domain (first id {int(samples.ids[outside][0])})"
        )
    x = np.clip(x, lower, upper)  # round-off of at most DOMAIN_SLACK: the ball's centre must lie in the domain
    t0 = time.perf_counter()
    clean_logits = target.referee.logits(x)
    clean_seconds = time.perf_counter() - t0
    num_classes = clean_logits.shape[1]
    prediction = clean_logits.argmax(1).astype(np.int64)
    y = samples.y if spec.property.label else prediction
    if (y < 0).any() or (y >= num_classes).any():
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise UverifyError(f"label {bad} is out of range: the model has {num_classes} classes")
    return _Inputs(x, y, prediction, lower, upper, clean_seconds, samples.ids, num_classes)


@dataclass
class _BatchResult:
    """One batch's outcome at one epsilon: what a batch task sends back."""

    verdicts: np.ndarray
    margins: np.ndarray
    rejected: int
    found: dict[str, list[np.ndarray]]
    timing: dict[str, float]


@dataclass
class _EpsilonOutcome:
    result: EpsilonResult
    verdicts: np.ndarray  # per sample, object dtype
    margins: np.ndarray  # per sample: the certified lower bound whose sign decides (NaN where not bounded)
    found: dict[str, list[np.ndarray]] = field(default_factory=dict)  # confirmed counterexamples
    complete: list[SampleComplete | None] | None = None  # per sample, branch and bound's run
    external: list[SampleExternal | None] | None = None  # per sample, the external solver's answer


@dataclass
class _Bounded:
    """An epsilon after its bounds: verdicts so far, margin lower bounds, the bounds' seconds, the samples
    left to attack and their attack batches' results (in batch order)."""

    verdicts: np.ndarray
    margins: np.ndarray
    seconds_bounds: float
    attacked: np.ndarray
    attacks: Iterator[_BatchResult]


class _Checker:
    """Bounds first, a batch at a time; then PGD on every sample they left, then onnxruntime on what PGD
    found, a batch of those at a time."""

    def __init__(
        self,
        target: _Target,
        spec: Spec | CheckSpec,
        inputs: _Inputs,
        cross_check: bool,
        external: ExternalStage | None = None,
        margins: MarginSource | None = None,
        *,
        bounders: list[Bounder] | None = None,
        trace: bool = True,
    ) -> None:
        self.target, self.spec, self.inputs, self.cross_check = target, spec, inputs, cross_check
        self.external, self.margins = external, margins
        # traced now (an unsupported model fails before any batch), unless `margins` gives the bounds
        # or a worker's cache has them already, or the workers trace their own (`trace=False`)
        if bounders is None and margins is None and trace:
            bounders = self._new_bounders()
        self._bounders: list[Bounder] | None = bounders
        self.attack: PGD = pgd_for(
            spec.property.norm,
            steps=spec.attack.steps,
            restarts=spec.attack.restarts,
            step_size=spec.attack.step_size,
            loss=spec.attack.loss,
        )
        self.lower_t, self.upper_t = torch.from_numpy(inputs.lower), torch.from_numpy(inputs.upper)
        self.complete_spec = spec.verify.complete
        self._stage: CompleteStage | None = None
        self._skipped: str | None = None
        self.progress = False
        self.executor: Executor = SERIAL
        self.context: Any = None  # what the tasks get (a Dask future of a _WorkerContext, or one)

    def distribute(self, executor: Executor) -> None:
        """Run the batches and branch and bound's samples as tasks on `executor` (not with `margins`)."""
        assert self.margins is None
        self.executor = executor
        self.context = executor.share(_worker_context(self.target, self.spec, self.inputs, self.cross_check))

    def run(self, progress: bool) -> list[_EpsilonOutcome]:
        todo = np.flatnonzero(self.inputs.correct)
        batches = -(-len(todo) // self.spec.verify.batch_size)
        epsilons = self.spec.property.epsilon
        bar = tqdm(total=len(epsilons) * batches, desc="check", unit="batch", disable=None if progress else True)
        self.progress = progress
        try:  # on an executor every epsilon's bound batches are submitted at once, read back in order,
            # and each epsilon's attacks as soon as its bounds are in, before any attack is read: the
            # workers go from one epsilon's work to the next without waiting for this process
            bounds = [self._bounds(eps, todo) for eps in epsilons]
            staged = [self._bounded(eps, todo, bounds[k], bar) for k, eps in enumerate(epsilons)]
            return [self._epsilon(k, eps, staged[k]) for k, eps in enumerate(epsilons)]
        finally:
            bar.close()

    def _starts(self, todo: np.ndarray) -> range:
        return range(0, len(todo), self.spec.verify.batch_size)

    def _bounds(self, eps: float, todo: np.ndarray) -> Iterator[tuple[np.ndarray, float]]:
        """(margin lower bounds, seconds) of each batch of `todo` at `eps`, in order: computed here when
        its turn comes (serial), or submitted now as tasks."""
        size = self.spec.verify.batch_size
        if self.context is None:
            return (self._bound_batch(todo[start : start + size], eps) for start in self._starts(todo))
        inputs = self.inputs
        batches = [todo[start : start + size] for start in self._starts(todo)]
        futures = [
            self.executor.submit(_bound_task, self.context, [(inputs.x[idx], inputs.y[idx]) for idx in group], eps)
            for group in self._per_task(batches)
        ]
        return self._in_order(futures)

    def _attacks(self, eps: float, attacked: np.ndarray, margins: np.ndarray) -> Iterator[_BatchResult]:
        """PGD and onnxruntime's confirmation on the samples `attacked` (those the bounds left, all of
        them with `cross_check`), a batch of them at a time: one PGD run on every uncertified sample of
        the epsilon rather than one per bound batch (PGD's cost is per step, nearly whatever the batch).
        Each batch is seeded from its start in `attacked`, so no batch's attack depends on another's."""
        size, seed = self.spec.verify.batch_size, self.spec.attack.seed
        chunks = [(attacked[start : start + size], _batch_seed(seed, eps, start)) for start in self._starts(attacked)]
        if self.context is None:
            return (self._attack_batch(idx, eps, own, margins[idx]) for idx, own in chunks)
        inputs = self.inputs
        futures = []
        for group in self._per_task(chunks):
            batches = [
                ((inputs.x[idx], inputs.y[idx], inputs.prediction[idx], inputs.ids[idx]), own, margins[idx])
                for idx, own in group
            ]
            futures.append(self.executor.submit(_attack_task, self.context, batches, eps))
        return self._in_order(futures)

    def _per_task(self, batches: list[T]) -> list[list[T]]:
        """An epsilon's batches as tasks of consecutive batches, at most TASKS_PER_WORKER per worker:
        a CROWN batch of a small model takes a few ms, about what dispatching it costs on Dask. Each
        batch is still computed on its own (its bounds, its seed), so grouping changes no number."""
        per = max(1, -(-len(batches) // (TASKS_PER_WORKER * max(1, self.executor.workers))))
        return [batches[start : start + per] for start in range(0, len(batches), per)]

    def _in_order(self, futures: list[Any]) -> Iterator[Any]:
        """The tasks' batch results one by one, in batch order (lazily: the progress bar moves)."""
        for future in futures:
            yield from self.executor.gather([future])[0]

    def _bound_batch(self, idx: np.ndarray, eps: float) -> tuple[np.ndarray, float]:
        """The margin lower bounds of the samples `idx` at `eps`, and the seconds they took."""
        t0 = time.perf_counter()
        min_lb = self._bound(torch.from_numpy(self.inputs.x[idx]), torch.from_numpy(self.inputs.y[idx]), eps, idx)
        return min_lb, time.perf_counter() - t0

    def _attack_batch(self, idx: np.ndarray, eps: float, seed: int, min_lb: np.ndarray) -> _BatchResult:
        """The samples `idx` at `eps` after their bounds `min_lb`, PGD seeded with `seed`: a unit of
        work of every executor."""
        generator = torch.Generator().manual_seed(seed)
        timing = {"bounds": 0.0, "attack": 0.0, "referee": 0.0}
        found: dict[str, list[np.ndarray]] = {key: [] for key in COUNTEREXAMPLE_KEYS}
        verdicts, rejected = self._attack_and_confirm(idx, eps, min_lb, generator, timing, found)
        return _BatchResult(verdicts, min_lb, rejected, found, timing)

    def _bounded(self, eps: float, todo: np.ndarray, bounds: Iterable[tuple[np.ndarray, float]], bar: Any) -> _Bounded:
        """An epsilon's margins from its bound batches, the samples they certified, and the attacks on
        the rest (under way on an executor, computed when read serially)."""
        n = len(self.inputs.x)
        verdicts = np.full(n, "misclassified", dtype=object)
        margins = np.full(n, np.nan)
        seconds_bounds = 0.0
        batch = self.spec.verify.batch_size
        for start, (part, seconds) in zip(self._starts(todo), bounds, strict=True):
            margins[todo[start : start + batch]] = part
            seconds_bounds += seconds
            bar.update(1)
        is_verified = verified(torch.from_numpy(margins[todo][:, None])).numpy()
        verdicts[todo[is_verified]] = "verified"
        attacked = todo if self.cross_check else todo[~is_verified]
        return _Bounded(verdicts, margins, seconds_bounds, attacked, self._attacks(eps, attacked, margins))

    def _epsilon(self, k: int, eps: float, staged: _Bounded) -> _EpsilonOutcome:
        verdicts, margins, attacked = staged.verdicts, staged.margins, staged.attacked
        found: dict[str, list[np.ndarray]] = {key: [] for key in COUNTEREXAMPLE_KEYS}
        timing = {"bounds": staged.seconds_bounds, "attack": 0.0, "referee": 0.0}
        rejected = 0
        batch = self.spec.verify.batch_size
        for start, result in zip(self._starts(attacked), staged.attacks, strict=True):
            verdicts[attacked[start : start + batch]] = result.verdicts
            rejected += result.rejected
            for key in COUNTEREXAMPLE_KEYS:
                found[key].extend(result.found[key])
            for key in ("attack", "referee"):
                timing[key] += result.timing[key]
        clean_seconds = self.inputs.clean_seconds if k == 0 else 0.0
        result = _summarise(eps, verdicts, timing, rejected, clean_seconds)
        complete_rows = external_rows = None
        if self.complete_spec is not None:
            complete_rows, summary = self._complete(eps, verdicts, found, result)
            result = _with_complete(result, verdicts, summary)
        if self.external is not None:
            external_rows, external = self._external(eps, verdicts, found, result)
            result = _with_counts(result, verdicts, {"external": external})
        return _EpsilonOutcome(result, verdicts, margins, found, complete_rows, external_rows)

    def ball_property(self, i: int, eps: float) -> Property:
        """Sample `i`'s property at `eps`: the box the bounder bounds (x ∓ eps in float32, cut to the
        domain, exactly as `Bounder.margins` computes it) and one disjunct per other class."""
        x = torch.from_numpy(self.inputs.x[i : i + 1])
        lower = torch.maximum(x - eps, self.lower_t).numpy().astype(np.float64).ravel()
        upper = torch.minimum(x + eps, self.upper_t).numpy().astype(np.float64).ravel()
        return robustness(lower, upper, int(self.inputs.y[i]), self.inputs.num_classes)

    def ball_properties(self, outcomes: list[_EpsilonOutcome]) -> list[BallProperty]:
        """Every (sample, epsilon) property with its verdict, misclassified samples included (their
        property is violated at the centre), samples in order within each epsilon."""
        inputs = self.inputs
        return [
            BallProperty(int(inputs.ids[i]), eps, int(inputs.y[i]), self.ball_property(i, eps), str(o.verdicts[i]))
            for eps, o in zip(self.spec.property.epsilon, outcomes, strict=True)
            for i in range(len(inputs.x))
        ]

    def _external(
        self, eps: float, verdicts: np.ndarray, found: dict[str, list[np.ndarray]], before: EpsilonResult
    ) -> tuple[list[SampleExternal | None], ExternalResult]:
        """The external solver on every unknown sample; updates `verdicts` and `found` in place."""
        assert self.external is not None
        solver, inputs = self.external, self.inputs
        unknown = np.flatnonzero(verdicts == "unknown")
        rows: list[SampleExternal | None] = [None] * len(verdicts)
        answers = dict.fromkeys(("sat", "unsat", "unknown", "timeout", "error"), 0)
        errors: list[str] = []
        seconds = 0.0
        output_shape = (inputs.num_classes,)
        for i in tqdm(
            unknown, desc=f"{solver.name} at {eps:g}", unit="sample", disable=None if self.progress else True
        ):
            prop = self.ball_property(int(i), eps)
            answer = solver.solve(prop, self.target.input_shape, output_shape, f"id{int(inputs.ids[i])}_eps{eps!r}")
            status, message = answer.status, answer.message
            if status == "sat":
                message = self._replay_external(int(i), eps, prop, answer, found)
                if message is None:
                    verdicts[i] = "falsified"
                else:
                    status = "error"
            elif status == "unsat":
                verdicts[i] = "verified"
            answers[status] += 1
            seconds += answer.seconds
            if status == "error" and message and message not in errors and len(errors) < MAX_EXTERNAL_ERRORS:
                errors.append(message)
            rows[i] = SampleExternal(status=status, seconds=answer.seconds, message=message)
        summary = ExternalResult(
            solver=solver.name, command=solver.command, timeout_s=solver.timeout_s, attempted=len(unknown),
            verified=answers["unsat"], falsified=answers["sat"],
            undecided=len(unknown) - answers["unsat"] - answers["sat"], answers=answers, errors=errors,
            seconds=seconds, before_certified_accuracy=before.certified_accuracy,
            before_pgd_accuracy=before.pgd_accuracy,
        )  # fmt: skip
        return rows, summary

    def _replay_external(
        self, i: int, eps: float, prop: Property, answer: ExternalAnswer, found: dict[str, list[np.ndarray]]
    ) -> str | None:
        """onnxruntime on a solver's `sat` assignment: None when it is a counterexample (recorded in
        `found`), else why not — an error, never a verdict."""
        inputs, box = self.inputs, prop.boxes[0]
        x = None if answer.x is None else np.asarray(answer.x, dtype=np.float64).ravel()
        if x is None or x.shape != box.lower.shape or not np.all(np.isfinite(x)):
            return f"sat without a usable assignment of the {box.lower.size} inputs"
        slack = ASSIGNMENT_TOLERANCE * np.maximum(1.0, np.maximum(np.abs(box.lower), np.abs(box.upper)))
        outside = np.flatnonzero((x < box.lower - slack) | (x > box.upper + slack))
        if len(outside):
            j = int(outside[0])
            return f"sat assignment outside the box: X_{j} = {x[j]!r} not in [{box.lower[j]!r}, {box.upper[j]!r}]"
        centre = inputs.x[i : i + 1]
        point = x.astype(np.float32).reshape(centre.shape)
        y = inputs.y[i : i + 1]
        conf = confirm_counterexamples(
            self.target.referee, centre, point, y, eps, self.spec.property.norm, inputs.lower, inputs.upper
        )
        if not bool(conf.confirmed[0]):
            predicted = int(conf.logits[0].argmax()) if conf.logits.size else -1
            return (
                f"sat assignment failed the onnxruntime replay: onnxruntime predicts {predicted} there, the label "
                f"is {int(y[0])}"
            )
        for key, value in (
            ("ids", inputs.ids[i : i + 1]), ("epsilon", np.array([eps])), ("x", centre),
            ("x_adv", conf.x_adv), ("y", y), ("logits", conf.logits),
        ):  # fmt: skip
            found[key].append(value)
        return None

    def _complete(
        self, eps: float, verdicts: np.ndarray, found: dict[str, list[np.ndarray]], before: EpsilonResult
    ) -> tuple[list[SampleComplete | None], dict[str, Any]]:
        """Branch and bound on every unknown sample; updates `verdicts` and `found` in place."""
        assert self.complete_spec is not None
        unknown = np.flatnonzero(verdicts == "unknown")
        rows: list[SampleComplete | None] = [None] * len(verdicts)
        stops = dict.fromkeys(STOP_REASONS, 0)
        summary: dict[str, Any] = {
            "spec": self.complete_spec, "attempted": len(unknown), "stops": stops, "seconds": 0.0,
            "before": before, "mode": "skipped", "skipped": None,
        }  # fmt: skip
        stage = self._complete_stage()
        if stage is None:
            summary["skipped"] = self._skipped
            return rows, summary
        summary["mode"] = stage.mode
        inputs = self.inputs
        decisions: Iterable[SampleDecision]
        if self.context is None:
            decisions = (stage.decide(inputs.x[i], int(inputs.y[i]), eps) for i in unknown)
        else:  # every unknown sample a task, submitted at once
            futures = [self.executor.submit(_decide_task, self.context, inputs.x[i], int(inputs.y[i]), eps)
                       for i in unknown]  # fmt: skip
            decisions = (self.executor.gather([future])[0] for future in futures)  # lazily: the bar moves
        for i, decision in tqdm(
            zip(unknown, decisions, strict=True), total=len(unknown), desc=f"branch and bound at {eps:g}",
            unit="sample", disable=None if self.progress else True,
        ):  # fmt: skip
            rows[i] = SampleComplete(status=decision.status, seconds=decision.seconds, domains=decision.domains)
            stops[decision.status] += 1
            summary["seconds"] += decision.seconds
            if decision.status == "verified":
                verdicts[i] = "verified"
            elif decision.status == "falsified":
                verdicts[i] = "falsified"
                for key, value in (
                    ("ids", inputs.ids[i : i + 1]), ("epsilon", np.array([eps])), ("x", inputs.x[i : i + 1]),
                    ("x_adv", decision.x_adv[None]), ("y", inputs.y[i : i + 1]), ("logits", decision.logits[None]),
                ):  # fmt: skip
                    found[key].append(value)
        return rows, summary

    def _complete_stage(self) -> CompleteStage | None:
        """Built once, at the first unknown sample; None (with `_skipped` saying why) where BaB cannot run."""
        if self._stage is not None or self._skipped is not None:
            return self._stage
        assert self.complete_spec is not None
        if self.target.vote:
            self._skipped = "a majority vote is certified from its members' bounds; branch and bound needs one model"
            return None
        try:
            self._stage = CompleteStage(
                self.bounders[0], self.complete_spec, self.target.referee, self.spec.property.norm,
                self.inputs.lower, self.inputs.upper,
            )  # fmt: skip
        except BabError as error:
            self._skipped = str(error)
        return self._stage

    def _attack_and_confirm(
        self,
        idx: np.ndarray,
        eps: float,
        min_lb: np.ndarray,
        generator: torch.Generator,
        timing: dict[str, float],
        found: dict[str, list[np.ndarray]],
    ) -> tuple[np.ndarray, int]:
        """(verdicts, rejected PGD points) of the samples `idx` at `eps`, given their margin bounds."""
        x, y = self.inputs.x[idx], self.inputs.y[idx]
        xb, yb = torch.from_numpy(x), torch.from_numpy(y)
        is_verified = verified(torch.from_numpy(min_lb[:, None])).numpy()
        t0 = time.perf_counter()
        x_adv, hit = self._attack(
            xb, yb, x, y, eps, generator, np.ones(len(idx), bool) if self.cross_check else ~is_verified
        )
        timing["attack"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        confirmed, rejected = self._confirm(idx, x, y, x_adv, hit, eps, found)
        timing["referee"] += time.perf_counter() - t0
        if (is_verified & confirmed).any():
            bad = self.inputs.ids[idx][is_verified & confirmed][0]
            raise SoundnessError(
                f"sample {bad} at epsilon {eps:g}: {self.spec.verify.method} certified it, yet onnxruntime "
                "confirms a counterexample; this is a bug in uverify, please report it"
            )
        verdicts = np.where(is_verified, "verified", np.where(confirmed, "falsified", "unknown"))
        return verdicts, rejected

    @property
    def bounders(self) -> list[Bounder]:
        """One per member; with `margins` or `trace=False`, built only if branch and bound needs them."""
        if self._bounders is None:
            self._bounders = self._new_bounders()
        return self._bounders

    def _new_bounders(self) -> list[Bounder]:
        target, method = self.target, self.spec.verify.method
        # traced at the batches' size, which the first batch then uses (a trace costs ~0.1 s per member)
        first = max(1, min(self.spec.verify.batch_size, int(self.inputs.correct.sum())))
        return [
            Bounder(module, target.input_shape, method, num_classes=self.inputs.num_classes, trace_batch=first)
            for module in target.members
        ]

    def _bound(self, xb: torch.Tensor, yb: torch.Tensor, eps: float, idx: np.ndarray) -> np.ndarray:
        """The lower bound whose sign certifies the model: its own, or the vote's order statistic."""
        if self.margins is not None:
            inputs = self.inputs
            return self.margins(inputs.x, inputs.y, inputs.lower, inputs.upper, idx, eps)
        norm = self.spec.property.norm
        member_margins = [
            b.margins(xb, yb, eps, norm, self.lower_t, self.upper_t).numpy().min(axis=1) for b in self.bounders
        ]
        return vote_margin(np.stack(member_margins)) if self.target.vote else member_margins[0]

    def _attack(
        self,
        xb: torch.Tensor,
        yb: torch.Tensor,
        x: np.ndarray,
        y: np.ndarray,
        eps: float,
        generator: torch.Generator,
        todo: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """PGD on the samples `todo` selects: (its points, which are candidates worth confirming)."""
        x_adv = np.zeros_like(x)
        hit = np.zeros(len(x), bool)
        if not todo.any():
            return x_adv, hit
        sel = torch.from_numpy(np.flatnonzero(todo))
        result = self.attack.run(
            self.target.module, xb[sel], yb[sel], eps, self.lower_t[None], self.upper_t[None], generator
        )
        x_adv[todo] = result.x_adv.numpy()
        if self.target.vote:  # a vote is judged by onnxruntime, not by the surrogate PGD attacked
            hit[todo] = self.target.referee.logits(x_adv[todo]).argmax(1) != y[todo]
        else:
            hit[todo] = result.success.numpy()
        return x_adv, hit

    def _confirm(
        self,
        idx: np.ndarray,
        x: np.ndarray,
        y: np.ndarray,
        x_adv: np.ndarray,
        hit: np.ndarray,
        eps: float,
        found: dict[str, list[np.ndarray]],
    ) -> tuple[np.ndarray, int]:
        """onnxruntime's verdict on the PGD candidates: (confirmed per sample, how many it rejected)."""
        confirmed = np.zeros(len(idx), bool)
        if not hit.any():
            return confirmed, 0
        inputs = self.inputs
        conf = confirm_counterexamples(
            self.target.referee, x[hit], x_adv[hit], y[hit], eps, self.spec.property.norm, inputs.lower, inputs.upper
        )
        confirmed[hit] = conf.confirmed
        keep = conf.confirmed
        for key, value in (
            ("ids", inputs.ids[idx][hit][keep]),
            ("epsilon", np.full(int(keep.sum()), eps)),
            ("x", x[hit][keep]),
            ("x_adv", conf.x_adv[keep]),
            ("y", y[hit][keep]),
            ("logits", conf.logits[keep]),
        ):
            found[key].append(value)
        return confirmed, int((~conf.confirmed).sum())


def _report(
    model_path: Path,
    spec: Spec | CheckSpec,
    samples: Samples,
    target: _Target,
    inputs: _Inputs,
    outcomes: list[_EpsilonOutcome],
    seconds: float,
    assumed: list[str],
) -> Report:
    rows = [
        SampleRow(
            id=int(samples.ids[i]),
            label=int(inputs.y[i]),
            prediction=int(inputs.prediction[i]),
            verdicts=[o.verdicts[i] for o in outcomes],
            margin_lower_bounds=[None if not np.isfinite(o.margins[i]) else float(o.margins[i]) for o in outcomes],
            complete=None
            if outcomes[0].complete is None
            else [o.complete[i] if o.complete else None for o in outcomes],
            external=None
            if outcomes[0].external is None
            else [o.external[i] if o.external else None for o in outcomes],
        )
        for i in range(len(inputs.x))
    ]
    return Report(
        spec_name=spec.name,
        spec_sha256=spec_sha256(spec),
        spec=spec.model_dump(mode="json"),
        model={"path": str(model_path), "sha256": sha256_file(model_path), "metadata": target.metadata},
        samples_source=samples.source,
        assumed=assumed,
        norm=spec.property.norm,
        method=spec.verify.method,
        attack=spec.attack.model_dump(mode="json"),
        versions=_versions(),
        seconds=seconds,
        results=[o.result for o in outcomes],
        samples=rows,
    )


@dataclass
class _Target:
    """What `check` verifies: one ONNX classifier, or a majority vote of several (verifier/vote.py)."""

    path: Path
    members: list[nn.Module]  # bounded one by one
    protos: list[onnx.ModelProto]  # their ONNX graphs, for the import check
    module: nn.Module  # PGD attacks this: the model itself, or the vote's mean-of-logits surrogate
    referee: Judge  # Referee | VoteReferee: `logits` decides predictions and counterexamples
    input_shape: tuple[int, ...]
    metadata: dict[str, Any]
    vote: bool
    files: list[Path] = field(default_factory=list)  # every file it was read from (a vote's manifest first)

    def validate(self, x: np.ndarray) -> None:
        """Every member against onnxruntime, on the referee's own sessions (the same files' bytes)."""
        referee = self.referee
        sessions = referee.members if isinstance(referee, VoteReferee) else [referee]
        for proto, member, session in zip(self.protos, self.members, sessions, strict=True):
            validate_against_onnxruntime(proto, member, x, referee=session)


def _load_target(model_path: Path) -> _Target:
    if not is_vote_manifest(model_path):
        proto = load_onnx(model_path)
        imported = onnx_to_torch(proto)
        return _Target(
            model_path, [imported.module], [proto], imported.module, Referee(model_path),
            imported.input_shape, dict(imported.metadata), vote=False, files=[model_path],
        )  # fmt: skip
    _, files = read_vote_manifest(model_path)
    protos = [load_onnx(f) for f in files]
    members = [onnx_to_torch(p) for p in protos]
    shapes = {m.input_shape for m in members}
    if len(shapes) != 1:
        raise UverifyError(f"vote {model_path}: members take different input shapes {sorted(shapes)}")
    metadata: dict[str, Any] = dict(members[0].metadata)
    metadata.update(aggregation="majority_vote", members=[str(f.relative_to(model_path.parent)) for f in files])
    modules = [m.module for m in members]
    return _Target(
        model_path, modules, protos, MeanOfLogits(modules).eval(), VoteReferee(files),
        members[0].input_shape, metadata, vote=True, files=[model_path, *files],
    )  # fmt: skip


def _check_vnnlib_fits(target: _Target, spec: Spec | CheckSpec, what: str) -> None:
    """A VNN-LIB property is a box over one network's inputs: the L_inf ball of one ONNX file."""
    if target.vote:
        raise UverifyError(f"{what} needs one ONNX model; {target.path.name} is a majority vote of several")
    if spec.property.norm != "inf":
        raise UverifyError(f"{what} needs an L_inf ball (a VNN-LIB box); the property's norm is L{spec.property.norm}")


def _attack_seed(seed: int, eps: float) -> int:
    """A PGD seed from the spec's seed and the epsilon's value, not its place in the sweep: the same
    epsilon gives the same attack in any sweep."""
    digest = hashlib.sha256(f"{seed}:{eps!r}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _batch_seed(seed: int, eps: float, start: int) -> int:
    """The PGD seed of the batch that begins at position `start` of the attacked samples: its own, so
    that no batch's attack depends on another's (the first batch keeps the epsilon's seed, so a check
    of one batch attacks as it always did)."""
    if start == 0:
        return _attack_seed(seed, eps)
    digest = hashlib.sha256(f"{seed}:{eps!r}:{start}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# ------------------------------------------------------------------------------- the workers' side
@dataclass(frozen=True)
class _WorkerContext:
    """What every task of one check shares: the model's files by value, the settings, the domain.
    `key` (a sha256 over all of it) names the loaded model in a worker's cache."""

    key: str
    model: ShippedFiles
    entry: str  # the model (or vote manifest) file, relative to the shipped files' root
    spec: Spec | CheckSpec
    lower: np.ndarray
    upper: np.ndarray
    num_classes: int
    cross_check: bool


def _worker_context(target: _Target, spec: Spec | CheckSpec, inputs: _Inputs, cross_check: bool) -> _WorkerContext:
    root = target.path.parent
    model = ship_files(root, target.files)
    h = hashlib.sha256()
    for part in (model.digest, spec.model_dump_json(), str(inputs.num_classes), str(cross_check)):
        h.update(part.encode() + b"\0")
    h.update(inputs.lower.tobytes() + inputs.upper.tobytes())
    entry = target.path.relative_to(root).as_posix()
    return _WorkerContext(
        h.hexdigest(), model, entry, spec, inputs.lower, inputs.upper, inputs.num_classes, cross_check
    )


@dataclass
class _Loaded:
    """A worker's copy of the model: loaded, imported and traced once per process."""

    target: _Target
    bounders: list[Bounder]
    stage: CompleteStage | None = None


def _loaded(context: _WorkerContext) -> _Loaded:
    def load() -> _Loaded:
        target = _load_target(local_copy(context.model) / context.entry)
        method = context.spec.verify.method
        bounders = [Bounder(m, target.input_shape, method, num_classes=context.num_classes) for m in target.members]
        return _Loaded(target, bounders)

    loaded: _Loaded = worker_cached(context.key, load)
    return loaded


def _bound_task(
    context: _WorkerContext, batches: list[tuple[np.ndarray, np.ndarray]], eps: float
) -> list[tuple[np.ndarray, float]]:
    """Each batch's (x, y) margin lower bounds on a worker, and the seconds they took."""
    loaded = _loaded(context)
    out = []
    for x, y in batches:
        # bounds need only x and y: the prediction and ids, which the attack side reports, are placeholders
        inputs = _Inputs(x, y, y, context.lower, context.upper, 0.0, np.arange(len(x)), context.num_classes)
        checker = _Checker(loaded.target, context.spec, inputs, context.cross_check, bounders=loaded.bounders)
        out.append(checker._bound_batch(np.arange(len(x)), eps))
    return out


def _attack_task(
    context: _WorkerContext,
    batches: list[tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], int, np.ndarray]],
    eps: float,
) -> list[_BatchResult]:
    """PGD and onnxruntime on each batch ((x, y, prediction, ids), its seed, its margin lower bounds)
    on a worker, as `_Checker` does."""
    loaded = _loaded(context)
    out = []
    for (x, y, prediction, ids), seed, min_lb in batches:
        inputs = _Inputs(x, y, prediction, context.lower, context.upper, 0.0, ids, context.num_classes)
        checker = _Checker(loaded.target, context.spec, inputs, context.cross_check, bounders=loaded.bounders)
        out.append(checker._attack_batch(np.arange(len(x)), eps, seed, min_lb))
    return out


def _decide_task(context: _WorkerContext, x: np.ndarray, y: int, eps: float) -> SampleDecision:
    """Branch and bound on one sample on a worker (its stage built once per process)."""
    loaded = _loaded(context)
    if loaded.stage is None:
        assert context.spec.verify.complete is not None
        loaded.stage = CompleteStage(
            loaded.bounders[0], context.spec.verify.complete, loaded.target.referee, context.spec.property.norm,
            context.lower, context.upper,
        )  # fmt: skip
    return loaded.stage.decide(x, y, eps)


def _summarise(
    eps: float, verdicts: np.ndarray, timing: dict[str, float], rejected: int, clean_seconds: float
) -> EpsilonResult:
    n = len(verdicts)
    count = {v: int((verdicts == v).sum()) for v in ("verified", "falsified", "unknown", "misclassified")}
    clean = (n - count["misclassified"]) / n
    certified = count["verified"] / n
    pgd = (count["verified"] + count["unknown"]) / n
    return EpsilonResult(
        epsilon=eps,
        clean_accuracy=clean,
        certified_accuracy=certified,
        pgd_accuracy=pgd,
        gap_pgd=clean - pgd,
        gap_certified=clean - certified,
        counts=Counts(**count, rejected_counterexamples=rejected),
        seconds=Timings(bounds=timing["bounds"], attack=timing["attack"], referee=timing["referee"] + clean_seconds),
    )


def _with_counts(before: EpsilonResult, verdicts: np.ndarray, update: dict[str, Any]) -> EpsilonResult:
    """The epsilon's result recounted from `verdicts`, with `update`'s fields set too."""
    n = len(verdicts)
    count = {v: int((verdicts == v).sum()) for v in ("verified", "falsified", "unknown")}
    certified = count["verified"] / n
    pgd = (count["verified"] + count["unknown"]) / n
    clean = before.clean_accuracy
    return before.model_copy(
        update={
            "certified_accuracy": certified,
            "pgd_accuracy": pgd,
            "gap_pgd": clean - pgd,
            "gap_certified": clean - certified,
            "counts": before.counts.model_copy(update=count),
            **update,
        }
    )


def _with_complete(before: EpsilonResult, verdicts: np.ndarray, summary: dict[str, Any]) -> EpsilonResult:
    """The epsilon's result recounted after branch and bound, with the incomplete figures kept beside."""
    stops = summary["stops"]
    decided = not (verdicts == "unknown").any()
    complete = CompleteResult(
        mode=summary["mode"],
        timeout_s=summary["spec"].timeout_s,
        attempted=summary["attempted"],
        verified=stops["verified"],
        falsified=stops["falsified"],
        undecided=summary["attempted"] - stops["verified"] - stops["falsified"],
        stop_reasons=stops,
        seconds=summary["seconds"],
        exact_accuracy=float((verdicts == "verified").sum() / len(verdicts)) if decided else None,
        incomplete_certified_accuracy=before.certified_accuracy,
        incomplete_pgd_accuracy=before.pgd_accuracy,
        skipped=summary["skipped"],
    )
    return _with_counts(before, verdicts, {"complete": complete})


def _fit(x: np.ndarray, shape: tuple[int, ...], model_path: Path) -> np.ndarray:
    """Samples shaped for the model: the same per-sample shape, or the same number of features
    laid out row-major (VNN-COMP files take MNIST as [1, 784, 1])."""
    if tuple(x.shape[1:]) == shape:
        return np.ascontiguousarray(x, dtype=np.float32)
    if int(np.prod(x.shape[1:])) == int(np.prod(shape)):
        return np.ascontiguousarray(x.reshape(len(x), *shape), dtype=np.float32)
    raise UverifyError(
        f"model {model_path} takes inputs of shape {list(shape)} per sample; the samples have {list(x.shape[1:])}"
    )


def _domain_arrays(domain: Domain | None, shape: tuple[int, ...], model_path: Path) -> tuple[np.ndarray, np.ndarray]:
    if domain is None:
        return np.full(shape, -np.inf, np.float32), np.full(shape, np.inf, np.float32)
    if domain.lower.size != int(np.prod(shape)):
        raise UverifyError(
            f"the input domain has {domain.lower.size} features but model {model_path} takes {list(shape)}"
        )
    return domain.lower.reshape(shape).astype(np.float32), domain.upper.reshape(shape).astype(np.float32)


def _save_counterexamples(path: str | Path, outcomes: list[_EpsilonOutcome], shape: tuple[int, ...]) -> None:
    arrays = {}
    for key in COUNTEREXAMPLE_KEYS:
        parts = [part for o in outcomes for part in o.found[key]]
        arrays[key] = np.concatenate(parts) if parts else np.zeros((0, *shape) if key in ("x", "x_adv") else (0,))
    atomic_write_npz(path, arrays, compressed=True)


def _versions() -> dict[str, str]:
    return {
        "uverify": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "auto_LiRPA": getattr(lirpa_compat.import_auto_lirpa(), "__version__", "0.3"),
    }
