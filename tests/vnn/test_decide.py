"""`decide`: bounds with the property's rows, PGD on its slack, the onnxruntime replay, the stage seam,
and the soundness rule — never `unsat` where a counterexample exists, never an unreplayed `sat`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from uverify.testing.vnn import Weights, forward, random_weights, v1_query, write_network
from uverify.verifier.milp import Chain, solve
from uverify.vnn.decide import (
    AttackStage,
    BabStage,
    BoundsStage,
    Candidate,
    Deadline,
    Problem,
    Result,
    RowsHead,
    Stage,
    decide,
    replay,
)
from uverify.vnn.network import load_network
from uverify.vnn.reader import VnnlibError, parse_vnnlib


def test_unsat_by_crown(network: Path) -> None:
    # on [0.4, 0.6]^2 the tiny network has y0 <= -1.5 < 0.8 <= y1
    query = parse_vnnlib(v1_query([0.4, 0.4], [0.6, 0.6], "(>= Y_0 Y_1)"))
    verdict = decide(load_network(network, query), query, Deadline(60))
    assert (verdict.result, verdict.stage) == (Result.UNSAT, "CROWN")


def test_sat_by_pgd_is_replayed(network: Path) -> None:
    query = parse_vnnlib(v1_query([-1, -1], [1, 1], "(>= Y_0 2.05)"))  # max y0 = 2.1 at a corner region
    net = load_network(network, query)
    verdict = decide(net, query, Deadline(60))
    assert verdict.result is Result.SAT and verdict.counterexample is not None
    cex = verdict.counterexample
    assert cex.x.dtype == np.float32 and query.properties[0].boxes[0].contains(cex.x[None].astype(np.float64))[0]
    assert np.array_equal(cex.y, net.run(cex.x[None])[0])  # what onnxruntime gave
    assert forward(cex.x.astype(np.float64)[None])[0, 0] >= 2.05


def test_rows_head_bounds_are_below_every_sampled_value(network: Path) -> None:
    query = parse_vnnlib(v1_query([-1, -0.5], [0.5, 1], "(and (>= Y_0 Y_1) (<= (+ Y_0 Y_1) 3))"))
    problem = Problem(load_network(network, query), query)
    prop = query.properties[0]
    lower = BoundsStage("CROWN")._bound(problem, prop, [0])[0]
    points = np.random.default_rng(0).uniform(prop.boxes[0].lower, prop.boxes[0].upper, (2000, 2))
    y = forward(points)
    rows = y @ prop.violation[0].C.T - prop.violation[0].d
    assert np.all(rows.min(axis=0) >= lower - 1e-5)
    head = RowsHead(prop.violation[0].C, prop.violation[0].d)
    out = head(torch.tensor(y, dtype=torch.float32)).numpy()
    np.testing.assert_allclose(out[:, 0], 0.0)
    np.testing.assert_allclose(out[:, 1:], -rows, rtol=1e-5, atol=1e-5)


def test_replay_drops_points_that_do_not_violate(network: Path) -> None:
    query = parse_vnnlib(v1_query([-1, -1], [1, 1], "(>= Y_0 2.05)"))
    net = load_network(network, query)
    assert replay(net, query, [Candidate(np.zeros(2), 0, 0)]) is None  # y0(0) = -0.3
    clipped = replay(net, query, [Candidate(np.array([5.0, -5.0]), 0, 0)])  # outside: pulled into the box
    assert clipped is not None and clipped.x.tolist() == [1.0, -1.0]  # y0(1, -1) = 2.1


class _Refute:
    name = "refute-all"

    def __call__(self, problem: Problem, deadline: Deadline) -> Sequence[Candidate]:
        for triple in list(problem.open):
            problem.refute(triple)
        return []


class _Offer:
    name = "offer"

    def __init__(self, x: np.ndarray) -> None:
        self.x = x

    def __call__(self, problem: Problem, deadline: Deadline) -> Sequence[Candidate]:
        return [Candidate(self.x, 0, 0)]


def test_a_later_stage_plugs_in(network: Path) -> None:
    query = parse_vnnlib(v1_query([-1, -1], [1, 1], "(>= Y_0 2.05)"))
    net = load_network(network, query)
    assert decide(net, query, Deadline(10), [_Refute()]).stage == "refute-all"
    bogus = decide(net, query, Deadline(10), [_Offer(np.zeros(2))])
    assert bogus.result is Result.UNKNOWN and "failed the onnxruntime replay" in bogus.notes[0]
    real = decide(net, query, Deadline(10), [_Offer(np.array([1.0, -1.0]))])
    assert (real.result, real.stage) == (Result.SAT, "offer")


def test_an_expired_deadline_is_a_timeout(network: Path) -> None:
    query = parse_vnnlib(v1_query([-1, -1], [1, 1], "(>= Y_0 2.05)"))
    assert decide(load_network(network, query), query, Deadline(0)).result is Result.TIMEOUT


def test_network_must_fit_the_query(network: Path) -> None:
    query = parse_vnnlib(v1_query([0, 0, 0], [1, 1, 1], "(>= Y_0 0)"))
    with pytest.raises(VnnlibError, match=r"3 inputs but tiny\.onnx takes 2"):
        load_network(network, query)
    query = parse_vnnlib(v1_query([0, 0], [1, 1], "(>= Y_0 0)", outputs=3))
    with pytest.raises(VnnlibError, match="3 outputs"):
        load_network(network, query)


@pytest.mark.parametrize("seed", range(4))
def test_soundness_on_random_networks(tmp_path: Path, seed: int) -> None:
    """Random ReLU networks, thresholds just under, just over and far over the sampled maximum of
    y1 - y0: a verdict never contradicts dense sampling, and every sat is a real point of the box."""
    weights = random_weights(3, 8, 3, seed)
    path = write_network(tmp_path / "n.onnx", weights=weights)
    rng = np.random.default_rng(seed)
    lower = rng.uniform(-1, 0, 3)
    upper = lower + rng.uniform(0.1, 1, 3)
    grid = rng.uniform(lower, upper, (20000, 3))
    y = forward(grid, weights)
    best = float((y[:, 1] - y[:, 0]).max())
    verdicts = []
    for threshold in (best - 0.02 * abs(best) - 1e-3, best + 0.02 * abs(best) + 1e-3, best + 2 * abs(best) + 2):
        text = v1_query(list(lower), list(upper), f"(>= (- Y_1 Y_0) {threshold:.6f})", outputs=3)
        query = parse_vnnlib(text)
        verdict = decide(load_network(path, query), query, Deadline(30), [BoundsStage("CROWN"), AttackStage()])
        verdicts.append(verdict.result)
        if best >= float(f"{threshold:.6f}"):
            assert verdict.result is not Result.UNSAT
        if verdict.result is Result.SAT:
            assert verdict.counterexample is not None
            x = verdict.counterexample.x.astype(np.float64)
            assert np.all((x >= lower) & (x <= upper))
            out = forward(x[None], weights)[0]
            assert out[1] - out[0] >= float(f"{threshold:.6f}") - 1e-5
    assert verdicts[0] is Result.SAT and verdicts[2] is Result.UNSAT  # the easy ends are decided


def _exact_max(weights: Weights, lower: np.ndarray, upper: np.ndarray) -> float:
    """max of y1 − y0 over the box, exactly: the MILP (HiGHS) with interval bounds on the hidden layer."""
    w1, b1, w2, b2 = (np.asarray(a, np.float64) for a in weights)
    chain = Chain([w1, w2], [b1, b2], (len(lower),))
    pre_lower = np.maximum(w1, 0) @ lower + np.minimum(w1, 0) @ upper + b1
    pre_upper = np.maximum(w1, 0) @ upper + np.minimum(w1, 0) @ lower + b1
    result = solve(chain, lower, upper, np.array([[1.0, -1.0]]), np.zeros(1), [pre_lower], [pre_upper])
    assert result.status == "optimal"
    return -result.value


INCOMPLETE: tuple[Stage, ...] = (BoundsStage("CROWN"), AttackStage("PGD"), BoundsStage("alpha-CROWN"))


@pytest.mark.parametrize("mode", ["input", "relu"])
def test_bab_decides_what_the_incomplete_stages_leave_unknown(tmp_path: Path, mode: str) -> None:
    """Thresholds just over and just under the exact maximum of y1 − y0 (the MILP's). Just over, CROWN,
    PGD and alpha-CROWN leave it open (decide stops at the first stage that decides, so "BaB" deciding
    means they did not) and branch and bound proves it; just under, with the bounds alone before it
    (PGD would find this one), branch and bound's falsifier finds the point, which onnxruntime replays.
    In either split mode."""
    weights = random_weights(3, 16, 2, seed=1)
    path = write_network(tmp_path / "n.onnx", weights=weights)
    lower, upper = np.array([-1.0, -0.5, -1.0]), np.array([1.0, 1.0, 0.5])
    best = _exact_max(weights, lower, upper)
    for threshold, want in ((best + 0.02, Result.UNSAT), (best - 0.02, Result.SAT)):
        query = parse_vnnlib(v1_query(list(lower), list(upper), f"(>= (- Y_1 Y_0) {threshold:.6f})"))
        net = load_network(path, query)
        before = INCOMPLETE if want is Result.UNSAT else (INCOMPLETE[0], INCOMPLETE[2])
        verdict = decide(net, query, Deadline(30), (*before, BabStage(mode=mode)))
        assert (verdict.result, verdict.stage) == (want, "BaB"), verdict.notes
        if want is Result.SAT:
            assert verdict.counterexample is not None
            x = verdict.counterexample.x.astype(np.float64)
            assert np.all((x >= lower) & (x <= upper))
            y = forward(x[None], weights)[0]
            assert y[1] - y[0] >= float(f"{threshold:.6f}") - 1e-5


def test_bab_stage_shares_the_deadline_and_says_why_it_stopped(network: Path) -> None:
    """A budget too short to finish: the box stays open (unknown, never unsat) and the notes say so."""
    query = parse_vnnlib(v1_query([-1, -1], [1, 1], "(>= Y_0 2.1)"))  # max y0 = 2.1 exactly: undecidable
    net = load_network(network, query)
    verdict = decide(net, query, Deadline(2.5), [BabStage(margin_s=0.5)])
    assert verdict.result in (Result.UNKNOWN, Result.TIMEOUT)
    assert any("BaB: property 0 box 0:" in note for note in verdict.notes), verdict.notes
