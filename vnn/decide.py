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
5. `SampleStage` — on boxes of at most 16 inputs (ACAS Xu), a dense scan of random points (some
   coordinates on the box's faces, where ACAS Xu's violations sit) and PGD from the best of them: a
   narrow violation that gradient steps from a few starts miss is often hit by half a million samples.

6. `BabStage` — branch and bound (`uverify.verifier.bab`) on every box still open, against its open
   disjuncts, under what is left of the deadline: input splitting for boxes of at most 16 inputs (ACAS
   Xu), ReLU splitting with β-CROWN otherwise, where on a Linear/ReLU chain the MILP (HiGHS) first looks
   for a violating point (mnistfc). A box's open disjuncts are refuted together when the tree's leaves
   all have a certified lower bound of C y − d above `CERTIFY_MARGIN` on a row of each disjunct they
   still reach (or are infeasible by their splits); a falsified box returns its point as a candidate.

Any other stage plugs in the same way (`decide(network, query, deadline, stages=...)`): it refutes
triples with `problem.refute` or returns candidate points.

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
from uverify.verifier.bab import BabConfig, BranchAndBound, Region
from uverify.verifier.bounds import CERTIFY_MARGIN, Bounder
from uverify.verifier.property import Box, Conjunction, Property
from uverify.vnn.network import FlatModule, Network
from uverify.vnn.reader import Query

__all__ = [
    "DEFAULT_STAGES",
    "AttackStage",
    "BabStage",
    "BoundsStage",
    "Candidate",
    "Counterexample",
    "Deadline",
    "Problem",
    "Result",
    "SampleStage",
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
        self.out_of_time = False  # a stage did not run (or not on every box) for lack of time
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
    5-input ACAS Xu box gets 1024 starts a batch, a 784-pixel image 64. Stops after `share` of the time
    left (the stages after it need the rest)."""

    def __init__(
        self,
        name: str = "PGD",
        *,
        steps: int = 50,
        rounds: int = 1,
        values: int = 50_000,
        max_batch: int = 1024,
        seed: int = 0,
        share: float = 0.2,
    ) -> None:
        self.share = share  # of the time left: PGD is a cheap first try, not where the budget should go
        self.name = name
        self.steps = steps
        self.rounds = rounds
        self.values = values
        self.max_batch = max_batch
        self.seed = seed

    def __call__(self, problem: Problem, deadline: Deadline) -> Sequence[Candidate]:
        generator = torch.Generator().manual_seed(self.seed)
        left = deadline.remaining()
        mine = deadline if not math.isfinite(left) else Deadline.until(time.monotonic() + self.share * max(0.0, left))
        for p, b, ks in problem.open_boxes():
            prop = problem.properties[p]
            box = prop.boxes[b]
            head = SlackLogits(problem.flat_module(), box, [prop.violation[k] for k in ks], mine)
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


class SampleStage:
    """Random points of each open low-dimensional box through torch in chunks, a `face` share of their
    coordinates snapped to a side of the box, until `points` are seen or `share` of the time left is
    spent; torch's violating points go to the replay, then PGD refines the `keep` best (a small ball
    around each, `steps` steps)."""

    def __init__(
        self,
        name: str = "sampling",
        *,
        max_inputs: int = 16,
        points: int = 500_000,
        chunk: int = 100_000,
        keep: int = 1024,
        steps: int = 100,
        face: float = 0.25,
        share: float = 0.15,
        seed: int = 2,
    ) -> None:
        self.name, self.max_inputs, self.points, self.chunk = name, max_inputs, points, chunk
        self.keep, self.steps, self.face, self.share, self.seed = keep, steps, face, share, seed

    def __call__(self, problem: Problem, deadline: Deadline) -> Sequence[Candidate]:
        generator = torch.Generator().manual_seed(self.seed)
        low = [(p, b, ks) for p, b, ks in problem.open_boxes() if problem.properties[p].num_inputs <= self.max_inputs]
        for i, (p, b, ks) in enumerate(low):
            until = time.monotonic() + self.share * max(0.0, deadline.remaining()) / (len(low) - i)
            prop = problem.properties[p]
            box = prop.boxes[b]
            head = SlackLogits(problem.flat_module(), box, [prop.violation[k] for k in ks], deadline)
            n = len(box.lower)
            best_u, best_s = torch.zeros((0, n)), torch.zeros(0)
            try:
                with torch.no_grad():
                    for _ in range(max(1, self.points // self.chunk)):
                        if time.monotonic() > until:
                            break
                        u = torch.rand((self.chunk, n), generator=generator) * 2 - 1
                        snap = torch.rand((self.chunk, n), generator=generator) < self.face
                        u = torch.where(snap, torch.where(u < 0, -1.0, 1.0), u)
                        slack = -head(u)[:, 1:].amax(dim=1)  # min over disjuncts of their slack
                        if bool((slack < 0).any()):
                            order = torch.argsort(slack)[: min(8, int((slack < 0).sum()))]
                            return [Candidate(x, p, b) for x in head.point(u[order]).numpy().astype(np.float64)]
                        u_all, s_all = torch.cat([best_u, u]), torch.cat([best_s, slack])
                        top = torch.topk(s_all, min(self.keep, len(s_all)), largest=False).indices
                        best_u, best_s = u_all[top], s_all[top]
                attack = LinfPGD(steps=self.steps, restarts=1)
                label = torch.zeros(len(best_u), dtype=torch.long)
                result = attack.run(head, best_u, label, 0.05, -torch.ones((1, n)), torch.ones((1, n)), generator)
            except OutOfTime:
                return []
            if bool(result.success.any()):
                with torch.no_grad():
                    x = head.point(result.x_adv[result.success]).numpy().astype(np.float64)
                return [Candidate(point, p, b) for point in x[:8]]
        return []


# --------------------------------------------------------------------------------------------------
# Branch and bound
# --------------------------------------------------------------------------------------------------


class ToShape(nn.Module):
    """Flat inputs (N, inputs) to the network's own input shape: a plain reshape, which both auto_LiRPA
    and the MILP's layer reader (`verifier.milp.chain_of`) take as an affine step."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, *self.shape)


class PadOutput(nn.Module):
    """One more output, always 0: the bounder needs at least two outputs; the rows give it weight 0."""

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([y, torch.zeros_like(y[:, :1])], dim=1)


class ReplayJudge:
    """The branch-and-bound judge: onnxruntime on each point, rounded into the box exactly as `replay`
    rounds it, and strictly inside one of `violation`'s disjuncts (slack < 0)."""

    def __init__(self, network: Network, box: Box, violation: Sequence[Conjunction]) -> None:
        self.network, self.box, self.violation = network, box, tuple(violation)

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = points.reshape(len(points), -1)
        rounded = [_inward_float32(x, self.box) for x in flat]
        checked = np.stack([flat[i].astype(np.float32) if x is None else x for i, x in enumerate(rounded)])
        inside = np.array([x is not None for x in rounded])
        confirmed = np.zeros(len(flat), dtype=bool)
        if inside.any():
            y = self.network.run(checked[inside]).astype(np.float64)
            slack = np.min(np.stack([c.slack(y) for c in self.violation]), axis=0)
            confirmed[inside] = np.isfinite(y).all(axis=1) & (slack < 0)
        return confirmed, checked.reshape(points.shape)


class BabStage:
    """Branch and bound on each open box against its open disjuncts (see the module docstring).

    One `BranchAndBound` per network (auto_LiRPA traces the model once); the time left is shared by the
    open boxes in turn, each getting an equal part of what remains (a box that finishes early leaves
    its time to the next). A box BaB cannot finish stays open, with the stop reason in the notes."""

    def __init__(self, name: str = "BaB", *, mode: str = "auto", memory_mb: float = 2048.0, margin_s: float = 3.0):
        self.name = name
        self.mode = mode
        self.memory_mb = memory_mb
        self.margin_s = margin_s  # stop this long before the deadline: one bound call may overrun

    def __call__(self, problem: Problem, deadline: Deadline) -> Sequence[Candidate]:
        boxes = problem.open_boxes()
        if not boxes:
            return []
        if deadline.remaining() <= self.margin_s:  # too little time to start: the answer is a timeout
            problem.out_of_time = True
            problem.notes.append(
                f"{self.name}: not run, {deadline.remaining():.2g} s left of the {self.margin_s:g} s it keeps"
            )
            return []
        try:
            bab, pad = self._build(problem, deadline)
        except UverifyError as exc:
            problem.notes.append(f"{self.name}: {one_line(exc)}")
            return []
        for i, (p, b, ks) in enumerate(boxes):
            left = deadline.remaining() - self.margin_s
            if left <= 0:
                problem.out_of_time = True
                break
            prop = problem.properties[p]
            box = prop.boxes[b]
            violation = [prop.violation[k] for k in ks]
            lo, hi = _outward_float32(box.lower, box.upper)
            region = Region.box(torch.from_numpy(lo), torch.from_numpy(hi))
            rows = [Conjunction(np.pad(c.C, ((0, 0), (0, 1))), c.d) for c in violation] if pad else violation
            try:
                result = bab.run(region, rows, ReplayJudge(problem.network, box, violation), left / (len(boxes) - i))
            except UverifyError as exc:
                problem.notes.append(f"{self.name}: {one_line(exc)}")
                return []
            if result.status == "verified":
                for k in ks:
                    problem.refute((p, b, k))
            elif result.status == "falsified" and result.counterexample is not None:
                x = np.asarray(result.counterexample, dtype=np.float64).reshape(-1)
                return [Candidate(x, p, b)]
            else:
                problem.notes.append(
                    f"{self.name}: property {p} box {b}: {result.status} after {result.domains} domains "
                    f"(worst lower bound {result.lower_bound:.3g})"
                )
        return []

    def _build(self, problem: Problem, deadline: Deadline) -> tuple[BranchAndBound, bool]:
        """The network on flat inputs for the bounder; a zero output appended when it has only one."""
        network = problem.network
        pad = network.num_outputs < 2
        layers: list[nn.Module] = [ToShape(network.input_shape), network.imported.module, nn.Flatten()]
        if pad:
            layers.append(PadOutput())
        module = nn.Sequential(*layers)
        bounder = Bounder(module, (network.num_inputs,), "CROWN")
        timeout = max(1e-3, deadline.remaining()) if math.isfinite(deadline.remaining()) else 3600.0
        # no LP leaves: `unsat` rests on certified bounds alone (a fully split leaf left open is `exhausted`)
        config = BabConfig(timeout_s=timeout, mode=self.mode, memory_mb=self.memory_mb, lp_leaves=False)
        return BranchAndBound(bounder, config), pad


DEFAULT_STAGES: tuple[Stage, ...] = (
    BoundsStage("CROWN"),
    AttackStage("PGD"),
    BoundsStage("alpha-CROWN"),
    AttackStage("PGD-restarts", steps=100, rounds=1, seed=1),
    SampleStage("sampling"),
    BabStage("BaB"),
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
    # unknown only when every stage ran to its own end; a stage cut short by the clock makes it a timeout
    result = Result.TIMEOUT if deadline.expired() or problem.out_of_time else Result.UNKNOWN
    return Verdict(result, None, None, seconds, tuple(problem.notes))
