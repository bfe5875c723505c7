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
_BOUND_SLACK = 1e-5  # widen CROWN's bounds by this (relative to max(1, |bound|)) for the big-M terms
_AFFINE_CHECK = 1e-4


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
    status: str  # "optimal" or HiGHS's message when it stopped early
    value: float  # t*: min over the box of max over the disjunct's rows of C y − d (nan when not optimal)
    point: np.ndarray | None  # the minimiser, input_shape

    @property
    def holds(self) -> bool:
        return self.status == "optimal" and self.value > MILP_MARGIN


def chain_of(module: nn.Module, input_shape: Sequence[int]) -> Chain:
    """The module as a chain of affine segments between ReLUs, or a `MilpError` saying why not."""
    steps = _steps(module)
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
            got = run(probe).double().reshape(8, -1)
            want = probe.reshape(8, -1).double() @ weight.T + bias
            scale = float(got.abs().max().clamp_min(1.0))
            if float((got - want).abs().max()) > _AFFINE_CHECK * scale:
                names = ", ".join(type(m).__name__ for m in segment) or "(empty)"
                raise MilpError(f"the MILP needs affine layers between the ReLUs; this segment is not: {names}")
            weights.append(weight.numpy())
            biases.append(bias.numpy())
            shape = out_shape
    return Chain(weights, biases, tuple(int(s) for s in input_shape))


def _is_double(module: nn.Module) -> bool:
    return any(p.dtype == torch.float64 for p in module.parameters())


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
) -> MilpResult:
    """min over x in [lower, upper] of max_rows (C y − d), exactly (up to HiGHS's tolerances).

    With `target`, the feasibility problem instead: any point with max_rows (C y − d) <= target (no
    objective, so HiGHS stops at its first such point, far sooner than it proves the minimum). Its
    answer is only ever a candidate for the judge: "no such point" is reported as not `holds`.

    `pre_lower`/`pre_upper` are sound bounds on each hidden layer's pre-activations over the box (flat);
    `splits` (+1 active, −1 inactive, 0 free per neuron) restricts the search to a ReLU-split domain
    (adding z >= 0 or z <= 0), as the leaves of branch and bound need."""
    if len(pre_lower) != len(chain.hidden) or any(len(p) != h for p, h in zip(pre_lower, chain.hidden, strict=True)):
        raise MilpError(f"intermediate bounds of sizes {[len(p) for p in pre_lower]} for hidden layers {chain.hidden}")
    lo_in = np.asarray(lower, np.float64).reshape(-1)
    hi_in = np.asarray(upper, np.float64).reshape(-1)
    n_in = lo_in.size
    hidden = chain.hidden
    # variables: x | h_1 | ... | h_{L-1} | a (one binary per unstable neuron) | t
    h_start = np.cumsum([n_in, *hidden])[:-1].tolist()  # where each h_k begins
    prev_start = [0, *h_start[:-1]]  # where each layer's input begins (x for the first)
    states = []
    count = n_in + sum(hidden)
    var_lo, var_hi = [lo_in], [hi_in]
    for k, h in enumerate(hidden):
        lo = np.asarray(pre_lower[k], np.float64).reshape(-1)
        hi = np.asarray(pre_upper[k], np.float64).reshape(-1)
        lo = lo - _BOUND_SLACK * np.maximum(1.0, np.abs(lo))
        hi = hi + _BOUND_SLACK * np.maximum(1.0, np.abs(hi))
        split = np.zeros(h, np.int8) if splits is None else np.asarray(splits[k]).reshape(-1)
        active = (lo >= 0) | (split > 0)
        inactive = ((hi <= 0) | (split < 0)) & ~active
        unstable = ~active & ~inactive
        a_col = np.full(h, -1)
        a_col[unstable] = count + np.arange(int(unstable.sum()))
        count += int(unstable.sum())
        states.append((lo, hi, split, active, inactive, unstable, a_col))
        var_lo.append(np.zeros(h))
        var_hi.append(np.where(inactive, 0.0, np.maximum(hi, 0.0)))
    t_col = count
    n_var = count + 1
    rows = _Rows(n_var)
    for k, h in enumerate(hidden):
        lo, hi, split, active, inactive, unstable, a_col = states[k]
        W, b = chain.weights[k], chain.biases[k]
        for j in range(h):
            w = W[j]
            nz = np.flatnonzero(w)
            z_cols, z_vals = prev_start[k] + nz, w[nz]  # z_j = z_vals · v[z_cols] + b_j
            h_col = h_start[k] + j
            if active[j]:  # h = z
                rows.add([h_col, *z_cols], [1.0, *(-z_vals)], b[j], b[j])
            elif unstable[j]:
                rows.add([h_col, *z_cols], [1.0, *(-z_vals)], b[j], np.inf)  # h >= z
                rows.add([h_col, a_col[j]], [1.0, -hi[j]], -np.inf, 0.0)  # h <= u a
                rows.add(
                    [h_col, *z_cols, a_col[j]], [1.0, *(-z_vals), -lo[j]], -np.inf, b[j] - lo[j]
                )  # h <= z - l(1-a)
            elif split[j] < 0:  # h = 0 by its bounds; the split asks z <= 0
                rows.add(list(z_cols), list(z_vals), -np.inf, -b[j])
    # C y - d <= t with y = W_L h_last + b_L
    CW = np.asarray(C, np.float64) @ chain.weights[-1]
    rhs = np.asarray(d, np.float64) - np.asarray(C, np.float64) @ chain.biases[-1]
    last = h_start[-1] if hidden else 0
    for r in range(len(rhs)):
        nz = np.flatnonzero(CW[r])
        rows.add([*(last + nz), t_col], [*CW[r][nz], -1.0], -np.inf, rhs[r])
    n_a = t_col - (n_in + sum(hidden))
    lb_all = np.concatenate([*var_lo, np.zeros(n_a), [-np.inf]])
    ub_all = np.concatenate([*var_hi, np.ones(n_a), [np.inf]])
    integrality = np.concatenate([np.zeros(n_in + sum(hidden)), np.ones(n_a), [0]])
    cost = np.zeros(n_var)
    if target is None:
        cost[t_col] = 1.0
    else:
        ub_all[t_col] = float(target)
    options: dict[str, float | bool] = {"mip_rel_gap": 1e-9, "disp": False}
    if time_limit is not None:
        options["time_limit"] = float(time_limit)
    result = milp(
        cost, constraints=rows.constraint(), bounds=Bounds(lb_all, ub_all), integrality=integrality, options=options
    )
    if result.status == 2 and target is not None:  # no point reaches the target: not a proof here
        return MilpResult(f"no point reaches {target:g}", float("nan"), None)
    if result.status == 2:  # infeasible: the split constraints leave no point
        return MilpResult("optimal", np.inf, None)
    if result.x is None or result.status != 0:
        return MilpResult(
            str(result.message), float("nan"), None if result.x is None else _point(result.x, n_in, chain)
        )
    if target is not None:
        return MilpResult("feasible", float(result.x[t_col]), _point(result.x, n_in, chain))
    return MilpResult("optimal", float(result.x[t_col]), _point(result.x, n_in, chain))


class _Rows:
    """Sparse constraint rows lo <= A v <= hi, collected as triplets."""

    def __init__(self, n_var: int) -> None:
        self.n_var = n_var
        self.r: list[int] = []
        self.c: list[int] = []
        self.v: list[float] = []
        self.lo: list[float] = []
        self.hi: list[float] = []

    def add(self, cols: Sequence[int], values: Sequence[float], lo: float, hi: float) -> None:
        row = len(self.lo)
        self.r.extend([row] * len(cols))
        self.c.extend(int(c) for c in cols)
        self.v.extend(float(v) for v in values)
        self.lo.append(float(lo))
        self.hi.append(float(hi))

    def constraint(self) -> LinearConstraint:
        A = sparse.csr_matrix((self.v, (self.r, self.c)), shape=(len(self.lo), self.n_var))
        return LinearConstraint(A, np.array(self.lo), np.array(self.hi))


def _point(x: np.ndarray, n_in: int, chain: Chain) -> np.ndarray:
    return x[:n_in].astype(np.float32).reshape(chain.input_shape)
