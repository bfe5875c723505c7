"""Exact verification of small ReLU networks: a mixed-integer program solved by HiGHS.

The network must be a chain of affine segments separated by ReLUs (Linear, Conv, Flatten, BatchNorm in
eval mode, ...: any segment that `chain_of` finds affine numerically). Each unstable neuron (bounds
l < 0 < u) gets the big-M encoding with a binary a:

    h >= z,  h >= 0,  h <= u·a,  h <= z − l·(1 − a)

with l, u from CROWN's intermediate bounds (auto_LiRPA, widened by a hair for round-off); stable
neurons are h = z or h = 0. For one disjunct C y <= d the program minimises t subject to C y − d <= t:
t* > `MILP_MARGIN` proves the disjunct unreachable from the box, t* <= 0 comes with a point for the
judge. `scipy.optimize.milp` ships HiGHS, so nothing beyond scipy is needed.

Used two ways: as the leaf solver of ReLU branch and bound (a domain with no unstable neuron left is an
LP) and as the exact reference the BaB tests are checked against. The LP is floating point: the margin
keeps solver tolerances (1e-7 relative) from deciding a verdict.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from uverify.errors import UverifyError
from uverify.verifier.onnx_import import OnnxGraphModule

MILP_MARGIN = 1e-4
CUTOFF_FLOOR = 1e-3  # the decision problem's t stops here: a point this far inside is proof enough for the judge
_BOUND_SLACK = 1e-5  # widen CROWN's bounds by this (relative to max(1, |bound|)) for the big-M terms
_AFFINE_CHECK = 1e-4  # a segment read in float32 is affine to this (relative to max(1, |output|))
_AFFINE_CHECK_64 = 1e-9  # ... read in float64: the chain is then the network's function to float64 rounding


class MilpError(UverifyError):
    """The network is not a Linear/ReLU chain the MILP can encode."""


@dataclass(frozen=True)
class Chain:
    """y = A_L relu(… relu(A_1 x + b_1) …) + b_L on the flat input: weights (out, in) float64."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    input_shape: tuple[int, ...]

    @property
    def hidden(self) -> list[int]:
        return [w.shape[0] for w in self.weights[:-1]]


@dataclass(frozen=True)
class MilpResult:
    status: str  # "optimal", "above" (t* > the cutoff), "feasible", or HiGHS's message when it stopped early
    value: float  # t*: min over the box of max over the disjunct's rows of C y − d (nan when not optimal)
    point: np.ndarray | None  # the minimiser, input_shape
    lower: float = float("nan")  # HiGHS's dual bound on t* (<= value; also when stopped early), what a proof uses

    @property
    def holds(self) -> bool:
        """The disjunct is unreachable: t* > MILP_MARGIN proved (optimal, or infeasible under a cutoff)."""
        return (self.status == "optimal" and self.value > MILP_MARGIN) or (
            self.status == "above" and self.value >= MILP_MARGIN
        )


def chain_of(module: nn.Module, input_shape: Sequence[int]) -> Chain:
    """The module as a chain of affine segments between ReLUs, or a `MilpError` saying why not. A graph
    that is not a chain may still be one hidden layer (SISA's mean of member MLPs: parallel ReLU
    layers on the input, an affine map of their outputs): then the one-layer chain of them all."""
    module = _in_float64(module, tuple(int(s) for s in input_shape))
    tolerance = _tolerance(module)
    try:
        steps = _steps(module)
    except MilpError as error:
        try:
            return _one_hidden_layer(module, input_shape)
        except MilpError:
            raise error from None
    segments: list[list[nn.Module]] = [[]]
    for step in steps:
        if isinstance(step, nn.ReLU):
            segments.append([])
        else:
            segments[-1].append(step)
    shape = tuple(int(s) for s in input_shape)
    weights, biases = [], []
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for segment in segments:
            run = nn.Sequential(*segment).eval()
            size = int(np.prod(shape))
            basis = torch.cat([torch.zeros(1, size), torch.eye(size)]).reshape(size + 1, *shape)
            out = run(basis.to(torch.float64) if _is_double(run) else basis).double()
            out_shape = tuple(out.shape[1:])
            flat = out.reshape(size + 1, -1)
            bias, weight = flat[0], (flat[1:] - flat[0]).T
            probe = torch.rand((8, *shape), generator=gen) * 2 - 1
            got = run(probe.to(torch.float64) if _is_double(run) else probe).double().reshape(8, -1)
            want = probe.reshape(8, -1).double() @ weight.T + bias
            scale = float(got.abs().max().clamp_min(1.0))
            if float((got - want).abs().max()) > tolerance * scale:
                names = ", ".join(type(m).__name__ for m in segment) or "(empty)"
                raise MilpError(f"the MILP needs affine layers between the ReLUs; this segment is not: {names}")
            weights.append(weight.numpy())
            biases.append(bias.numpy())
            shape = out_shape
    return Chain(weights, biases, tuple(int(s) for s in input_shape))


def _one_hidden_layer(module: nn.Module, input_shape: Sequence[int]) -> Chain:
    """y = W2 relu(W1 x + b1) + b2 read numerically from any module whose ReLUs (each called once) all
    take an affine function of the input and whose output is an affine function of their outputs alone
    (no skip from the input): pre-activations recorded, then ReLU outputs replaced, by forward hooks;
    both maps checked on random probes."""
    relus = [m for m in module.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise MilpError("the MILP needs ReLU layers; this graph has none")
    shape = tuple(int(s) for s in input_shape)
    size = int(np.prod(shape))
    seen: list[torch.Tensor] = []
    replace: list[torch.Tensor | None] = [None]
    sizes: list[int] = []

    def hook(mod: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor | None:
        k = len(seen)
        seen.append(args[0].reshape(len(args[0]), -1).double())
        given = replace[0]
        if given is None:
            return None
        start = sum(sizes[:k])
        return given[:, start : start + sizes[k]].reshape(out.shape).to(out.dtype)

    handles = [m.register_forward_hook(hook) for m in relus]
    gen = torch.Generator().manual_seed(0)
    try:
        with torch.no_grad():
            dtype = torch.float64 if _is_double(module) else torch.float32

            def pre(x: torch.Tensor) -> torch.Tensor:
                seen.clear()
                module(x.to(dtype))
                if len(seen) != len(relus):
                    raise MilpError("the MILP needs each ReLU called once; one is shared or skipped")
                return torch.cat(seen, 1)

            basis = torch.cat([torch.zeros(1, size), torch.eye(size)]).reshape(size + 1, *shape)
            flat = pre(basis)
            sizes[:] = [int(t.shape[1]) for t in seen]
            b1, W1 = flat[0], (flat[1:] - flat[0]).T
            probe = torch.rand((8, *shape), generator=gen) * 2 - 1
            got, want = pre(probe), probe.reshape(8, -1).double() @ W1.T + b1
            if float((got - want).abs().max()) > _tolerance(module) * float(got.abs().max().clamp_min(1.0)):
                raise MilpError("the MILP needs the ReLUs' inputs affine in the network's input")
            hidden = int(W1.shape[0])
            replace[0] = torch.cat([torch.zeros(1, hidden), torch.eye(hidden)]).double()
            seen.clear()
            out = module(torch.zeros((hidden + 1, *shape), dtype=dtype)).double().reshape(hidden + 1, -1)
            b2, W2 = out[0], (out[1:] - out[0]).T
            h_probe = torch.rand((8, hidden), generator=gen, dtype=torch.float64) * 2
            replace[0] = h_probe
            seen.clear()
            got = module(probe.to(dtype)).double().reshape(8, -1)
            want = h_probe @ W2.T + b2
            if float((got - want).abs().max()) > _tolerance(module) * float(got.abs().max().clamp_min(1.0)):
                raise MilpError("the MILP needs the output affine in the ReLUs' outputs alone")
    finally:
        for handle in handles:
            handle.remove()
    return Chain([W1.numpy(), W2.numpy()], [b1.numpy(), b2.numpy()], shape)


def _is_double(module: nn.Module) -> bool:
    return any(p.dtype == torch.float64 for p in module.parameters())


def _in_float64(module: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """A float64 copy of the module when it runs in float64: its weights are then read exactly (every
    float32 number is a float64 one), so the chain is the network's own function up to float64 rounding
    and the affine checks hold to `_AFFINE_CHECK_64`. A module that does not run in float64 (an op with
    float32 constants) is read as it is, in float32, to `_AFFINE_CHECK`."""
    if _is_double(module):
        return module
    double = copy.deepcopy(module).double().eval()
    try:
        with torch.no_grad():
            double(torch.zeros((1, *input_shape), dtype=torch.float64))
    except Exception:  # whatever the op raises, the float32 reading is the way
        return module
    return double


def _tolerance(module: nn.Module) -> float:
    return _AFFINE_CHECK_64 if _is_double(module) else _AFFINE_CHECK


def _steps(module: nn.Module) -> list[nn.Module]:
    """The module's layers in order: an nn.Sequential's children, or an imported ONNX graph's nodes
    when every node feeds only the next one."""
    if isinstance(module, nn.Sequential):
        out: list[nn.Module] = []
        for child in module:
            out.extend(_steps(child))
        return out
    if isinstance(module, OnnxGraphModule):
        current = module.input_name
        out = []
        for step in module.steps:
            if step.inputs != (current,):
                raise MilpError(f"the MILP needs a chain of layers; ONNX node {step.onnx_node} is not one")
            out.append(module.nodes[step.key])
            current = step.output
        if current != module.output_name:
            raise MilpError("the MILP needs a chain of layers ending in the graph's output")
        return out
    if len(list(module.children())) == 0:
        return [module]
    raise MilpError(f"the MILP cannot read the layers of a {type(module).__name__}")


def solve(
    chain: Chain,
    lower: np.ndarray,
    upper: np.ndarray,
    C: np.ndarray,
    d: np.ndarray,
    pre_lower: Sequence[np.ndarray],
    pre_upper: Sequence[np.ndarray],
    splits: Sequence[np.ndarray] | None = None,
    time_limit: float | None = None,
    target: float | None = None,
    cutoff: float | None = None,
    cut_rounds: int = 0,
) -> MilpResult:
    """min over x in [lower, upper] of max_rows (C y − d), exactly (up to HiGHS's tolerances).

    With `target`, the feasibility problem instead: any point with max_rows (C y − d) <= target (no
    objective, so HiGHS stops at its first such point, far sooner than it proves the minimum). Its
    answer is only ever a candidate for the judge: "no such point" is reported as not `holds`.

    With `cutoff` (>= MILP_MARGIN), the decision problem: t is kept in [−CUTOFF_FLOOR, cutoff], so HiGHS
    prunes every node whose relaxation stays above the cutoff (no need to prove the optimum) and stops
    at the floor (a point well inside the violation region). Infeasible means t* > cutoff: status
    "above", `holds`; otherwise the point found (value <= cutoff) is a candidate for the judge.

    `pre_lower`/`pre_upper` are sound bounds on each hidden layer's pre-activations over the box (flat);
    `splits` (+1 active, −1 inactive, 0 free per neuron) restricts the search to a ReLU-split domain
    (adding z >= 0 or z <= 0), as the leaves of branch and bound need.

    A last-layer neuron whose output enters every row with a coefficient >= 0 gets no binary: the
    minimum pushes its h down to max(0, z) along h >= z, h >= 0, so dropping the upper constraints is a
    relaxation that loses nothing (robustness disjuncts are single rows: about half the binaries go).

    `cut_rounds` > 0 (with `cutoff`) first tightens the first hidden layer's big-M encoding by that many
    rounds of LP relaxation + separation of the ideal single-neuron cuts of Anderson et al. ("Strong
    mixed-integer programming formulations for trained neural networks", Math. Prog. 2020, Thm. 1):
    valid for every integer point, so refuting with them stays exact; an LP round that is infeasible
    refutes already."""
    started = time.perf_counter()
    if len(pre_lower) != len(chain.hidden) or any(len(p) != h for p, h in zip(pre_lower, chain.hidden, strict=True)):
        raise MilpError(f"intermediate bounds of sizes {[len(p) for p in pre_lower]} for hidden layers {chain.hidden}")
    if cutoff is not None and not cutoff >= MILP_MARGIN:
        raise MilpError(f"the cutoff must be at least the margin {MILP_MARGIN:g}, got {cutoff}")
    lo_in = np.asarray(lower, np.float64).reshape(-1)
    hi_in = np.asarray(upper, np.float64).reshape(-1)
    n_in = lo_in.size
    hidden = chain.hidden
    C = np.asarray(C, np.float64)
    CW = C @ chain.weights[-1]
    rhs = np.asarray(d, np.float64) - C @ chain.biases[-1]
    convex = np.all(CW >= 0, axis=0) if hidden else np.zeros(0, bool)
    # variables: x | h_1 | ... | h_{L-1} | a (one binary per unstable, non-convex neuron) | t
    h_start = np.cumsum([n_in, *hidden])[:-1].tolist()  # where each h_k begins
    prev_start = [0, *h_start[:-1]]  # where each layer's input begins (x for the first)
    count = n_in + sum(hidden)
    var_lo, var_hi = [lo_in], [hi_in]
    rows = _Rows()
    pending = []
    for k, h in enumerate(hidden):
        lo = np.asarray(pre_lower[k], np.float64).reshape(-1)
        hi = np.asarray(pre_upper[k], np.float64).reshape(-1)
        lo = lo - _BOUND_SLACK * np.maximum(1.0, np.abs(lo))
        hi = hi + _BOUND_SLACK * np.maximum(1.0, np.abs(hi))
        split = np.zeros(h, np.int8) if splits is None else np.asarray(splits[k]).reshape(-1)
        active = (lo >= 0) | (split > 0)
        inactive = ((hi <= 0) | (split < 0)) & ~active
        unstable = ~active & ~inactive
        relaxed = unstable & convex if k == len(hidden) - 1 else np.zeros(h, bool)
        binary = unstable & ~relaxed
        a_col = np.full(h, -1)
        a_col[binary] = count + np.arange(int(binary.sum()))
        count += int(binary.sum())
        pending.append((k, lo, hi, active, unstable, binary, inactive & (split < 0), a_col))
        var_lo.append(np.zeros(h))
        var_hi.append(np.where(inactive, 0.0, np.maximum(hi, 0.0)))
    t_col = count
    for k, lo, hi, active, unstable, binary, cut, a_col in pending:
        W, b = chain.weights[k], chain.biases[k]
        h_cols = h_start[k] + np.arange(len(b))
        # h = z (active), h >= z (unstable):  h − W v = b  /  h − W v >= b
        j = np.flatnonzero(active | unstable)
        r = rows.add(b[j], np.where(active[j], b[j], np.inf))
        rows.entries(r, h_cols[j], np.ones(len(j)))
        rows.dense(r, prev_start[k], -W[j])
        # h <= u a and h − W v − l a <= b − l (unstable with a binary)
        j = np.flatnonzero(binary)
        r = rows.add(np.full(len(j), -np.inf), np.zeros(len(j)))
        rows.entries(
            np.concatenate([r, r]), np.concatenate([h_cols[j], a_col[j]]), np.concatenate([np.ones(len(j)), -hi[j]])
        )
        r = rows.add(np.full(len(j), -np.inf), b[j] - lo[j])
        rows.entries(
            np.concatenate([r, r]), np.concatenate([h_cols[j], a_col[j]]), np.concatenate([np.ones(len(j)), -lo[j]])
        )
        rows.dense(r, prev_start[k], -W[j])
        # inactive by a split: z <= 0, W v <= −b
        j = np.flatnonzero(cut)
        r = rows.add(np.full(len(j), -np.inf), -b[j])
        rows.dense(r, prev_start[k], W[j])
    # C y − d <= t with y = W_L h_last + b_L
    last = h_start[-1] if hidden else 0
    r = rows.add(np.full(len(rhs), -np.inf), rhs)
    rows.dense(r, last, CW)
    rows.entries(r, np.full(len(r), t_col), -np.ones(len(r)))
    n_var = t_col + 1
    n_a = t_col - (n_in + sum(hidden))
    lb_all = np.concatenate([*var_lo, np.zeros(n_a), [-np.inf]])
    ub_all = np.concatenate([*var_hi, np.ones(n_a), [np.inf]])
    integrality = np.concatenate([np.zeros(n_in + sum(hidden)), np.ones(n_a), [0]])
    cost = np.zeros(n_var)
    if target is not None:
        ub_all[t_col] = float(target)
    elif cutoff is not None:
        cost[t_col] = 1.0
        lb_all[t_col], ub_all[t_col] = -CUTOFF_FLOOR, float(cutoff)
    else:
        cost[t_col] = 1.0
    if cut_rounds > 0 and cutoff is not None and hidden:
        k, lo, hi, active, unstable, binary, cut, a_col = pending[0]
        refuted = _strong_cuts(
            rows, chain.weights[0], chain.biases[0], lo_in, hi_in, np.flatnonzero(binary), a_col, h_start[0],
            cost, Bounds(lb_all, ub_all), n_var, cut_rounds, None if time_limit is None else started + time_limit,
        )  # fmt: skip
        if refuted:
            return MilpResult("above", float(cutoff), None)
        if time_limit is not None:
            time_limit = started + time_limit - time.perf_counter()
    options: dict[str, float | bool] = {"mip_rel_gap": 1e-9, "disp": False}
    if time_limit is not None:
        options["time_limit"] = max(1e-3, float(time_limit))
    result = milp(
        cost, constraints=rows.constraint(n_var), bounds=Bounds(lb_all, ub_all), integrality=integrality,
        options=options,
    )  # fmt: skip
    if result.status == 2 and target is not None:  # no point reaches the target: not a proof here
        return MilpResult(f"no point reaches {target:g}", float("nan"), None)
    if result.status == 2 and cutoff is not None:  # no point reaches the cutoff: t* > cutoff
        return MilpResult("above", float(cutoff), None)
    if result.status == 2:  # infeasible: the split constraints leave no point
        return MilpResult("optimal", np.inf, None, np.inf)
    dual = getattr(result, "mip_dual_bound", None)
    if result.x is None or result.status != 0:  # stopped early: HiGHS's dual bound still holds, if it has one
        point = None if result.x is None else _point(result.x, n_in, chain)
        bound = float(dual) if dual is not None and np.isfinite(dual) and target is None and cutoff is None else -np.inf
        return MilpResult(str(result.message), float("nan"), point, bound)
    if target is not None or cutoff is not None:
        return MilpResult("feasible", float(result.x[t_col]), _point(result.x, n_in, chain))
    value = float(result.x[t_col])
    bound = min(value, float(dual)) if dual is not None and np.isfinite(dual) else value
    return MilpResult("optimal", value, _point(result.x, n_in, chain), bound)


def _strong_cuts(
    rows: _Rows,
    W: np.ndarray,
    b: np.ndarray,
    lo_in: np.ndarray,
    hi_in: np.ndarray,
    neurons: np.ndarray,
    a_col: np.ndarray,
    h_start: int,
    cost: np.ndarray,
    bounds: Bounds,
    n_var: int,
    rounds: int,
    deadline: float | None,
) -> bool:
    """Add violated ideal cuts y <= Σ_{i∈I} w_i (x_i − L̆_i (1 − a)) + (b + Σ_{i∉I} w_i Ŭ_i) a for the
    first layer's binary neurons (L̆, Ŭ: the box corner minimising, maximising w_i x_i), the most violated
    I per neuron at the LP point, for `rounds` rounds (each LP within what is left before `deadline`);
    True when an LP relaxation is infeasible."""
    if len(neurons) == 0:
        return False
    w = W[neurons]
    l_breve = np.where(w >= 0, lo_in, hi_in)
    u_breve = np.where(w >= 0, hi_in, lo_in)
    n_in = len(lo_in)
    zeros = np.zeros(n_var)
    for _ in range(rounds):
        options: dict[str, float | bool] = {"disp": False}
        if deadline is not None:
            left = deadline - time.perf_counter()
            if left <= 0:
                return False
            options["time_limit"] = left
        lp = milp(cost, constraints=rows.constraint(n_var), bounds=bounds, integrality=zeros, options=options)
        if lp.status == 2:
            return True
        if lp.x is None or lp.status != 0:
            return False
        x, a, h = lp.x[:n_in], lp.x[a_col[neurons]], lp.x[h_start + neurons]
        inside = w * (x - l_breve * (1 - a[:, None]))
        outside = w * u_breve * a[:, None]
        take = inside < outside
        bound = np.where(take, inside, outside).sum(1) + b[neurons] * a
        violated = np.flatnonzero(h > bound + 1e-6 * np.maximum(1.0, np.abs(bound)))
        if len(violated) == 0:
            return False
        for j in violated:
            sel = take[j]
            coef_a = float((w[j] * l_breve[j])[sel].sum() + b[neurons[j]] + (w[j] * u_breve[j])[~sel].sum())
            r = rows.add(np.array([-np.inf]), np.array([-(w[j] * l_breve[j])[sel].sum()]))
            cols = np.flatnonzero(sel & (w[j] != 0))
            rows.entries(
                np.full(len(cols) + 2, r[0]),
                np.concatenate([[h_start + neurons[j], a_col[neurons[j]]], cols]),
                np.concatenate([[1.0, -coef_a], -w[j][cols]]),
            )
    return False


GROUP_NEURONS = 64  # `grouped_lower_bound`: hidden neurons per group (a SISA shard of the default MLP)


def grouped_lower_bound(
    chain: Chain,
    lower: np.ndarray,
    upper: np.ndarray,
    row: np.ndarray,
    d: float,
    pre_lower: np.ndarray,
    pre_upper: np.ndarray,
    time_limit: float | None = None,
    group: int = GROUP_NEURONS,
) -> float:
    """A sound lower bound of min over the box of row·y − d for a one-hidden-layer chain, from exact
    minima of its parts: row·y = row·b_2 + Σ_g f_g(x) with f_g(x) = Σ_{j∈g} (row·W_2)_j relu(W_1 x + b_1)_j
    over consecutive groups g of `group` hidden neurons, and min Σ_g f_g >= Σ_g min f_g. Each part is the
    exact MILP of a `group`-neuron net (HiGHS's dual bound at optimality), which HiGHS settles in a
    fraction of a second where the whole net's MILP does not finish: SISA's mean of five 64-neuron
    shards (320 neurons) at ε 0.15, where the parts' sum proved 8 of 8 samples in 2.6–5.2 s each and the
    whole MILP 1 of 2 in 60 s. Looser than the exact minimum (the parts may each pick another x), so it
    can only refute. A part HiGHS stops at its time limit adds its dual bound (still a lower bound);
    −inf when it has none. `pre_lower`/`pre_upper`: the hidden layer's pre-activation bounds over the
    box (`interval_bounds`), as `solve` takes them."""
    if len(chain.hidden) != 1:
        raise MilpError(f"the grouped bound needs one hidden layer, the chain has {len(chain.hidden)}")
    started = time.perf_counter()
    lo_in, hi_in = np.asarray(lower, np.float64).reshape(-1), np.asarray(upper, np.float64).reshape(-1)
    (w1, w2), (b1, b2) = chain.weights, chain.biases
    row = np.asarray(row, np.float64).reshape(-1)
    v = row @ w2
    total = float(row @ b2) - float(d)
    pre_lo, pre_hi = np.asarray(pre_lower, np.float64).reshape(-1), np.asarray(pre_upper, np.float64).reshape(-1)
    starts = range(0, len(v), group)
    for i, start in enumerate(starts):
        part = slice(start, start + group)
        sub = Chain([w1[part], v[part][None, :]], [b1[part], np.zeros(1)], chain.input_shape)
        left = None
        if time_limit is not None:  # an equal part of what is left to each part still to solve
            left = (time_limit - (time.perf_counter() - started)) / (len(starts) - i)
            if left <= 0:
                return -np.inf
        result = solve(sub, lo_in, hi_in, np.ones((1, 1)), np.zeros(1), [pre_lo[part]], [pre_hi[part]], time_limit=left)
        if not np.isfinite(result.lower):  # neither solved nor bounded by HiGHS in its time
            return -np.inf
        total += result.lower
    return total


def interval_bounds(chain: Chain, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first hidden layer's pre-activation bounds over the box: exact (interval arithmetic is
    tight for one affine map), and all a one-hidden-layer chain's MILP needs."""
    lo, hi = np.asarray(lower, np.float64).reshape(-1), np.asarray(upper, np.float64).reshape(-1)
    W, b = chain.weights[0], chain.biases[0]
    centre, radius = (lo + hi) / 2, (hi - lo) / 2
    mid, spread = W @ centre + b, np.abs(W) @ radius
    return mid - spread, mid + spread


class _Rows:
    """Sparse constraint rows lo <= A v <= hi, collected as triplets, a block of rows at a time."""

    def __init__(self) -> None:
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.lo: list[np.ndarray] = []
        self.hi: list[np.ndarray] = []
        self.count = 0

    def add(self, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """New rows with these bounds; their indices."""
        index = self.count + np.arange(len(lo))
        self.count += len(lo)
        self.lo.append(np.asarray(lo, np.float64))
        self.hi.append(np.asarray(hi, np.float64))
        return index

    def entries(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        self.r.append(np.asarray(rows, np.int64))
        self.c.append(np.asarray(cols, np.int64))
        self.v.append(np.asarray(values, np.float64))

    def dense(self, rows: np.ndarray, col_start: int, block: np.ndarray) -> None:
        """block[i, j] at (rows[i], col_start + j), its nonzeros only."""
        i, j = np.nonzero(block)
        self.entries(rows[i], col_start + j, block[i, j])

    def constraint(self, n_var: int) -> LinearConstraint:
        cat = np.concatenate
        A = sparse.csr_matrix((cat(self.v), (cat(self.r), cat(self.c))), shape=(self.count, n_var))
        return LinearConstraint(A, cat(self.lo), cat(self.hi))


def _point(x: np.ndarray, n_in: int, chain: Chain) -> np.ndarray:
    return x[:n_in].astype(np.float32).reshape(chain.input_shape)
