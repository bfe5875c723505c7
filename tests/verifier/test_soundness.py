"""The shared soundness suite: every bound method x every norm, through real ONNX files.

An incomplete method may say "unknown"; it must never certify where a counterexample exists. Each
case exports a random small network to ONNX, imports it back as the verifier does, and checks:
  * no certified margin lower bound exceeds the margin at 10,000 points sampled in the ball ∩ domain
    (the box's vertices included for L_inf), nor at the PGD point;
  * `check(..., cross_check=True)` never has a sample both verified and falsified (it would raise);
  * on linear models, where CROWN is exact, a sample is certified exactly below the analytic robust
    radius, and PGD finds a confirmed counterexample just beyond it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from uverify.attacks import margin_loss, pgd_for
from uverify.datasets import Domain
from uverify.models import export_onnx
from uverify.specs.load import validate_spec
from uverify.verifier.bounds import METHODS, Bounder
from uverify.verifier.check import check
from uverify.verifier.onnx_import import import_onnx
from uverify.verifier.samples import Samples

from helpers import tiny_spec_dict

NORMS = ("inf", "2", "1")
POINTS = 10_000
EPS = {"inf": 0.05, "2": 0.15, "1": 0.3}
WHOLE_BOX = {"inf": 1.0, "2": 2.3, "1": 5.0}  # balls that cover the unit box [0, 1]^5


def _mlp() -> nn.Sequential:
    """A random ReLU net whose decision boundaries cross the unit box (plain init predicts one class)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    probe = torch.rand(4000, 5)
    with torch.no_grad():
        for k in (0, 2, 4):
            layer = net[k]
            assert isinstance(layer, nn.Linear)
            layer.weight.mul_(3)
            layer.bias.sub_(net[: k + 1](probe).mean(0))  # centre each layer's pre-activations on the box
    return net


def _cnn() -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 3),
    )  # fmt: skip


def _softmax_ensemble() -> nn.Module:
    """SISA's mean_softmax aggregate: the ONNX Softmax is imported as PairwiseSoftmax for CROWN."""
    from uverify.unlearning.sisa import SisaEnsemble

    members = [_mlp(), _mlp()]
    with torch.no_grad():
        last = members[1][4]
        assert isinstance(last, nn.Linear)
        last.weight.mul_(-0.5)  # a second member that disagrees with the first
    return SisaEnsemble(members, "mean_softmax")


NETS = {"mlp": (_mlp, (5,)), "cnn": (_cnn, (1, 6, 6)), "softmax_ensemble": (_softmax_ensemble, (5,))}


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    out = {}
    for name, (make, shape) in NETS.items():
        x = np.random.default_rng(0).random((16, *shape), dtype=np.float32)
        path = tmp_path_factory.mktemp(name) / "net.onnx"
        export_onnx(make(), path, x)
        out[name] = (import_onnx(path, samples=x), path, x)
    return out


def _sample_ball(x: torch.Tensor, eps: float, norm: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points in the eps-ball around one sample x (shape input_shape), clipped to [0, 1]."""
    d = x.numel()
    if norm == "inf":
        pts = (torch.rand((n, d), generator=gen) * 2 - 1) * eps
        pts[: n // 4] = torch.sign(pts[: n // 4]) * eps  # vertices of the box
    elif norm == "2":
        g = torch.randn((n, d), generator=gen)
        g = g / g.norm(dim=1, keepdim=True)
        pts = g * eps * torch.rand((n, 1), generator=gen) ** (1 / d)
        pts[: n // 4] = g[: n // 4] * eps  # the sphere itself
    else:
        e = -torch.log(torch.rand((n, d + 1), generator=gen))
        pts = (e[:, :d] / e.sum(1, keepdim=True)) * torch.sign(torch.rand((n, d), generator=gen) - 0.5) * eps
        corners = torch.randint(0, d, (n // 4,), generator=gen)
        pts[: n // 4] = 0
        pts[torch.arange(n // 4), corners] = eps * torch.sign(torch.rand(n // 4, generator=gen) - 0.5)
    return (x.reshape(1, -1) + pts).clamp(0, 1).reshape(n, *x.shape)


def _margins(module: nn.Module, x: torch.Tensor, y: int) -> torch.Tensor:
    """All margins z_y - z_j, j != y, in the bounder's column order."""
    with torch.no_grad():
        z = module(x)
    others = [j for j in range(z.shape[1]) if j != y]
    return z[:, [y]] - z[:, others]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("net", sorted(NETS))
def test_no_bound_beats_a_sampled_or_attacked_point(imported, net: str, method: str, norm: str) -> None:
    model, _, xs = imported[net]
    module = model.module
    x = torch.from_numpy(xs[:4])
    with torch.no_grad():
        y = module(x).argmax(1)
    eps = EPS[norm]
    lo, hi = torch.zeros(model.input_shape), torch.ones(model.input_shape)
    lb = Bounder(module, model.input_shape, method).margins(x, y, eps, norm, lo, hi)
    gen = torch.Generator().manual_seed(0)
    attack = pgd_for(norm, steps=30, restarts=2, early_stop=False)
    adv = attack.run(module, x, y, eps, lo[None], hi[None], gen).x_adv
    for i in range(len(x)):
        points = torch.cat([_sample_ball(x[i], eps, norm, POINTS, gen), adv[i : i + 1]])
        sampled = _margins(module, points, int(y[i]))
        assert torch.all(lb[i] <= sampled.min(0).values + 1e-5), f"sample {i}: bound above a reachable margin"
        assert -margin_loss(module(adv[i : i + 1]), y[i : i + 1]).item() >= lb[i].min().item() - 1e-5


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method", METHODS)
def test_check_never_certifies_a_confirmed_counterexample(imported, method: str, norm: str) -> None:
    model, path, _ = imported["mlp"]
    xs = np.random.default_rng(5).random((30, 5), dtype=np.float32)
    with torch.no_grad():
        ys = model.module(torch.from_numpy(xs)).argmax(1).numpy()
    spec = validate_spec(
        tiny_spec_dict(
            property={"norm": norm, "epsilon": [EPS[norm] / 2, EPS[norm], WHOLE_BOX[norm]]},
            verify={"method": method, "batch_size": 16},
            attack={"steps": 30, "restarts": 2},
        )
    )
    domain = Domain.box((5,), 0.0, 1.0)
    report = check(path, spec, Samples(xs, ys, np.arange(30), "random"), domain, progress=False, cross_check=True)
    for r in report.results:
        assert r.certified_accuracy <= r.pgd_accuracy <= r.clean_accuracy
    assert report.results[-1].counts.falsified > 0  # the sweep reaches counterexamples: the guard is exercised


DUAL = {"inf": 1.0, "2": 2.0, "1": float("inf")}


@pytest.mark.parametrize("norm", NORMS)
def test_linear_models_certify_exactly_up_to_the_analytic_radius(tmp_path: Path, norm: str) -> None:
    torch.manual_seed(3)
    linear = nn.Linear(6, 3)
    xs = np.random.default_rng(3).random((8, 6), dtype=np.float32)
    path = tmp_path / "linear.onnx"
    export_onnx(linear, path, xs)
    with torch.no_grad():
        logits = linear(torch.from_numpy(xs))
    y = logits.argmax(1)
    w = linear.weight.detach()
    radius = []
    for i in range(len(xs)):
        others = [j for j in range(3) if j != int(y[i])]
        diff = w[int(y[i])] - w[others]
        margin = logits[i, int(y[i])] - logits[i, others]
        radius.append(float((margin / diff.norm(p=DUAL[norm], dim=1)).min()))
    for i, r in enumerate(radius):
        for scale, expect in ((0.98, "verified"), (1.02, "falsified")):
            spec = validate_spec(
                tiny_spec_dict(
                    property={"norm": norm, "epsilon": [r * scale]},
                    verify={"method": "CROWN"},
                    attack={"steps": 100, "restarts": 2},
                )
            )
            sample = Samples(xs[i : i + 1], y[i : i + 1].numpy(), np.array([i]), "linear")
            report = check(path, spec, sample, None, progress=False)  # no domain: the ball alone decides
            assert report.samples[0].verdicts == [expect], (i, scale, r)
