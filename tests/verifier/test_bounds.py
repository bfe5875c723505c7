"""Margin lower bounds: sound on sampled points, exact where they must be, clear errors otherwise."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from uverify.errors import UverifyError
from uverify.verifier.bounds import (
    METHODS,
    NORMS,
    Bounder,
    BoundsError,
    margin_lower_bounds,
    other_classes,
    spec_matrix,
    verified,
)

NUM_CLASSES = 3
SAMPLES = 2000
ALPHA_ITERATIONS = 8
# Radius per norm: large enough that many ReLUs are unstable, so relaxations are exercised.
EPSILON = {"inf": 0.1, "2": 0.4, "1": 0.8}


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES)).eval()


def _cnn() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, NUM_CLASSES),
    ).eval()


MODELS = {"mlp": (_mlp, (6,)), "cnn": (_cnn, (1, 6, 6))}


def _true_margins(model: nn.Module, points: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(batch, samples, K-1) margins z_y − z_j in `other_classes` order."""
    batch, samples = points.shape[:2]
    with torch.no_grad():
        logits = model(points.reshape(batch * samples, *points.shape[2:])).reshape(batch, samples, -1)
    others = other_classes(y, logits.shape[-1])
    own = logits.gather(2, y.view(batch, 1, 1).expand(batch, samples, 1))
    return own - logits.gather(2, others.view(batch, 1, -1).expand(batch, samples, -1))


def _sample(x: torch.Tensor, eps: float, norm: str, lower: float, upper: float) -> torch.Tensor:
    """(batch, SAMPLES, *shape) points of the ball (∩ [lower, upper] for inf), with extreme points."""
    gen = torch.Generator().manual_seed(7)
    batch, dim = x.shape[0], x[0].numel()
    center = x.reshape(batch, 1, dim)
    quarter = SAMPLES // 4
    if norm == "inf":
        offsets = torch.rand(batch, SAMPLES, dim, generator=gen) * 2 - 1
        offsets[:, :quarter] = offsets[:, :quarter].sign()  # random vertices of the box
        points = (center + eps * offsets).clamp(lower, upper)  # vertices stay vertices of ball ∩ domain
    else:
        p = float(norm)
        if norm == "2":
            directions = torch.randn(batch, SAMPLES, dim, generator=gen)
        else:  # uniform on the L1 sphere, plus its vertices ±e_i
            signs = torch.randint(0, 2, (batch, SAMPLES, dim), generator=gen) * 2 - 1
            directions = -torch.log(torch.rand(batch, SAMPLES, dim, generator=gen)) * signs
            axes = torch.randint(0, dim, (batch, quarter), generator=gen)
            directions[:, :quarter] = nn.functional.one_hot(axes, dim) * signs[:, :quarter]
        directions = directions / directions.norm(p=p, dim=-1, keepdim=True)
        radius = torch.rand(batch, SAMPLES, 1, generator=gen) ** (1 / dim)
        radius[:, : SAMPLES // 2] = 1.0  # half on the sphere, half inside
        points = center + eps * radius * directions
    return points.reshape(batch, SAMPLES, *x.shape[1:])


@pytest.fixture(scope="module")
def bounders():
    """One Bounder per model × method, shared by the norm cases (as a real run would)."""
    return {
        (model_name, method): Bounder(make(), shape, method, alpha_iterations=ALPHA_ITERATIONS)
        for model_name, (make, shape) in MODELS.items()
        for method in METHODS
    }


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_lower_bounds_never_exceed_sampled_margins(bounders, model_name, method, norm):
    make, shape = MODELS[model_name]
    model = make()
    torch.manual_seed(3)
    x = torch.rand(4, *shape)
    with torch.no_grad():
        y = model(x).argmax(dim=1)
    y[0] = (y[0] + 1) % NUM_CLASSES  # one misclassified sample: its bound must stay ≤ 0 too
    eps = EPSILON[norm]
    lb = bounders[model_name, method].margins(x, y, eps, norm, lower=0.0, upper=1.0)
    assert lb.shape == (4, NUM_CLASSES - 1)
    true = _true_margins(model, _sample(x, eps, norm, 0.0, 1.0), y)
    worst = true.min(dim=1).values
    assert torch.all(lb <= worst + 1e-5), f"unsound by {(lb - worst).max().item():.3g}"
    assert not verified(lb)[0]
    assert torch.isfinite(lb).all()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_zero_radius_gives_the_exact_margins(bounders, model_name, method):
    make, shape = MODELS[model_name]
    model = make()
    torch.manual_seed(4)
    x = torch.rand(3, *shape)
    y = torch.tensor([0, 1, 2])
    true = _true_margins(model, x.unsqueeze(1), y)[:, 0]
    for norm in NORMS:
        lb = bounders[model_name, method].margins(x, y, 0.0, norm)
        torch.testing.assert_close(lb, true, atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", NORMS)
def test_alpha_crown_is_at_least_crown_on_a_relu_mlp(bounders, norm):
    torch.manual_seed(5)
    x = torch.rand(6, 6)
    y = torch.arange(6) % NUM_CLASSES
    crown = bounders["mlp", "CROWN"].margins(x, y, EPSILON[norm], norm)
    alpha = bounders["mlp", "alpha-CROWN"].margins(x, y, EPSILON[norm], norm)
    assert torch.all(alpha >= crown - 1e-5)


def _linear_case():
    torch.manual_seed(6)
    layer = nn.Linear(5, 4)
    model = nn.Sequential(layer)
    x = torch.rand(3, 5)
    y = torch.tensor([0, 3, 1])
    weight = layer.weight.detach().double()
    others = other_classes(y, 4)
    rows = weight[y].unsqueeze(1) - weight[others]  # (batch, K-1, features): w_y − w_j
    with torch.no_grad():
        logits = model(x).double()
    margins = logits.gather(1, y.view(-1, 1)) - logits.gather(1, others)
    return model, x, y, rows, margins


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("norm, dual", [("inf", 1.0), ("2", 2.0), ("1", math.inf)])
def test_linear_model_bounds_are_exact_with_the_dual_norm(method, norm, dual):
    model, x, y, rows, margins = _linear_case()
    eps = 0.3
    lb = margin_lower_bounds(model, x, y, eps, norm, method, num_classes=4)
    expected = margins - eps * rows.norm(p=dual, dim=-1)
    torch.testing.assert_close(lb.double(), expected, atol=1e-5, rtol=0)


def test_linear_model_inf_norm_clips_to_the_domain_exactly():
    model, x, y, rows, margins = _linear_case()
    eps, low, high = 0.3, 0.1, 0.8
    x_l = (x - eps).clamp(min=low).double()
    x_u = (x + eps).clamp(max=high).double()
    center, radius = (x_l + x_u) / 2, (x_u - x_l) / 2
    bias = model[0].bias.detach().double()
    others = other_classes(y, 4)
    offset = bias[y].unsqueeze(1) - bias[others]
    expected = torch.einsum("bkf,bf->bk", rows, center) + offset - torch.einsum("bkf,bf->bk", rows.abs(), radius)
    for method in METHODS:
        lb = margin_lower_bounds(model, x, y, eps, "inf", method, lower=low, upper=high)
        torch.testing.assert_close(lb.double(), expected, atol=1e-5, rtol=0)
        assert torch.all(lb.double() >= margins - eps * rows.norm(p=1, dim=-1) - 1e-6)


def test_domain_is_ignored_for_norms_2_and_1_because_auto_lirpa_cannot_use_it(bounders):
    """auto_LiRPA 0.3 drops x_L/x_U unless norm is inf: we bound the whole ball (a sound superset)."""
    torch.manual_seed(8)
    x = torch.rand(3, 6)
    y = torch.tensor([0, 1, 2])
    bounder = bounders["mlp", "CROWN"]
    for norm in ("2", "1"):
        plain = bounder.margins(x, y, EPSILON[norm], norm)
        clipped = bounder.margins(x, y, EPSILON[norm], norm, lower=0.0, upper=1.0)
        torch.testing.assert_close(plain, clipped, atol=0, rtol=0)
    plain = bounder.margins(x, y, 0.3, "inf")
    clipped = bounder.margins(x, y, 0.3, "inf", lower=0.0, upper=1.0)
    assert not torch.equal(plain, clipped)


def test_one_bounder_serves_batches_of_varying_size(bounders):
    bounder = bounders["cnn", "CROWN"]
    torch.manual_seed(9)
    x = torch.rand(5, 1, 6, 6)
    y = torch.tensor([0, 1, 2, 0, 1])
    whole = bounder.margins(x, y, 0.05, "inf", 0.0, 1.0)
    parts = torch.cat(
        [bounder.margins(x[:2], y[:2], 0.05, "inf", 0.0, 1.0), bounder.margins(x[2:], y[2:], 0.05, "inf", 0.0, 1.0)]
    )
    torch.testing.assert_close(whole, parts, atol=1e-5, rtol=0)
    single = bounder.margins(x[4:], y[4:], 0.05, "inf", 0.0, 1.0)
    torch.testing.assert_close(single, whole[4:], atol=1e-5, rtol=0)


def test_spec_matrix_rows_are_e_y_minus_e_j():
    y = torch.tensor([2, 0])
    c = spec_matrix(y, 3)
    expected = torch.tensor([[[-1.0, 0.0, 1.0], [0.0, -1.0, 1.0]], [[1.0, -1.0, 0.0], [1.0, 0.0, -1.0]]])
    torch.testing.assert_close(c, expected)
    assert other_classes(y, 3).tolist() == [[0, 1], [1, 2]]


def test_verified_needs_every_margin_clearly_positive():
    lb = torch.tensor([[0.1, 0.2], [0.1, 0.0], [-1.0, 2.0], [float("nan"), 1.0], [1e-6, 1.0]])
    assert verified(lb).tolist() == [True, False, False, False, False]  # 1e-6: within float32 round-off


def test_model_is_copied_frozen_and_dropout_free():
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 2))
    model.train()
    bounder = Bounder(model, (4,), "alpha-CROWN", alpha_iterations=3)
    x = torch.rand(2, 4)
    lb = bounder.margins(x, torch.tensor([0, 1]), 0.1, "inf")
    assert model.training
    assert all(p.grad is None for p in model.parameters())
    eval_model = nn.Sequential(*[m for m in model if not isinstance(m, nn.Dropout)]).eval()
    again = Bounder(eval_model, (4,), "alpha-CROWN", alpha_iterations=3).margins(x, torch.tensor([0, 1]), 0.1, "inf")
    torch.testing.assert_close(lb, again)


def test_alpha_crown_runs_under_no_grad(bounders):
    with torch.no_grad():
        lb = bounders["mlp", "alpha-CROWN"].margins(torch.rand(2, 6), torch.tensor([0, 1]), 0.1, "inf")
    assert lb.shape == (2, 2)


class _StackEnsemble(nn.Module):
    """Mean of logits via stack: auto_LiRPA 0.3's CROWN fails on the Stack/ReduceMean pair."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 3)
        self.b = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.relu(self.a(x)), torch.relu(self.b(x))]).mean(0)


def test_unsupported_model_and_method_raise_a_one_line_uverify_error():
    bounder = Bounder(_StackEnsemble(), (4,), "CROWN")
    x, y = torch.rand(2, 4), torch.tensor([0, 1])
    for _ in range(2):  # the failed BoundedModule is dropped: the second call fails the same clean way
        with pytest.raises(BoundsError, match="auto_LiRPA cannot bound this model with CROWN") as info:
            bounder.margins(x, y, 0.1, "inf")
        assert "\n" not in str(info.value)
    assert Bounder(_StackEnsemble(), (4,), "IBP").margins(x, y, 0.1, "inf").shape == (2, 2)


class _Standardise(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * 2.0


def test_lp_norms_refuse_ops_that_auto_lirpa_would_bound_unsoundly():
    """auto_LiRPA 0.3 turns an L2/L1 ball into the box [x, x] at a Sub/Mul before the first layer."""
    torch.manual_seed(11)
    model = nn.Sequential(_Standardise(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    bounder = Bounder(model, (4,), "IBP")
    x, y = torch.rand(2, 4), torch.tensor([0, 1])
    for norm in ("2", "1"):
        with pytest.raises(BoundsError, match=r"cannot bound a norm-.* ball through the"):
            bounder.margins(x, y, 0.1, norm)
    lb = bounder.margins(x, y, 0.1, "inf")
    true = _true_margins(model, _sample(x, 0.1, "inf", -math.inf, math.inf), y).min(dim=1).values
    assert torch.all(lb <= true + 1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda b, x, y: Bounder(_mlp(), (6,), "beta-CROWN"), "unknown bound method"),
        (lambda b, x, y: b.margins(x, y, 0.1, "3"), "unknown norm"),
        (lambda b, x, y: b.margins(x, y, -0.1, "inf"), "epsilon must be finite and non-negative"),
        (lambda b, x, y: b.margins(x, y, float("nan"), "inf"), "epsilon must be finite"),
        (lambda b, x, y: b.margins(x[:, :5], y, 0.1, "inf"), "x must have shape"),
        (lambda b, x, y: b.margins(x, torch.tensor([0, 3]), 0.1, "inf"), "labels must lie in"),
        (lambda b, x, y: b.margins(x, y.float(), 0.1, "inf"), "integer labels"),
        (lambda b, x, y: b.margins(x + 2.0, y, 0.1, "inf", 0.0, 1.0), "outside the input domain"),
        (lambda b, x, y: b.margins(x, y, 0.1, "inf", torch.zeros(5)), "does not fit"),
        (lambda b, x, y: b.margins(x * float("nan"), y, 0.1, "inf"), "NaN or infinite"),
        (lambda b, x, y: Bounder(_mlp(), (6,), "CROWN", num_classes=4), "num_classes is 4"),
        (lambda b, x, y: Bounder(_mlp(), (5,), "CROWN"), "does not run on inputs of shape"),
    ],
)
def test_bad_input_raises_uverify_error(bounders, call, message):
    x, y = torch.rand(2, 6), torch.tensor([0, 1])
    with pytest.raises(UverifyError, match=message):
        call(bounders["mlp", "CROWN"], x, y)


def test_method_and_norm_names_are_forgiving_about_case_and_spelling():
    model, x, y, _, _ = _linear_case()
    a = margin_lower_bounds(model, x, y, 0.1, "Linf", "crown")
    b = margin_lower_bounds(model, x, y, 0.1, math.inf, "CROWN")
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_alpha_crown_bounds_only_unstable_neurons_and_gets_the_dense_bounds(model_name):
    """lirpa_compat lets alpha-CROWN with shared alpha re-bound only the unstable neurons of each layer
    (a sparse C, as CROWN's pass does): the margins are those auto_LiRPA's dense path gives, up to
    float32 round-off, and never below CROWN's."""
    make, shape = MODELS[model_name]
    torch.manual_seed(7)
    x = torch.rand(5, *shape)
    y = torch.arange(5) % NUM_CLASSES
    eps = 0.05  # some neurons stable, some not: the sparse and the dense C differ
    sparse = Bounder(make(), shape, "alpha-CROWN", alpha_iterations=ALPHA_ITERATIONS)
    bounded, _ = sparse._bounded(len(x))
    assert getattr(bounded, "__uverify_sparse_shared_alpha__", False)
    got = sparse.margins(x, y, eps, "inf", 0.0, 1.0)
    shared = [n for n in bounded._modules.values() if isinstance(getattr(n, "alpha", None), dict) and n.alpha]
    assert any(a.size(1) == 1 for n in shared for a in n.alpha.values())  # intermediate layers share
    dense = Bounder(make(), shape, "alpha-CROWN", alpha_iterations=ALPHA_ITERATIONS)
    plain, _ = dense._bounded(len(x))
    del plain.__dict__["check_optimized_variable_sparsity"]  # auto_LiRPA's own rule: dense every iteration
    expected = dense.margins(x, y, eps, "inf", 0.0, 1.0)
    crown = Bounder(make(), shape, "CROWN").margins(x, y, eps, "inf", 0.0, 1.0)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert torch.all(got >= crown - 1e-5)


def test_trace_batch_traces_the_batch_size_that_will_be_bounded_once():
    model, shape = _mlp(), (6,)
    bounder = Bounder(model, shape, "CROWN", trace_batch=4)
    assert list(bounder._cache) == [4]
    bounder.margins(torch.rand(4, 6), torch.arange(4) % NUM_CLASSES, 0.01)
    assert list(bounder._cache) == [4]  # no second trace
    with pytest.raises(BoundsError, match="trace_batch"):
        Bounder(model, shape, "CROWN", trace_batch=0)
