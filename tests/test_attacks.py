from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from uverify.attacks import L2PGD, PGD, LinfPGD, margin_loss, pgd_for, project_l1_ball
from uverify.errors import UverifyError

NORMS = ("inf", "2", "1")


def _pnorm(t: torch.Tensor, norm: str) -> torch.Tensor:
    return t.flatten(1).norm(p=float("inf") if norm == "inf" else float(norm), dim=1)


def _dual(norm: str) -> float:
    return {"inf": 1.0, "2": 2.0, "1": float("inf")}[norm]


def test_margin_loss_is_positive_exactly_when_misclassified() -> None:
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    y = torch.tensor([0, 0])
    np.testing.assert_allclose(margin_loss(logits, y).numpy(), [-1.0, 3.0])


def test_l1_projection_is_exact() -> None:
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(64, 20, generator=gen) * 3
    eps = 2.0
    p = project_l1_ball(v, eps)
    norms = p.abs().sum(1)
    assert torch.all(norms <= eps + 1e-5)
    # optimality: projection is soft-thresholding at some theta >= 0 with sign kept
    outside = v.abs().sum(1) > eps
    assert torch.allclose(norms[outside], torch.full_like(norms[outside], eps), atol=1e-5)
    for i in torch.nonzero(outside).squeeze(1)[:5]:
        theta = (v[i].abs() - p[i].abs())[p[i] != 0]
        assert torch.allclose(theta, theta[0].expand_as(theta), atol=1e-5)  # one common threshold
        assert torch.all(v[i].abs()[p[i] == 0] <= theta[0] + 1e-5)
    inside = torch.randn(4, 20, generator=gen) * 0.01
    assert torch.equal(project_l1_ball(inside, eps), inside)


@pytest.mark.parametrize("norm", NORMS)
def test_every_point_stays_in_the_ball_and_the_domain(norm: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.rand(40, 6)
    y = torch.randint(0, 3, (40,))
    lo, hi = torch.zeros(1, 6), torch.ones(1, 6)
    eps = {"inf": 0.1, "2": 0.3, "1": 0.5}[norm]
    attack = pgd_for(norm, steps=10, restarts=2, early_stop=False)
    seen: list[torch.Tensor] = []
    hook = model[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    attack.run(model, x, y, eps, lo, hi, torch.Generator().manual_seed(1))
    hook.remove()
    for batch in seen[2:]:  # after the two clean forward passes: every iterate of every restart
        assert torch.all(batch >= 0) and torch.all(batch <= 1)
        assert torch.all(_pnorm(batch - x, norm) <= eps * (1 + 1e-5) + 1e-6)


@pytest.mark.parametrize("norm", NORMS)
def test_linear_model_attack_meets_the_analytic_radius(norm: str) -> None:
    """For z = Wx + b the minimal flip distance of class y vs j is margin / ||w_y - w_j||_dual."""
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    x = torch.full((16, 8), 0.5) + 0.05 * torch.randn(16, 8)
    logits = model(x)
    y = logits.argmax(1)
    w = model.weight.detach()
    diff = (w[y] - w[1 - y]).abs()
    margin = (logits.gather(1, y[:, None]) - logits.gather(1, (1 - y)[:, None])).squeeze(1).detach()
    radius = margin / diff.norm(p=_dual(norm), dim=1)
    lo, hi = torch.full((1, 8), -100.0), torch.full((1, 8), 100.0)  # domain far away: the ball decides
    attack = pgd_for(norm, steps=100, restarts=1)
    gen = torch.Generator().manual_seed(0)
    for i in range(len(x)):
        below = attack.run(model, x[i : i + 1], y[i : i + 1], float(radius[i]) * 0.98, lo, hi, gen)
        beyond = attack.run(model, x[i : i + 1], y[i : i + 1], float(radius[i]) * 1.05, lo, hi, gen)
        assert not bool(below.success[0])
        assert bool(beyond.success[0]), f"sample {i}: no counterexample just beyond the radius"


def test_early_stop_keeps_the_first_counterexample_and_clean_misses_are_returned() -> None:
    model = nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
        model.bias.zero_()
    x = torch.tensor([[0.6, 0.4], [0.2, 0.8]])
    y = torch.tensor([0, 0])  # the second sample is already misclassified
    result = pgd_for("inf", steps=10).run(model, x, y, 0.15, torch.zeros(1, 2), torch.ones(1, 2), torch.Generator())
    assert bool(result.success.all())
    assert torch.equal(result.x_adv[1], x[1])


def test_unknown_norm_and_loss_are_errors() -> None:
    with pytest.raises(UverifyError, match="norm"):
        pgd_for("3")
    with pytest.raises(UverifyError, match="loss"):
        pgd_for("inf", loss="hinge")


def test_the_fused_l2_step_is_the_direction_then_the_projection() -> None:
    """L2PGD.step fuses direction, step and projection into per-sample factors: the same point as the
    base class's composition of `direction` and `project`, up to float round-off; frozen samples stay."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 4, 5, generator=gen)
    noise = torch.randn(x.shape, generator=gen)
    x_adv = (x + 0.1 * noise / _pnorm(noise, "2").view(-1, 1, 1, 1)).clamp(0, 1)  # inside both balls below
    grad = torch.randn(x.shape, generator=gen)
    grad[0] = 0.0  # a zero gradient: no step, no NaN
    lo, hi = torch.zeros_like(x), torch.ones_like(x)
    frozen = (torch.arange(32) % 4 == 1).view(-1, 1, 1, 1)
    attack = L2PGD()
    for eps, alpha in ((0.3, 0.05), (0.12, 0.5)):  # the step stays inside the ball / the projection acts
        fused = attack.step(x_adv, grad, x, lo, hi, alpha, eps, frozen)
        composed = PGD.step(attack, x_adv, grad, x, lo, hi, alpha, eps, frozen)
        assert torch.allclose(fused, composed, atol=1e-6, rtol=0)
        assert torch.all(_pnorm(fused - x, "2") <= eps * (1 + 1e-5))
        still = frozen.flatten() | (torch.arange(32) == 0)
        assert torch.allclose(fused[still], x_adv[still], atol=1e-7, rtol=0)


def test_the_linf_step_clamps_to_the_ball_and_domain_box_as_the_composition_does() -> None:
    """LinfPGD.step clamps to `reach`'s box (ball ∩ domain) once: the point the base class's direction,
    step, projection and domain clip give, up to round-off in x ± eps; frozen samples stay."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(32, 1, 4, 5, generator=gen)
    lo, hi = torch.zeros_like(x), torch.ones_like(x)
    grad = torch.randn(x.shape, generator=gen)
    grad[0] = 0.0  # a zero gradient: no step
    frozen = (torch.arange(32) % 4 == 1).view(-1, 1, 1, 1)
    attack = LinfPGD()
    for eps, alpha in ((0.3, 0.05), (0.05, 0.2)):  # the step stays inside the ball / the clamp acts
        x_adv = torch.clamp(x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps, lo, hi)
        fused = attack.step(x_adv, grad, x, *attack.reach(x, lo, hi, eps), alpha, eps, frozen)
        composed = PGD.step(attack, x_adv, grad, x, lo, hi, alpha, eps, frozen)
        assert torch.allclose(fused, composed, atol=1e-6, rtol=0)
        assert torch.all((fused - x).abs() <= eps * (1 + 1e-6)) and torch.all((fused >= 0) & (fused <= 1))
        still = frozen.flatten() | (torch.arange(32) == 0)
        assert torch.equal(fused[still], x_adv[still])


@pytest.mark.parametrize("norm", NORMS)
def test_the_same_seed_gives_the_same_attack(norm: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 4))
    x, y = torch.rand(24, 6), torch.randint(0, 4, (24,))
    lo, hi = torch.zeros(1, 6), torch.ones(1, 6)
    eps = {"inf": 0.1, "2": 0.3, "1": 0.5}[norm]
    runs = [
        pgd_for(norm, steps=10, restarts=4).run(model, x, y, eps, lo, hi, torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv) and torch.equal(runs[0].margin, runs[1].margin)
