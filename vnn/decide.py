"""One VNN-LIB instance's verdict: `decide(network, query, deadline) -> Verdict`.

A pipeline of stages, cheapest first, each leaving the next only what it could not decide (DESIGN.md):
the open work is the set of (property, box, disjunct) triples no stage has refuted yet.

1. `BoundsStage("CROWN")` — auto_LiRPA through `verifier.bounds.Bounder`, with the property's rows as
   the specification: the network is followed by one Linear layer whose outputs are 0 and −(C y − d),
   so the bounder's "margins" z_0 − z_r are exactly C y − d, row by row (CROWN composes linear layers
   exactly, so this is the bound it gives for C passed directly). A disjunct is refuted on a box when
   one of its rows has a lower bound above `CERTIFY_MARGIN`.
2. `AttackStage` — PGD (`uverify.attacks`) minimising the property's slack inside each open box: the
   box is mapped onto [−1, 1]^n and the attacked "logits" are 0 and −slack_k per open disjunct k, so the
   PGD margin max_k(−slack_k) is positive exactly where a disjunct is violated.
3. `BoundsStage("alpha-CROWN")`.
4. `AttackStage` again, with more random starts.

A branch-and-bound stage (`uverify.verifier.bab`, being written) plugs in as one more `Stage`:
`decide(network, query, deadline, stages=(*DEFAULT_STAGES, bab_stage))`; it refutes triples with
`problem.refute` or returns candidate points, as these stages do.

Soundness: `unsat` only when every triple is refuted; `sat` only for a candidate that onnxruntime
replays — the float32 point lies inside its box (rounded inward, exact in float64) and onnxruntime's
outputs violate every row of one disjunct strictly (slack < 0, which also meets a strict `<`). A
candidate that fails the replay is dropped, never reported.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np
import torch
from torch import nn

from uverify.attacks import LinfPGD
from uverify.errors import UverifyError, one_line
from uverify.verifier.bounds import CERTIFY_MARGIN, Bounder
from uverify.verifier.property import Box, Conjunction, Property
from uverify.vnn.network import FlatModule, Network
from uverify.vnn.reader import Query

__all__ = [
    "DEFAULT_STAGES",
    "AttackStage",
    "BoundsStage",
    "Candidate",
    "Counterexample",
    "Deadline",
    "Problem",
    "Result",
    "Stage",
    "Verdict",
    "decide",
    "replay",
]


class Result(StrEnum):
    """The first line of a VNN-COMP result file."""

    SAT = "sat"
    UNSAT = "unsat"
    UNKNOWN = "unknown"
    TIMEOUT = "timeout"
    ERROR = "error"

    @property
    def uverify_verdict(self) -> str:
        """The same verdict in `uverify check`'s words."""
        return {"sat": "falsified", "unsat": "verified"}.get(self.value, "unknown")


class Deadline:
    """A wall-clock limit (time.monotonic seconds); None means no limit."""

    def __init__(self, seconds: float | None, start: float | None = None) -> None:
        self.start = time.monotonic() if start is None else start
        self.end = math.inf if seconds is None else self.start + max(0.0, float(seconds))

    @classmethod
    def until(cls, end: float) -> Deadline:
        """A deadline at an absolute time.monotonic() value (the same clock in every process)."""
        deadline = cls(None)
        deadline.end = end
        return deadline

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return self.remaining() <= 0


@dataclass(frozen=True)
class Counterexample:
    """A replayed violation: onnxruntime ran `x` (flat float32, inside the box) and gave `y`."""

    x: np.ndarray
    y: np.ndarray
    property_index: int
    box_index: int
    disjunct_index: int


@dataclass(frozen=True)
class Verdict:
    result: Result
    stage: str | None = None  # the stage that decided (None for unknown/timeout)
    counterexample: Counterexample | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # what failed on the way (a bound method auto_LiRPA could not run, ...)


@dataclass(frozen=True)
class Candidate:
    """A point a stage believes violates property `property_index` (flat, float64 or float32)."""

    x: np.ndarray
    property_index: int
    box_index: int


Triple = tuple[int, int, int]  # (property, box, disjunct)


class Problem:
    """What is left to decide, shared by the stages of one `decide` call."""

    def __init__(self, network: Network, query: Query) -> None:
        self.network = network
        self.query = query
        self.open: set[Triple] = {
            (p, b, k)
            for p, prop in enumerate(query.properties)
            for b in range(len(prop.boxes))
            for k in range(len(prop.violation))
        }
        self.notes: list[str] = []
        self._flat: FlatModule | None = None

    @property
    def properties(self) -> tuple[Property, ...]:
        return self.query.properties

    def flat_module(self) -> FlatModule:
        if self._flat is None:
            self._flat = self.network.flat_module()
        return self._flat

    def open_boxes(self) -> list[tuple[int, int, list[int]]]:
        """(property, box, open disjuncts) for every box with work left, in order."""
        out: dict[tuple[int, int], list[int]] = {}
        for p, b, k in sorted(self.open):
            out.setdefault((p, b), []).append(k)
        return [(p, b, ks) for (p, b), ks in out.items()]

    def refute(self, triple: Triple) -> None:
        """Record that no point of the box reaches the disjunct (a stage proved it)."""
        self.open.discard(triple)


class Stage(Protocol):
    """One step of the pipeline: refutes triples through `problem.refute`, returns candidate points."""

    name: str

    def __call__(self, problem: Problem, deadline: Deadline) -> Sequence[Candidate]: ...


# --------------------------------------------------------------------------------------------------
# Bounds
# --------------------------------------------------------------------------------------------------


class RowsHead(nn.Module):
    """y ↦ (0, −(C y − d)): the bounder's margins z_0 − z_r of these "logits" are C y − d."""

    def __init__(self, C: np.ndarray, d: np.ndarray) -> None:
        super().__init__()
        rows, outputs = C.shape
        self.linear = nn.Linear(outputs, rows + 1)
        with torch.no_grad():
            self.linear.weight.zero_()
            self.linear.bias.zero_()
            self.linear.weight[1:] = torch.as_tensor(-C, dtype=torch.float32)
            self.linear.bias[1:] = torch.as_tensor(d, dtype=torch.float32)
        self.requires_grad_(False)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.linear(y)


def _outward_float32(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 bounds containing [lower, upper]: bounding a slightly larger box stays sound."""
    lo = lower.astype(np.float32)
    hi = upper.astype(np.float32)
    lo = np.where(lo.astype(np.float64) > lower, np.nextafter(lo, np.float32(-np.inf)), lo)
    hi = np.where(hi.astype(np.float64) < upper, np.nextafter(hi, np.float32(np.inf)), hi)
    return lo, hi


class BoundsStage:
    """Refute disjuncts with certified lower bounds of C y − d over each box (see the module docstring)."""

    def __init__(self, method: str = "CROWN", *, alpha_iterations: int = 20) -> None:
        self.method = method
        self.name = method
        self.alpha_iterations = alpha_iterations

    def __call__(self, problem: Problem, deadline: Deadline) -> Sequence[Candidate]:
        by_property: dict[int, list[tuple[int, list[int]]]] = {}
        for p, b, ks in problem.open_boxes():
            by_property.setdefault(p, []).append((b, ks))
        for p, boxes in by_property.items():
            if deadline.expired():
                break
            prop = problem.properties[p]
            try:
                lower_bounds = self._bound(problem, prop, [b for b, _ in boxes])
            except UverifyError as exc:  # auto_LiRPA cannot bound this model this way: leave it open
                problem.notes.append(f"{self.name}: {one_line(exc)}")
                return []
            for row, (b, ks) in enumerate(boxes):
                offset = 0
                for k, conj in enumerate(prop.violation):
                    rows = lower_bounds[row, offset : offset + len(conj.d)]
                    offset += len(conj.d)
                    if k in ks and bool((rows > CERTIFY_MARGIN).any()):
                        problem.refute((p, b, k))
        return []

    def _bound(self, problem: Problem, prop: Property, box_indices: list[int]) -> np.ndarray:
        """Lower bounds (boxes, rows) of C y − d, every row of every disjunct in order."""
        C = np.concatenate([c.C for c in prop.violation])
        d = np.concatenate([c.d for c in prop.violation])
        module = nn.Sequential(problem.flat_module(), RowsHead(C, d))
        bounder = Bounder(module, (problem.network.num_inputs,), self.method, alpha_iterations=self.alpha_iterations)
        boxes = [prop.boxes[b] for b in box_indices]
        lows, highs = zip(*(_outward_float32(box.lower, box.upper) for box in boxes), strict=True)
        lo = torch.from_numpy(np.stack(lows))
        hi = torch.from_numpy(np.stack(highs))
        centre = (lo + hi) / 2
        # a radius that reaches past every side of every box: the bounder clips to [lo, hi] exactly
        epsilon = float((hi - lo).max()) * (1 + 1e-6) + 1e-30
        labels = torch.zeros(len(boxes), dtype=torch.long)
        bounds = bounder.margins(centre, labels, epsilon, "inf", lo, hi)
        return bounds.numpy().astype(np.float64)


# --------------------------------------------------------------------------------------------------
# Attacks
# --------------------------------------------------------------------------------------------------


class OutOfTime(Exception):
    """Raised from inside an attack's forward pass when the deadline passes: PGD has no deadline of its own."""


class SlackLogits(nn.Module):
    """u ∈ [−1, 1]^n ↦ (0, −slack_k(f(centre + radius · u)) for each disjunct k): PGD's margin with label 0
    is max_k −slack_k, positive exactly where some disjunct holds."""

    centre: torch.Tensor
    radius: torch.Tensor

    def __init__(
        self, flat: nn.Module, box: Box, conjunctions: Sequence[Conjunction], deadline: Deadline | None = None
    ) -> None:
        super().__init__()
        self.flat = flat
        self.deadline = deadline
        self.register_buffer("centre", torch.as_tensor((box.lower + box.upper) / 2, dtype=torch.float32))
        self.register_buffer("radius", torch.as_tensor((box.upper - box.lower) / 2, dtype=torch.float32))
        for k, conj in enumerate(conjunctions):
            self.register_buffer(f"C{k}", torch.as_tensor(conj.C, dtype=torch.float32))
            self.register_buffer(f"d{k}", torch.as_tensor(conj.d, dtype=torch.float32))
        self.count = len(conjunctions)

    def point(self, u: torch.Tensor) -> torch.Tensor:
        return self.centre + self.radius * u

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.deadline is not None and self.deadline.expired():
            raise OutOfTime
        y = self.flat(self.point(u))
        slacks = [(y @ getattr(self, f"C{k}").T - getattr(self, f"d{k}")).amax(dim=1) for k in range(self.count)]
        return torch.stack([torch.zeros_like(slacks[0]), *(-s for s in slacks)], dim=1)


class AttackStage:
    """PGD on each open box against its open disjuncts; candidates go to the onnxruntime replay.

    First from the box's centre (untargeted, then aimed at each disjunct in turn), then `rounds` batches
    of random starts, as many per batch as `values` input values allow (at most `max_batch`): a
    5-input ACAS Xu box gets 1024 starts a batch, a 784-pixel image 64. Stops at the deadline."""

    def __init__(
        self,
        name: str = "PGD",
        *,
        steps: int = 50,
        rounds: int = 1,
        values: int = 50_000,
        max_batch: int = 1024,
        seed: int = 0,
    ) -> None:
        self.name = name
        self.steps = steps
        self.rounds = rounds
        self.values = values
        self.max_batch = max_batch
        self.seed = seed

    def __call__(self, problem: Problem, deadline: Deadline) -> Sequence[Candidate]:
        generator = torch.Generator().manual_seed(self.seed)
        for p, b, ks in problem.open_boxes():
            prop = problem.properties[p]
            box = prop.boxes[b]
            head = SlackLogits(problem.flat_module(), box, [prop.violation[k] for k in ks], deadline)
            n = len(box.lower)
            batch = max(8, min(self.max_batch, self.values // max(n, 1)))
            zero = torch.zeros((1, n))
            label = torch.zeros(1, dtype=torch.long)
            lower, upper = -torch.ones((1, n)), torch.ones((1, n))
            attacks = [(LinfPGD(steps=self.steps, restarts=1 + len(ks)), 1)]
            attacks += [(LinfPGD(steps=self.steps, restarts=1, random_first_start=True), batch)] * self.rounds
            for attack, size in attacks:
                try:
                    result = attack.run(head, zero.expand(size, n), label.expand(size), 1.0, lower, upper, generator)
                except OutOfTime:
                    return []
                if bool(result.success.any()):
                    with torch.no_grad():
                        x = head.point(result.x_adv[result.success]).numpy().astype(np.float64)
                    return [Candidate(point, p, b) for point in x[:8]]
        return []


DEFAULT_STAGES: tuple[Stage, ...] = (
    BoundsStage("CROWN"),
    AttackStage("PGD"),
    BoundsStage("alpha-CROWN"),
    AttackStage("PGD-restarts", steps=100, rounds=2, seed=1),
)


# --------------------------------------------------------------------------------------------------
# The replay and the pipeline
# --------------------------------------------------------------------------------------------------


def _inward_float32(x: np.ndarray, box: Box) -> np.ndarray | None:
    """x as float32 inside the box exactly (in float64), or None when a side has no float32 inside."""
    x = np.clip(np.asarray(x, dtype=np.float64), box.lower, box.upper).astype(np.float32)
    wide = x.astype(np.float64)
    x = np.where(wide < box.lower, np.nextafter(x, np.float32(np.inf)), x)
    x = np.where(x.astype(np.float64) > box.upper, np.nextafter(x, np.float32(-np.inf)), x)
    if not bool(box.contains(x[None].astype(np.float64))[0]):
        return None
    return x


def replay(network: Network, query: Query, candidates: Sequence[Candidate]) -> Counterexample | None:
    """The first candidate onnxruntime confirms: inside its box, every row of one disjunct strictly violated."""
    for candidate in candidates:
        prop = query.properties[candidate.property_index]
        box = prop.boxes[candidate.box_index]
        x = _inward_float32(candidate.x, box)
        if x is None:
            continue
        y = network.run(x[None])[0]
        y64 = y.astype(np.float64)[None]
        for k, conj in enumerate(prop.violation):
            if bool(np.all(np.isfinite(y64))) and float(conj.slack(y64)[0]) < 0:
                return Counterexample(x, y, candidate.property_index, candidate.box_index, k)
    return None


def decide(network: Network, query: Query, deadline: Deadline, stages: Sequence[Stage] = DEFAULT_STAGES) -> Verdict:
    """Run the stages in order until the query is decided or the deadline passes (see the module docstring)."""
    problem = Problem(network, query)
    seconds: dict[str, float] = {}
    for stage in stages:
        if deadline.expired():
            return Verdict(Result.TIMEOUT, None, None, seconds, tuple(problem.notes))
        started = time.perf_counter()
        candidates = stage(problem, deadline)
        found = replay(network, query, candidates) if candidates else None
        seconds[stage.name] = seconds.get(stage.name, 0.0) + time.perf_counter() - started
        if candidates and found is None:
            problem.notes.append(f"{stage.name}: {len(candidates)} candidate(s) failed the onnxruntime replay")
        if found is not None:
            return Verdict(Result.SAT, stage.name, found, seconds, tuple(problem.notes))
        if not problem.open:
            return Verdict(Result.UNSAT, stage.name, None, seconds, tuple(problem.notes))
    result = Result.TIMEOUT if deadline.expired() else Result.UNKNOWN
    return Verdict(result, None, None, seconds, tuple(problem.notes))
