"""The MILP's decision problem (cutoff, ideal cuts, convex neurons without binaries) against its own
optimum, and the one-hidden-layer reader on graphs that are not chains (SISA's mean of MLPs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from uverify.verifier.milp import (
    MILP_MARGIN,
    Chain,
    MilpError,
    chain_of,
    grouped_lower_bound,
    interval_bounds,
    solve,
)


def _random_case(rng: np.random.Generator, depth: int) -> tuple[Chain, np.ndarray, np.ndarray, list, list]:
    n_in = int(rng.integers(2, 6))
    dims = [n_in, *[int(h) for h in rng.integers(4, 10, size=depth)], 3]
    weights = [rng.normal(size=(dims[i + 1], dims[i])) for i in range(len(dims) - 1)]
    biases = [rng.normal(size=dims[i + 1]) * 0.5 for i in range(len(dims) - 1)]
    chain = Chain(weights, biases, (n_in,))
    hi = np.full(n_in, rng.uniform(0.02, 0.5))
    lo = -hi
    pre_lo, pre_hi, low, up = [], [], lo, hi
    for W, b in zip(weights[:-1], biases[:-1], strict=True):  # interval bounds layer by layer: sound
        c, r = (low + up) / 2, (up - low) / 2
        zl, zu = W @ c + b - np.abs(W) @ r, W @ c + b + np.abs(W) @ r
        pre_lo.append(zl)
        pre_hi.append(zu)
        low, up = np.maximum(zl, 0), np.maximum(zu, 0)
    return chain, lo, hi, pre_lo, pre_hi


@pytest.mark.parametrize("depth", [1, 2])
def test_the_decision_problem_agrees_with_the_optimum(depth: int) -> None:
    """For single-row and multi-row disjuncts: refuted (cutoff, with and without cuts) exactly when the
    optimum exceeds the margin, and any point found reaches the cutoff in the network itself."""
    rng = np.random.default_rng(depth)
    refuted = open_ = 0
    for trial in range(24):
        chain, lo, hi, pre_lo, pre_hi = _random_case(rng, depth)
        y = int(rng.integers(0, 3))
        rows = []
        for j in range(3):
            if j != y:
                row = np.zeros(3)
                row[y], row[j] = 1.0, -1.0
                rows.append(row)
        C = np.array(rows) if trial % 2 else np.array(rows[:1])
        d = np.zeros(len(C))
        best = solve(chain, lo, hi, C, d, pre_lo, pre_hi)
        assert best.status == "optimal"
        for rounds in (0, 4):
            got = solve(chain, lo, hi, C, d, pre_lo, pre_hi, cutoff=MILP_MARGIN, cut_rounds=rounds)
            assert got.holds == (best.value > MILP_MARGIN), (trial, rounds, got, best.value)
            if got.point is not None:
                h = got.point.astype(np.float64)
                for W, b in zip(chain.weights[:-1], chain.biases[:-1], strict=True):
                    h = np.maximum(W @ h + b, 0)
                out = chain.weights[-1] @ h + chain.biases[-1]
                assert np.max(C @ out - d) <= MILP_MARGIN + 1e-4
        refuted += best.value > MILP_MARGIN
        open_ += best.value <= MILP_MARGIN
    assert refuted >= 3 and open_ >= 3  # both answers exercised


class MeanOfMlps(nn.Module):
    def __init__(self, skip: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.members = nn.ModuleList(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)) for _ in range(3))
        self.skip = nn.Linear(4, 2) if skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.stack([m(x) for m in self.members]).mean(0)
        return out if self.skip is None else out + self.skip(x)


def test_one_hidden_layer_graphs_are_read_and_skips_refused() -> None:
    module = MeanOfMlps().eval()
    chain = chain_of(module, (4,))
    assert chain.hidden == [18]
    x = torch.rand(16, 4) * 2 - 1
    with torch.no_grad():
        want = module(x).double().numpy()
    got = np.maximum(x.double().numpy() @ chain.weights[0].T + chain.biases[0], 0) @ chain.weights[1].T
    assert np.abs(got + chain.biases[1] - want).max() < 1e-5
    lo, hi = interval_bounds(chain, -np.ones(4), np.ones(4))
    assert np.all(lo <= hi)
    with pytest.raises(MilpError):
        chain_of(MeanOfMlps(skip=True).eval(), (4,))


def test_the_grouped_bound_is_below_the_exact_minimum_and_equal_with_one_group() -> None:
    """milp.grouped_lower_bound sums the exact minima of groups of hidden neurons: never above the whole
    net's exact minimum (it is used to refute), equal to it when one group holds every neuron."""
    rng = np.random.default_rng(4)
    for trial in range(4):
        w1, b1 = rng.normal(size=(24, 5)), rng.normal(size=24) * 0.3
        w2, b2 = rng.normal(size=(2, 24)), rng.normal(size=2)
        chain = Chain([w1, w2], [b1, b2], (5,))
        centre = rng.random(5)
        lo, hi = centre - 0.4, centre + 0.4
        row = np.array([1.0, -1.0])
        pre_lo, pre_hi = interval_bounds(chain, lo, hi)
        exact = solve(chain, lo, hi, row[None], np.zeros(1), [pre_lo], [pre_hi]).value
        for group in (4, 8, 12):
            assert grouped_lower_bound(chain, lo, hi, row, 0.0, pre_lo, pre_hi, group=group) <= exact + 1e-7, (
                trial,
                group,
            )
        assert grouped_lower_bound(chain, lo, hi, row, 0.0, pre_lo, pre_hi, group=24) == pytest.approx(exact, abs=1e-7)
    with pytest.raises(MilpError, match="one hidden layer"):
        deep = Chain([w1, w1[:, :5].T, w2[:, :5]], [b1, b1[:5], b2], (5,))
        grouped_lower_bound(deep, lo, hi, row, 0.0, pre_lo, pre_hi)
