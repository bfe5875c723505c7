"""Branch and bound against exact answers: the MILP (HiGHS) and dense sampling, on tiny random ReLU nets
exported to ONNX and judged by onnxruntime. BaB may time out; it must never say `verified` where the
MILP finds a counterexample, nor `falsified` where the MILP proves the property."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from uverify.models.referee import Referee
from uverify.verifier.bab import BabConfig, BabError, BranchAndBound, Region, choose_mode
from uverify.verifier.bab.bounding import DomainBounder
from uverify.verifier.bab.branching import input_gain
from uverify.verifier.bounds import Bounder
from uverify.verifier.milp import MILP_MARGIN, Chain, MilpError, chain_of, solve
from uverify.verifier.onnx_import import import_onnx
from uverify.verifier.property import Property, robustness

SEEDS = (0, 2)


def write_sequential(model: nn.Sequential, input_shape: tuple[int, ...], path: Path) -> Path:
    """An nn.Sequential of Linear / Conv2d / ReLU / Flatten as an ONNX file (opset 18), written with
    onnx.helper: the same kind of file any exporter writes, in milliseconds (torch's exporter takes
    seconds a model)."""
    nodes, weights = [], []
    current = "x"
    for k, layer in enumerate(model):
        out = f"v{k}"
        if isinstance(layer, nn.Linear):
            w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()
            weights += [numpy_helper.from_array(w, f"W{k}"), numpy_helper.from_array(b, f"b{k}")]
            nodes.append(helper.make_node("Gemm", [current, f"W{k}", f"b{k}"], [out], transB=1))
        elif isinstance(layer, nn.Conv2d):
            w, b = layer.weight.detach().numpy(), layer.bias.detach().numpy()  # type: ignore[union-attr]
            weights += [numpy_helper.from_array(w, f"W{k}"), numpy_helper.from_array(b, f"b{k}")]
            pad = list(layer.padding) * 2
            nodes.append(
                helper.make_node("Conv", [current, f"W{k}", f"b{k}"], [out], pads=pad, strides=list(layer.stride))
            )
        elif isinstance(layer, nn.ReLU):
            nodes.append(helper.make_node("Relu", [current], [out]))
        elif isinstance(layer, nn.Flatten):
            nodes.append(helper.make_node("Flatten", [current], [out], axis=1))
        else:
            raise TypeError(type(layer).__name__)
        current = out
    with torch.no_grad():
        outputs = int(model(torch.zeros(1, *input_shape)).shape[1])
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["N", outputs])], weights,
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path


def random_mlp(seed: int, hidden: tuple[int, ...] = (8, 8), inputs: int = 4, outputs: int = 3) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = inputs
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    with torch.no_grad():
        net = nn.Sequential(*layers, nn.Linear(width, outputs))
        for layer in net:
            if isinstance(layer, nn.Linear):
                layer.weight.mul_(1.7)  # He-like scale: decision boundaries cross the unit box
    return net


class Tiny:
    """One exported net with everything a test needs: the imported module, its referee, bounders, chain."""

    def __init__(self, seed: int, folder: Path, hidden: tuple[int, ...] = (8, 8)) -> None:
        self.x = np.random.default_rng(seed).random((8, 4), dtype=np.float32)
        path = write_sequential(random_mlp(seed, hidden), (4,), folder / f"net{seed}.onnx")
        imported = import_onnx(path, samples=self.x)
        self.module, self.shape = imported.module, imported.input_shape
        self.referee = Referee(path)
        self.bounder = Bounder(self.module, self.shape, "CROWN")
        self.domains = DomainBounder(self.bounder)
        self.chain = chain_of(self.module, self.shape)

    def label(self, i: int) -> int:
        with torch.no_grad():
            return int(self.module(torch.from_numpy(self.x[i : i + 1])).argmax())

    def prop(self, i: int, eps: float) -> Property:
        lo, hi = np.clip(self.x[i] - eps, 0, 1), np.clip(self.x[i] + eps, 0, 1)
        return robustness(lo, hi, self.label(i), 3)

    def exact(self, prop: Property) -> float:
        """min over the box of the property's slack (<= 0: a counterexample exists), by the MILP."""
        box = prop.boxes[0]
        lo, hi = torch.from_numpy(box.lower).float(), torch.from_numpy(box.upper).float()
        C = torch.from_numpy(np.concatenate([c.C for c in prop.violation])).float()
        root = self.domains.root(Region.box(lo, hi), C)
        pre_lo = [t[0].double().numpy() for t in root.pre_lower]
        pre_hi = [t[0].double().numpy() for t in root.pre_upper]
        return min(solve(self.chain, box.lower, box.upper, c.C, c.d, pre_lo, pre_hi).value for c in prop.violation)


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> list[Tiny]:
    folder = tmp_path_factory.mktemp("tiny")
    return [Tiny(seed, folder) for seed in SEEDS]


def _radius(net: Tiny, i: int) -> float:
    """The robust radius of sample i by bisection on the MILP's verdict."""
    lo, hi = 0.0, 0.6
    for _ in range(7):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if net.exact(net.prop(i, mid)) > 0 else (lo, mid)
    return (lo + hi) / 2


@pytest.fixture(scope="module")
def radii(nets: list[Tiny]) -> list[float]:
    return [_radius(net, 1) for net in nets]


def test_milp_is_exact_against_dense_sampling_and_crown(nets: list[Tiny]) -> None:
    net = nets[0]
    prop = net.prop(0, 0.2)
    box, disjunct = prop.boxes[0], prop.violation[0]
    lo, hi = torch.from_numpy(box.lower).float(), torch.from_numpy(box.upper).float()
    root = net.domains.root(Region.box(lo, hi), torch.from_numpy(disjunct.C).float())
    result = solve(
        net.chain, box.lower, box.upper, disjunct.C, disjunct.d,
        [t[0].double().numpy() for t in root.pre_lower], [t[0].double().numpy() for t in root.pre_upper],
    )  # fmt: skip
    assert result.status == "optimal" and result.point is not None
    points = lo + torch.rand(20_000, 4, generator=torch.Generator().manual_seed(0)) * (hi - lo)
    with torch.no_grad():
        sampled = disjunct.slack(net.module(points).double().numpy())
        at_point = disjunct.slack(net.module(torch.from_numpy(result.point[None])).double().numpy())[0]
    assert sampled.min() >= result.value - 1e-5  # nothing sampled beats the exact minimum
    assert at_point == pytest.approx(result.value, abs=1e-4)  # and the minimiser attains it
    assert float(root.lower[0, 0] - disjunct.d[0]) <= result.value + 1e-5  # CROWN is a lower bound


@pytest.mark.parametrize("mode", ["input", "relu"])
def test_bab_agrees_with_the_milp_on_both_sides_of_the_robust_radius(
    nets: list[Tiny], radii: list[float], mode: str
) -> None:
    decided = 0
    for net, radius in zip(nets, radii, strict=True):
        bab = BranchAndBound(net.bounder, BabConfig(timeout_s=5, mode=mode))
        for eps in (radius * 0.9, radius * 1.1):
            prop = net.prop(1, eps)
            exact = net.exact(prop)
            result = bab.verify_property(prop, referee=net.referee)
            assert not (result.status == "verified" and exact <= 0), (eps, exact)
            assert not (result.status == "falsified" and exact > MILP_MARGIN), (eps, exact)
            if result.status == "falsified":
                assert result.counterexample is not None
                assert prop.boxes[0].contains(result.counterexample[None], 1e-7).all()
                assert prop.violated_by(net.referee.logits(result.counterexample[None]).astype(np.float64)).all()
            decided += result.decided
    assert decided == 2 * len(nets)  # tiny nets near the radius: every one decided inside 5 s


def test_beta_split_bounds_never_exceed_the_split_domains_minimum(nets: list[Tiny]) -> None:
    """β-CROWN's multipliers are only sound with the right sign convention (+1 active): with β pushed
    hard, each child's bound must stay below the minimum sampled over the points of its phase."""
    net = nets[1]
    bounder = DomainBounder(net.bounder, beta_iterations=40, lr_beta=0.5)
    for i in range(len(net.x)):  # a box with unstable neurons in both layers
        prop = net.prop(i, 0.3)
        box = prop.boxes[0]
        lo, hi = torch.from_numpy(box.lower).float(), torch.from_numpy(box.upper).float()
        C = torch.from_numpy(np.concatenate([c.C for c in prop.violation])).float()
        region = Region.box(lo, hi)
        root = bounder.root(region, C)
        pairs = zip(root.pre_lower, root.pre_upper, strict=True)
        unstable = [((a < 0) & (b > 0))[0].nonzero().view(-1) for a, b in pairs]
        if len(unstable[0]) and len(unstable[1]):
            break
    assert len(unstable[0]) and len(unstable[1])
    # four domains: neuron u of layer 0 and neuron v of layer 1, each active or inactive
    u, v = int(unstable[0][0]), int(unstable[1][0])
    lower = [t.repeat(4, 1) for t in root.pre_lower]
    upper = [t.repeat(4, 1) for t in root.pre_upper]
    splits = [torch.zeros_like(t, dtype=torch.int8) for t in lower]
    phases = [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    for r, (pu, pv) in enumerate(phases):
        for k, (j, p) in enumerate(((u, pu), (v, pv))):
            splits[k][r, j] = p
            if p > 0:
                lower[k][r, j] = 0.0
            else:
                upper[k][r, j] = 0.0
    bounds = bounder.domains(region, C, lower, upper, splits, [torch.zeros_like(t) for t in lower])
    assert any(float(b.abs().sum()) > 0 for b in bounds.beta)  # β did move
    points = lo + torch.rand(200_000, 4, generator=torch.Generator().manual_seed(1)) * (hi - lo)
    layers = list(net.module.nodes.values())
    with torch.no_grad():
        z0 = layers[0](points)
        z1 = layers[2](torch.relu(z0))
        out = layers[4](torch.relu(z1)) @ C.T
    for r, (pu, pv) in enumerate(phases):
        inside = ((z0[:, u] >= 0) == (pu > 0)) & ((z1[:, v] >= 0) == (pv > 0))
        if bounds.infeasible[r]:
            assert int(inside.sum()) == 0
            continue
        if int(inside.sum()) == 0:
            continue
        assert torch.all(bounds.lower[r] <= out[inside].min(0).values + 1e-4), (r, bounds.lower[r])


def test_stop_reasons_timeout_and_memory(nets: list[Tiny], radii: list[float]) -> None:
    """Just inside the robust radius of nets[0] neither CROWN at the root nor one split decides: a budget
    shorter than the root's bound times out, a cap of about one box runs out of memory, and without them
    both modes verify."""
    net = nets[0]
    prop = net.prop(1, radii[0] * 0.98)
    for mode in ("relu", "input"):
        slow = BranchAndBound(net.bounder, BabConfig(timeout_s=0.005, mode=mode, attack_every=0))
        result = slow.verify_property(prop, referee=net.referee)
        assert result.status == "timeout" and result.seconds < 1.0 and result.lower_bound < 0
    small = BranchAndBound(net.bounder, BabConfig(timeout_s=30, mode="input", memory_mb=100 / 2**20))
    result = small.verify_property(prop, referee=net.referee)
    assert result.status == "memory" and result.domains < 20
    for mode in ("relu", "input"):
        bab = BranchAndBound(net.bounder, BabConfig(timeout_s=30, mode=mode))
        assert bab.verify_property(prop, referee=net.referee).status == "verified"


def test_settings_and_modes_are_checked() -> None:
    with pytest.raises(BabError, match="positive number of seconds"):
        BabConfig(timeout_s=0)
    with pytest.raises(BabError, match="unknown branch-and-bound mode"):
        BabConfig(mode="depth")
    with pytest.raises(BabError, match="norm inf"):
        choose_mode("input", 4, "2")
    assert choose_mode("auto", 16, "inf") == "input"
    assert choose_mode("auto", 17, "inf") == "relu"
    assert choose_mode("auto", 4, "1") == "relu"


def test_milp_refuses_a_network_that_is_not_a_relu_chain() -> None:
    with pytest.raises(MilpError, match="not"):
        chain_of(nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2)), (3,))
    chain = chain_of(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), (3,))
    assert isinstance(chain, Chain) and chain.hidden == [4]


def test_a_tiny_budget_holds_in_every_stage(tmp_path: Path) -> None:
    """A judge that confirms nothing on a box full of counterexamples keeps every stage busy to the
    deadline (α at the root, the MILP, β steps, LP leaves, input splits): each run stops within one bound
    call of its budget (the old root α ran by an estimate of its steps and overran by several times)."""
    net = Tiny(3, tmp_path, hidden=(24, 24))
    lo, hi = np.zeros(4, np.float32), np.ones(4, np.float32)
    prop = robustness(lo, hi, net.label(0), 3)

    def never(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(points), dtype=bool), points

    budget = 1.0
    for mode, share in (("relu", 0.5), ("relu", 0.0), ("input", 0.0)):
        config = BabConfig(timeout_s=budget, mode=mode, exact_share=share, attack_every=0)
        result = BranchAndBound(net.bounder, config).verify_property(prop, judge_for=never)
        assert result.status == "timeout", (mode, share, result.status)
        assert result.seconds < budget * 1.6, (mode, share, result.seconds)


def test_without_lp_leaves_the_milp_only_searches_for_points_worst_disjunct_longest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`uverify vnncomp`'s setting (lp_leaves off): the root MILP solves the feasibility problem (a point
    with slack <= −EXACT_TARGET), never the refuting decision problem, and the worst-bounded disjunct gets
    the largest part of the MILP's share (1/(rank+1) weights; 2/3 of it for the first of two here) — on
    mnistfc prop_0_0.05 an equal split left the violated disjunct 3 s where HiGHS needs 7."""
    import uverify.verifier.bab as bab_module

    net = Tiny(3, tmp_path, hidden=(24, 24))
    prop = robustness(np.zeros(4, np.float32), np.ones(4, np.float32), net.label(0), 3)
    calls: list[dict[str, object]] = []
    real_solve = bab_module.solve

    def recording(*args: object, **kwargs: object) -> object:
        calls.append({**kwargs, "at": time.perf_counter()})
        return real_solve(*args, **kwargs)

    def never(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.zeros(len(points), dtype=bool), points

    monkeypatch.setattr(bab_module, "solve", recording)
    budget, share = 6.0, 0.5
    config = BabConfig(
        timeout_s=budget, mode="relu", exact_share=share, attack_every=0, lp_leaves=False, alpha_root=False
    )
    bab = BranchAndBound(net.bounder, config)
    started = time.perf_counter()  # just before the run's clock starts
    result = bab.verify_property(prop, judge_for=never)
    assert result.status != "verified"  # the box holds counterexamples (the judge only hides them)
    assert len(calls) == 2, calls
    assert all(c["target"] == -bab_module.EXACT_TARGET and c.get("cutoff") is None for c in calls)
    first, second = (float(c["time_limit"]) for c in calls)  # type: ignore[arg-type]
    left = share * budget - (float(calls[0]["at"]) - started)  # type: ignore[arg-type]  # at most what was left
    assert first > 0.6 * left  # 2/3 of it; an equal split gives 1/2, whatever the machine's load
    assert second <= share * budget  # the second gets what the first left of the share, no more


def test_input_splitting_halves_a_wide_dimension_the_gradient_ignores_and_never_an_unsplittable_one() -> None:
    """ACAS Xu 1_9 prop_2's stuck boxes: four inputs halved to float32's resolution (the gradient's
    choice) and one of width 0.25 the bound's gradient ignored. Among dimensions of equal width the
    gradient × width order holds; a dimension whose midpoint is an end is never picked while another
    can be halved, and a box with none left still gets an index (the loop's memory cap ends it)."""
    lo = torch.tensor([[0.6399, -0.0494, -0.5, 0.5, -0.4875]])
    hi = lo.clone()
    hi[0, 2] += 0.25
    for i in (0, 1, 3, 4):
        hi[0, i] = torch.nextafter(lo[0, i], torch.tensor(1.0))  # one ulp: the midpoint rounds to an end
    coef = torch.tensor([[3.0, 2.0, 0.0, 1.0, 4.0]])
    assert input_gain(coef, lo, hi, 1).tolist() == [[2]]
    assert input_gain(coef, lo, hi, 2)[0, 0] == 2
    # the width term: x2, twice as wide with 0.8 of x4's share, goes first (gradient × width alone: x4)
    hi2 = lo + torch.tensor([[0.1, 0.1, 0.2, 0.1, 0.1]])
    coef2 = torch.tensor([[3.0, 2.0, 1.6, 1.0, 4.0]])
    assert input_gain(coef2, lo, hi2, 5).tolist() == [[2, 4, 0, 1, 3]]
    # equal widths: gradient × width decides
    assert input_gain(coef, lo, lo + 0.1, 5).tolist() == [[4, 0, 1, 3, 2]]
    assert input_gain(coef, lo, lo, 1).shape == (1, 1)  # a point box: an index all the same


def test_a_wide_one_hidden_layer_net_is_refuted_by_its_groups_only_where_the_milp_proves_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """96 hidden neurons (more than GROUP_NEURONS): with LP leaves on, the root tries the sum of the
    groups' exact minima before the whole MILP. On both sides of the robust radius BaB agrees with the
    exact MILP (so no refutation of the groups' came where a counterexample exists), and the grouped
    bound was asked at least once."""
    import uverify.verifier.bab as bab_module

    net = Tiny(5, tmp_path, hidden=(96,))
    radius = _radius(net, 1)
    asked: list[float] = []
    real = bab_module.grouped_lower_bound

    def recording(*args: object, **kwargs: object) -> float:
        value = real(*args, **kwargs)
        asked.append(value)
        return value

    monkeypatch.setattr(bab_module, "grouped_lower_bound", recording)
    monkeypatch.setattr(bab_module, "QUICK_MILP_S", 0.0)  # no quick try of the whole MILP: it settles tiny nets
    bab = BranchAndBound(net.bounder, BabConfig(timeout_s=10, mode="relu"))
    for eps in (radius * 0.9, radius * 1.1):
        prop = net.prop(1, eps)
        exact = net.exact(prop)
        result = bab.verify_property(prop, referee=net.referee)
        assert result.decided, (eps, result.status)
        assert (result.status == "verified") == (exact > 0), (eps, exact, result.status)
    assert asked, "the grouped bound was never tried"
