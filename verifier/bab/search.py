"""The branch-and-bound loops: domains kept as batched tensors, the worst bounds split first.

One loop per split kind over one input region and one violation region (a disjunction of C y <= d).
Each iteration pops up to `batch` domains with the lowest score (`branching.decisive_rows`), splits each
in two (a box, while the queue is short, in up to 2^MAX_DEPTH along its best dimensions), bounds the
children in one auto_LiRPA call (as many as the time left allows, by the measured cost per domain),
drops the children every disjunct of which is refuted (or that are infeasible), tries the children's
bound-minimising points on the judge, and every `attack_every` iterations runs PGD from the worst
domains' points. A child's bound is at least its parent's (it is a subset), so children keep the larger.

The search ends `verified` when no domain is left, `falsified` when the judge confirms a point,
`timeout` at the deadline, `memory` when the stored domains would exceed the cap, `exhausted` when only
domains with nothing left to split remain and the exact LP could not settle them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from uverify.verifier.bab.bounding import DomainBounder, Region, ReluBounds
from uverify.verifier.bab.branching import babsr, decisive_rows, input_gain
from uverify.verifier.bab.falsify import Judge, SlackModel, minimising_points, pgd_points
from uverify.verifier.bounds import CERTIFY_MARGIN

# Input splitting halves a box along up to this many dimensions in one iteration while the queue is
# short (32 children). ReLU splitting splits one neuron at a time: BaBSR picks it on bounds recomputed
# after every split, whereas a second neuron picked on the parent's bounds is often one the first split
# makes stable, and the leaves it adds are infeasible ones that only an LP can settle.
MAX_DEPTH = 5
RELU_DEPTH = 1

# Leaf solver for ReLU domains with nothing left to split: (layer bounds, splits, disjunct, seconds) -> verdict
LeafSolver = Callable[[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], int, float], "LeafVerdict"]
# The MILP on one disjunct over the whole region: (root layer bounds lower, upper, disjunct, seconds) ->
# refuted (`holds`), or a candidate point for the judge, or neither (out of time)
ExactSearch = Callable[[list[torch.Tensor], list[torch.Tensor], int, float], "LeafVerdict"]


@dataclass(frozen=True)
class LeafVerdict:
    holds: bool  # the disjunct is infeasible on the leaf (exactly, with a margin)
    point: np.ndarray | None  # else a candidate counterexample, for the judge


@dataclass(frozen=True)
class ExactStage:
    """The MILP at the root: `search`, given at most `share` of the budget; `first` runs it before
    α-CROWN (a one-hidden-layer chain, whose MILP needs only the exact interval bounds)."""

    search: ExactSearch
    share: float
    first: bool
    # falsifying only: the i-th worst-bounded disjunct gets a share of the time ∝ 1/(i+1), not an equal one
    # (the worst bound is where a violation likeliest sits, and a refutation that would need every
    # disjunct settled is not on offer)
    worst_first: bool = False


@dataclass(frozen=True)
class SearchSettings:
    timeout_s: float
    memory_bytes: int
    batch: int
    attack_every: int
    attack_domains: int
    attack_steps: int
    started: float | None = None  # perf_counter time the budget counts from (default: the search's start)


@dataclass
class Outcome:
    status: str  # verified | falsified | timeout | memory | exhausted
    domains: int  # sub-domains bounded
    max_queue: int
    iterations: int
    lower_bound: float  # the worst score left (inf when verified)
    counterexample: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)


class Rows:
    """The violation region as the bounder's rows: C (rows, outputs), d (rows,), owner (rows,)."""

    def __init__(self, C: np.ndarray, d: np.ndarray, owner: np.ndarray, dtype: torch.dtype) -> None:
        self.C = torch.as_tensor(C, dtype=dtype)
        self.d = torch.as_tensor(d, dtype=dtype)
        self.owner = torch.as_tensor(owner, dtype=torch.long)
        self.disjuncts = int(self.owner.max()) + 1

    def refuted(self, lower_cy: torch.Tensor, alive: torch.Tensor) -> torch.Tensor:
        """alive & not refuted: a disjunct dies when one of its rows has lower bound of C y − d > margin."""
        n = lower_cy.shape[0]
        proof = (lower_cy - self.d > CERTIFY_MARGIN).to(torch.int8)
        any_row = torch.zeros((n, self.disjuncts), dtype=torch.int8).scatter_reduce(
            1, self.owner.expand(n, -1), proof, reduce="amax"
        )
        return alive & (any_row == 0)

    def weights(self, alive: torch.Tensor) -> torch.Tensor:
        """Per domain and row: 1 where the row's disjunct is still alive (what α/β should improve)."""
        return alive.gather(1, self.owner.expand(alive.shape[0], -1)).to(self.C.dtype)


class _Clock:
    """The deadline, and how many domains the time left allows, by the measured seconds per bounded
    domain."""

    def __init__(self, timeout_s: float, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.deadline = self.start + timeout_s
        self.per_domain = 0.0

    def out(self) -> bool:
        return time.perf_counter() >= self.deadline

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def plan(self, batch: int, queued: int, depth_cap: int) -> tuple[int, int]:
        """(parents to pop, splits per parent): at most 2·batch children, fewer near the deadline; while
        the queue is short each parent is split several times (2^depth children) to fill the batch."""
        left = self.deadline - time.perf_counter()
        room = 2 * batch
        if self.per_domain > 0:
            room = min(room, int(left / self.per_domain))
        room = max(2, room)
        take = max(1, min(queued, room // 2))
        depth = max(1, min(depth_cap, int(math.log2(room / take))))
        return take, depth

    def measured(self, seconds: float, domains: int) -> None:
        rate = seconds / max(1, domains)
        self.per_domain = rate if self.per_domain == 0 else 0.5 * (self.per_domain + rate)


class Falsifier:
    """Candidates through the judge; remembers the first confirmed point."""

    def __init__(self, judge: Judge, slack: SlackModel, region: Region, settings: SearchSettings, seed: int) -> None:
        self.judge, self.slack, self.region, self.settings = judge, slack, region, settings
        self.generator = torch.Generator().manual_seed(seed)
        self.found: np.ndarray | None = None

    def try_points(self, points: torch.Tensor) -> bool:
        """The points torch sees in the violation region go to the judge."""
        if self.found is not None or len(points) == 0:
            return self.found is not None
        with torch.no_grad():
            candidates = points[self.slack.slack(points).min(dim=1).values <= 0]
        return self.confirm(candidates)

    def confirm(self, candidates: torch.Tensor) -> bool:
        if len(candidates) == 0:
            return False
        confirmed, checked = self.judge(candidates.detach().cpu().numpy())
        if confirmed.any():
            self.found = checked[int(np.flatnonzero(confirmed)[0])]
        return self.found is not None

    def attack(self, starts: torch.Tensor) -> bool:
        if self.found is not None or len(starts) == 0:
            return self.found is not None
        x, success = pgd_points(self.slack, self.region, starts, self.settings.attack_steps, self.generator)
        return self.confirm(x[success])


# ------------------------------------------------------------------------------------------ input split
def input_split(
    bounder: DomainBounder, region: Region, rows: Rows, falsifier: Falsifier, settings: SearchSettings
) -> Outcome:
    """Halve boxes along the dimensions with the largest gradient × width until every box is refuted."""
    clock = _Clock(settings.timeout_s, settings.started)
    bounder.deadline = clock.deadline
    try:
        return _input_split(bounder, region, rows, falsifier, settings, clock)
    finally:
        bounder.deadline = None


def _input_split(
    bounder: DomainBounder, region: Region, rows: Rows, falsifier: Falsifier, settings: SearchSettings, clock: _Clock
) -> Outcome:
    shape = bounder.input_shape
    lo = region.lower.reshape(1, -1).to(bounder.dtype)
    hi = region.upper.reshape(1, -1).to(bounder.dtype)
    per_domain = lo.shape[1] * 2 * lo.element_size() + rows.disjuncts + 16
    alive = torch.ones((1, rows.disjuncts), dtype=torch.bool)
    t0 = time.perf_counter()
    score, dim, points, alive, lo, hi = _bound_boxes(
        bounder, rows, falsifier, lo, hi, alive, torch.full((1,), -math.inf), shape
    )
    clock.measured(time.perf_counter() - t0, 1)  # a first (high: one box alone) estimate
    bounded, max_queue, iterations = 1, len(lo), 0
    while True:
        if falsifier.found is not None:
            return Outcome("falsified", bounded, max_queue, iterations, -math.inf, falsifier.found)
        if len(lo) == 0:
            return Outcome("verified", bounded, max_queue, iterations, math.inf)
        if clock.out():
            return Outcome("timeout", bounded, max_queue, iterations, float(score.min()))
        if len(lo) * per_domain > settings.memory_bytes:
            return Outcome("memory", bounded, max_queue, iterations, float(score.min()))
        iterations += 1
        take, depth = clock.plan(settings.batch, len(lo), dim.shape[1])
        pick = torch.topk(score, take, largest=False).indices
        keep = torch.ones(len(lo), dtype=torch.bool)
        keep[pick] = False
        p_lo, p_hi, p_dim, p_alive, p_score = lo[pick], hi[pick], dim[pick], alive[pick], score[pick]
        if settings.attack_every and iterations % settings.attack_every == 1:
            starts = points[pick[: settings.attack_domains]].reshape(-1, *shape)
            if falsifier.attack(starts):
                continue
        c_lo, c_hi = p_lo, p_hi
        for j in range(depth):  # halve along the j-th best dimension: 2^depth children a parent
            d = p_dim[:, j : j + 1].repeat(2**j, 1)
            mid = (c_lo.gather(1, d) + c_hi.gather(1, d)) / 2
            c_lo, c_hi = torch.cat([c_lo, c_lo.scatter(1, d, mid)]), torch.cat([c_hi.scatter(1, d, mid), c_hi])
        c_alive = p_alive.repeat(2**depth, 1)
        c_floor = p_score.repeat(2**depth)
        t0 = time.perf_counter()
        c_score, c_dim, c_point, c_alive, c_lo, c_hi = _bound_boxes(
            bounder, rows, falsifier, c_lo, c_hi, c_alive, c_floor, shape
        )
        clock.measured(time.perf_counter() - t0, len(c_floor))
        bounded += len(c_floor)
        lo = torch.cat([lo[keep], c_lo])
        hi = torch.cat([hi[keep], c_hi])
        alive = torch.cat([alive[keep], c_alive])
        score = torch.cat([score[keep], c_score])
        dim = torch.cat([dim[keep], c_dim])
        points = torch.cat([points[keep], c_point])
        max_queue = max(max_queue, len(lo))


def _bound_boxes(
    bounder: DomainBounder,
    rows: Rows,
    falsifier: Falsifier,
    lo: torch.Tensor,
    hi: torch.Tensor,
    alive: torch.Tensor,
    floor: torch.Tensor,
    shape: tuple[int, ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bound boxes; keep the undecided ones with (score, split dim, minimising point, alive, lo, hi)."""
    bounds = bounder.boxes(lo.reshape(-1, *shape), hi.reshape(-1, *shape), rows.C)
    alive = rows.refuted(bounds.lower, alive)
    score, row = decisive_rows(bounds.lower - rows.d, rows.owner, alive)
    score = torch.maximum(score, floor)  # a sub-box's bound is at least its parent's
    coef = bounds.coef[torch.arange(len(row)), row]
    points = minimising_points(falsifier.region, coef, lo, hi).reshape(len(lo), -1)
    undecided = alive.any(dim=1)
    falsifier.try_points(points[undecided].reshape(-1, *shape))
    dim = input_gain(coef, lo, hi, MAX_DEPTH)
    u = undecided
    return score[u], dim[u], points[u], alive[u], lo[u], hi[u]


# ------------------------------------------------------------------------------------------- ReLU split
@dataclass
class _ReluStore:
    """Every undecided domain, batched: per layer pre-activation bounds, split state and β."""

    lower: list[torch.Tensor]
    upper: list[torch.Tensor]
    splits: list[torch.Tensor]
    beta: list[torch.Tensor]
    alive: torch.Tensor  # (n, disjuncts)
    score: torch.Tensor  # (n,)
    layer: torch.Tensor  # (n, RELU_DEPTH) the next splits, best first: layer index (-1: none left)
    neuron: torch.Tensor
    points: torch.Tensor  # (n, inputs) bound-minimising points

    def __len__(self) -> int:
        return len(self.score)

    def take(self, index: torch.Tensor) -> _ReluStore:
        return _ReluStore(
            [t[index] for t in self.lower], [t[index] for t in self.upper], [t[index] for t in self.splits],
            [t[index] for t in self.beta], self.alive[index], self.score[index], self.layer[index],
            self.neuron[index], self.points[index],
        )  # fmt: skip

    @staticmethod
    def join(a: _ReluStore, b: _ReluStore) -> _ReluStore:
        cat = torch.cat
        return _ReluStore(
            [cat([x, y]) for x, y in zip(a.lower, b.lower, strict=True)],
            [cat([x, y]) for x, y in zip(a.upper, b.upper, strict=True)],
            [cat([x, y]) for x, y in zip(a.splits, b.splits, strict=True)],
            [cat([x, y]) for x, y in zip(a.beta, b.beta, strict=True)],
            cat([a.alive, b.alive]), cat([a.score, b.score]), cat([a.layer, b.layer]), cat([a.neuron, b.neuron]),
            cat([a.points, b.points]),
        )  # fmt: skip


def relu_split(
    bounder: DomainBounder,
    region: Region,
    rows: Rows,
    falsifier: Falsifier,
    settings: SearchSettings,
    *,
    alpha_root: bool,
    leaf: LeafSolver | None,
    exact: ExactStage | None = None,
) -> Outcome:
    """β-CROWN branch and bound over ReLU phases, BaBSR choosing the neuron. With `exact`, the MILP
    decides each disjunct the root leaves alive (worst bound first) in at most its share of the time:
    refuted (t* > MILP_MARGIN) or a candidate point, which the judge has the last word on; bounds
    converge on a violation slowly, and on a small net HiGHS often settles a disjunct faster than BaB."""
    clock = _Clock(settings.timeout_s, settings.started)
    bounder.deadline = clock.deadline
    try:
        return _relu_split(bounder, region, rows, falsifier, settings, clock, alpha_root, leaf, exact)
    finally:
        bounder.deadline = None


def _relu_split(
    bounder: DomainBounder,
    region: Region,
    rows: Rows,
    falsifier: Falsifier,
    settings: SearchSettings,
    clock: _Clock,
    alpha_root: bool,
    leaf: LeafSolver | None,
    exact: ExactStage | None,
) -> Outcome:
    per_domain = sum(layer.size * (3 * 4 + 1) for layer in bounder.layers) + rows.disjuncts + 64
    per_domain += bounder.inputs * 4
    first = bounder.root_crown(region, rows.C)
    clock.measured(bounder.root_crown_seconds, 1)  # a first (high: one domain alone) estimate
    alive = torch.ones((1, rows.disjuncts), dtype=torch.bool)
    zeros = [torch.zeros((1, layer.size), dtype=torch.int8) for layer in bounder.layers]
    floor = torch.full((1,), -math.inf)
    store = _keep(first, rows, falsifier, region, alive, zeros, floor, bounder)
    notes: list[str] = []
    if exact is not None and exact.first and len(store) and falsifier.found is None:
        store = _exact_stage(store, first.lower, rows, falsifier, exact, clock, notes)
    if alpha_root and len(store) and falsifier.found is None and not clock.out():
        root = bounder.root_alpha(region, rows.C, first, alpha_seconds=min(0.25 * settings.timeout_s, clock.left()))
        if root is not first:
            store = _keep(root, rows, falsifier, region, store.alive, zeros, floor, bounder)
        first = root
    if exact is not None and not exact.first and len(store) and falsifier.found is None:
        store = _exact_stage(store, first.lower, rows, falsifier, exact, clock, notes)
    bounded, max_queue, iterations = 1, len(store), 0
    while True:
        if falsifier.found is not None:
            return Outcome("falsified", bounded, max_queue, iterations, -math.inf, falsifier.found, notes)
        if len(store) == 0:
            return Outcome("verified", bounded, max_queue, iterations, math.inf, None, notes)
        if clock.out():
            return Outcome("timeout", bounded, max_queue, iterations, float(store.score.min()), None, notes)
        if len(store) * per_domain > settings.memory_bytes:
            return Outcome("memory", bounded, max_queue, iterations, float(store.score.min()), None, notes)
        stuck = store.layer[:, 0] < 0
        if bool(stuck.any()):
            store, status = _settle_leaves(store, stuck, leaf, rows, falsifier, clock, notes)
            if status is not None:
                return Outcome(status, bounded, max_queue, iterations, float(store.score.min()), None, notes)
            continue
        iterations += 1
        take, depth = clock.plan(settings.batch, len(store), RELU_DEPTH)
        pick = torch.topk(store.score, take, largest=False).indices
        keep = torch.ones(len(store), dtype=torch.bool)
        keep[pick] = False
        parents = store.take(pick)
        store = store.take(keep.nonzero().view(-1))
        attack = settings.attack_every and iterations % settings.attack_every == 1
        if attack and falsifier.attack(parents.points[: settings.attack_domains].reshape(-1, *bounder.input_shape)):
            continue  # falsified: reported at the top of the loop
        depth = min(depth, int((parents.layer >= 0).all(dim=0).long().cumprod(0).sum()))
        children = parents
        for j in range(depth):  # the j-th best neuron: 2^depth children a parent
            children = _split(children, j)
        t0 = time.perf_counter()
        bounds = bounder.domains(
            region, rows.C, children.lower, children.upper, children.splits, children.beta,
            row_weight=rows.weights(children.alive), done=_decided(rows, children.alive),
        )  # fmt: skip
        clock.measured(time.perf_counter() - t0, len(children))
        bounded += len(children)
        kept = _keep(bounds, rows, falsifier, region, children.alive, children.splits, children.score, bounder)
        store = _ReluStore.join(store, kept)
        max_queue = max(max_queue, len(store))


def _exact_stage(
    store: _ReluStore,
    root_lower: torch.Tensor,
    rows: Rows,
    falsifier: Falsifier,
    exact: ExactStage,
    clock: _Clock,
    notes: list[str],
) -> _ReluStore:
    """The MILP on each disjunct the root (one domain) left alive, the worst-bounded first (lowest
    best-row bound of C y − d at the root), each given an equal part of what is left of the stage's
    share of the budget (or a part falling with its rank, `worst_first`). Refuted disjuncts leave the
    root's alive set (no domain at all when none is left); stops at the first point the judge confirms."""
    lower, upper = [t[:1] for t in store.lower], [t[:1] for t in store.upper]
    until = min(clock.deadline, clock.start + exact.share * (clock.deadline - clock.start))
    best = torch.full((1, rows.disjuncts), -torch.inf, dtype=root_lower.dtype)
    best = best.scatter_reduce(1, rows.owner[None], (root_lower[:1] - rows.d).to(best.dtype), reduce="amax")[0]
    order = sorted(store.alive[0].nonzero().view(-1).tolist(), key=lambda k: float(best[k]))
    alive = store.alive.clone()
    for i, k in enumerate(order):
        left = until - time.perf_counter()
        if left <= 0.05:
            notes.append(f"the MILP had no time left for {len(order) - i} of {len(order)} open disjuncts")
            break
        if exact.worst_first:
            seconds = left / (i + 1) / sum(1 / (j + 1) for j in range(i, len(order)))
        else:
            seconds = left / (len(order) - i)
        verdict = exact.search(lower, upper, k, seconds)
        if verdict.holds:
            alive[0, k] = False
        elif verdict.point is not None and falsifier.confirm(torch.from_numpy(verdict.point[None])):
            break
    store.alive = alive
    return store.take(alive.any(dim=1).nonzero().view(-1))


def _decided(rows: Rows, alive: torch.Tensor) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """For the bounder: which of the domains `index` every alive disjunct of which `lower` refutes."""
    return lambda lower, index: ~rows.refuted(lower, alive[index]).any(dim=1)


def _split(parents: _ReluStore, j: int) -> _ReluStore:
    """Two children per parent on its j-th candidate neuron: active (z >= 0) first, then inactive (z <= 0)."""
    n = len(parents)
    both = parents.take(torch.cat([torch.arange(n), torch.arange(n)]))
    rows = torch.arange(2 * n)
    active = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
    layer, neuron = both.layer[:, j], both.neuron[:, j]
    for k in range(len(both.lower)):
        here = layer == k
        if not bool(here.any()):
            continue
        r, i = rows[here], neuron[here]
        on = active[here]
        lo, hi, st = both.lower[k].clone(), both.upper[k].clone(), both.splits[k].clone()
        lo[r[on], i[on]] = lo[r[on], i[on]].clamp_min(0)
        hi[r[~on], i[~on]] = hi[r[~on], i[~on]].clamp_max(0)
        st[r, i] = torch.where(on, 1, -1).to(torch.int8)
        both.lower[k], both.upper[k], both.splits[k] = lo, hi, st
        beta = both.beta[k].clone()
        beta[r, i] = 0
        both.beta[k] = beta
    return both


def _keep(
    bounds: ReluBounds,
    rows: Rows,
    falsifier: Falsifier,
    region: Region,
    alive: torch.Tensor,
    splits: list[torch.Tensor],
    floor: torch.Tensor,
    bounder: DomainBounder,
) -> _ReluStore:
    """The undecided, feasible domains among those just bounded, with their next split chosen."""
    alive = rows.refuted(bounds.lower, alive)
    score, row = decisive_rows(bounds.lower - rows.d, rows.owner, alive)
    score = torch.maximum(score, floor)
    coef = bounds.coef[torch.arange(len(row)), row]
    points = minimising_points(region, coef).reshape(len(row), -1)
    undecided = alive.any(dim=1) & ~bounds.infeasible
    falsifier.try_points(points[undecided].reshape(-1, *bounder.input_shape))
    biases = [layer.bias for layer in bounder.layers]
    layer, neuron = babsr(bounds.relu_coef, bounds.pre_lower, bounds.pre_upper, splits, biases, row, RELU_DEPTH)
    keep = undecided.nonzero().view(-1)
    return _ReluStore(
        [t[keep] for t in bounds.pre_lower], [t[keep] for t in bounds.pre_upper], [t[keep] for t in splits],
        [t[keep] for t in bounds.beta], alive[keep], score[keep], layer[keep], neuron[keep], points[keep],
    )  # fmt: skip


def _settle_leaves(
    store: _ReluStore,
    stuck: torch.Tensor,
    leaf: LeafSolver | None,
    rows: Rows,
    falsifier: Falsifier,
    clock: _Clock,
    notes: list[str],
) -> tuple[_ReluStore, str | None]:
    """Domains with every neuron stable or split: the network is affine there, so an LP decides each
    alive disjunct exactly, each within the time left. Without an LP (a graph the MILP does not cover)
    or when it cannot settle them, the search is exhausted; at the deadline, it times out."""
    if leaf is None:
        notes.append("a domain has no unstable neuron left and the model is not a Linear/ReLU chain for the LP")
        return store, "exhausted"
    settled = torch.zeros(len(store), dtype=torch.bool)
    for index in stuck.nonzero().view(-1).tolist():
        holds = True
        for k in store.alive[index].nonzero().view(-1).tolist():
            if clock.out():
                return store.take((~settled).nonzero().view(-1)), "timeout"
            verdict = leaf(
                [t[index] for t in store.lower], [t[index] for t in store.upper], [t[index] for t in store.splits], k,
                clock.left(),
            )  # fmt: skip
            if verdict.point is not None and falsifier.confirm(torch.from_numpy(verdict.point[None])):
                return store, None  # the loop reports it
            holds = holds and verdict.holds
        if not holds:
            if clock.out():
                return store.take((~settled).nonzero().view(-1)), "timeout"
            notes.append("the LP could not settle a leaf within its margin")
            return store, "exhausted"
        settled[index] = True
    return store.take((~settled).nonzero().view(-1)), None
