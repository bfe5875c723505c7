"""PGD attacks under the L_inf, L_2 and L_1 norms, shared by adversarial training and the verifier.

One base class owns the loop (restarts, per-sample early stop, the best point kept across restarts);
each norm supplies only its random start, its steepest-ascent direction and its projection, as in
Foolbox. Every iterate lies in the ball intersected with the input domain: the norm projects onto the
ball, then the point is clipped to the box, which for a centre inside the box only moves coordinates
toward the centre and so never leaves the ball. L2 also fuses direction and projection into one
`step` (fewer tensor ops per step, what small models' attacks are bound by); L_inf and L_1 use the
base class's composition of the two.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from uverify.errors import UverifyError


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y per sample: positive exactly when the sample is misclassified."""
    return _margin_given(logits, y, nn.functional.one_hot(y, logits.shape[1]).bool())


def _margin_given(logits: torch.Tensor, y: torch.Tensor, is_y: torch.Tensor) -> torch.Tensor:
    """`margin_loss` with the one-hot mask of y computed once per attack rather than at every step."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    return logits.masked_fill(is_y, float("-inf")).max(dim=1).values - true


def cross_entropy_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y, reduction="none")


LOSSES = {"margin": margin_loss, "ce": cross_entropy_loss}


@dataclass(frozen=True)
class AttackResult:
    x_adv: torch.Tensor  # best point found per sample (in the ball and the domain)
    margin: torch.Tensor  # margin_loss at x_adv: > 0 means the model misclassifies x_adv
    success: torch.Tensor  # bool per sample


def _flat_norm(t: torch.Tensor, p: float) -> torch.Tensor:
    return t.flatten(1).norm(p=p, dim=1).view(-1, *([1] * (t.dim() - 1)))


def _uniform_in_ball(samples: torch.Tensor, p: float, eps: float, gen: torch.Generator) -> torch.Tensor:
    """Uniform points in the L_p eps-ball from i.i.d. generalised-Gaussian samples (Gaussian for p=2,
    Laplace for p=1): their direction is uniform on the sphere, and radius u^(1/d) fills the ball."""
    direction = samples / _flat_norm(samples, p).clamp_min(1e-12)
    d = samples[0].numel()
    radius = torch.rand((len(samples),) + (1,) * (samples.dim() - 1), generator=gen) ** (1.0 / d)
    return direction * radius * eps


class PGD(ABC):
    """Projected gradient ascent on a loss of the logits, from random starts inside the ball."""

    norm: str
    dual: float  # the dual norm's order, for first-order distances to a decision boundary

    def __init__(
        self,
        steps: int = 50,
        restarts: int = 1,
        step_size: float | None = None,
        loss: str = "margin",
        early_stop: bool = True,
        random_first_start: bool = False,
    ) -> None:
        if loss not in LOSSES:
            raise UverifyError(f"attack loss {loss!r} is unknown (choose from {', '.join(LOSSES)})")
        self.steps = steps
        self.restarts = restarts
        self.relative_step = step_size if step_size is not None else 2.5 / steps
        self.loss = LOSSES[loss]
        self.early_stop = early_stop
        # Restarts start at x itself unless asked otherwise: from x, steepest ascent heads straight for
        # the nearest boundary of a locally linear model, which a random start inside the ball reaches
        # only slowly (for L2 and L1 the projection then crawls along the sphere). The first restart is
        # untargeted, the next ones target each other class in turn; restarts beyond those start at
        # random points. Madry's training asks for random starts throughout.
        self.random_first_start = random_first_start

    @abstractmethod
    def random_start(self, x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
        """A random perturbation inside the eps-ball."""

    @abstractmethod
    def direction(
        self, grad: torch.Tensor, x_adv: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> torch.Tensor:
        """The steepest-ascent direction of unit norm for this norm."""

    @abstractmethod
    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """The closest perturbation inside the eps-ball."""

    def reach(
        self, x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The bounds `step` is given for a restart from x: the domain's (a norm whose ball is a box
        narrows them to the ball ∩ domain once, instead of projecting at every step)."""
        return lower, upper

    def step(
        self,
        x_adv: torch.Tensor,
        grad: torch.Tensor,
        x: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
        alpha: float,
        eps: float,
        frozen: torch.Tensor | None,
    ) -> torch.Tensor:
        """The next iterate: `alpha` along `direction`, projected onto the ball around x, clipped to
        `reach`'s bounds; samples where `frozen` (broadcast per sample) is set stay where they are."""
        step_dir = self.direction(grad, x_adv, lower, upper)
        if frozen is not None:
            step_dir = step_dir * ~frozen
        moved = x_adv + alpha * step_dir
        return torch.clamp(x + self.project(moved - x, eps), lower, upper)

    def run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        lower: torch.Tensor,
        upper: torch.Tensor,
        generator: torch.Generator,
    ) -> AttackResult:
        """Attack a batch; `lower`/`upper` bound the input domain (broadcast against x)."""
        was_training = model.training
        model.eval()
        try:
            return self._run(model, x.detach(), y, eps, lower, upper, generator)
        finally:
            model.train(was_training)

    def _run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        lower: torch.Tensor,
        upper: torch.Tensor,
        gen: torch.Generator,
    ) -> AttackResult:
        lower, upper = lower.expand_as(x), upper.expand_as(x)
        alpha = self.relative_step * eps
        with torch.no_grad():
            clean_logits = model(x)
            best_x = x.clone()
            best_margin = margin_loss(clean_logits, y)
            best_loss = self.loss(clean_logits, y) if self.loss is not margin_loss else best_margin.clone()
        ranked = self._nearest_classes(model, x, y) if self.restarts > 1 and self.loss is margin_loss else None
        scored_by_margin = self.loss is margin_loss  # comparable across restarts, targeted or not
        for restart in range(self.restarts):
            active = torch.ones(len(x), dtype=torch.bool) if not self.early_stop else best_margin <= 0
            if not active.any():
                break
            idx = active.nonzero().squeeze(1)
            xa, ya, lo, hi = x[idx], y[idx], lower[idx], upper[idx]
            is_y = nn.functional.one_hot(ya, clean_logits.shape[1]).bool()
            # The margin losses are z_j - z_y for one class j (the leading other class, or the target):
            # their gradient with respect to the logits is e_j - e_y, so they are differentiated as the
            # linear form <logits, e_j - e_y> with the weights built without autograd. The gradient is
            # the same to the bit and backward runs two ops instead of a dozen (max, gather, masked
            # fill), which on small models is a good part of a step.
            weights: torch.Tensor | None = None
            minus_y = torch.zeros(is_y.shape, dtype=clean_logits.dtype).masked_fill_(is_y, -1.0)
            if restart > 0 and ranked is not None and ranked.shape[1] > 1:
                # multi-targeted restarts (Gowal et al., 2019): the untargeted margin follows whichever
                # class leads now, which need not be the one nearest in the norm; aim at each in turn,
                # the nearest first
                target = ranked[idx, (restart - 1) % ranked.shape[1]]
                weights = minus_y.scatter(1, target[:, None], 1.0)  # z_target - z_y
            targets = ranked.shape[1] if ranked is not None else 0
            fresh = restart <= targets  # the untargeted pass and one pass per target start at x
            start = self.random_start(xa, eps, gen) if self.random_first_start or not fresh else 0.0
            x_adv = torch.clamp(xa + start, lo, hi)  # = max(min(., hi), lo): lo <= hi
            lo, hi = self.reach(xa, lo, hi, eps)  # what `step` clamps to
            # this restart's best points, kept locally and written back once: indexing the whole batch's
            # tensors at every step costs more than the tiny models' forward passes
            b_x, b_margin, b_loss = best_x[idx], best_margin[idx], best_loss[idx]
            row = (-1, *([1] * (x.dim() - 1)))
            true_class = ya[:, None]
            ones = torch.ones(len(idx), dtype=clean_logits.dtype)  # autograd's seed for a per-sample loss
            for step in range(self.steps + 1):
                last = step == self.steps  # the last point is only scored: no graph for a gradient never taken
                if not last:
                    x_adv.requires_grad_(True)
                with torch.no_grad() if last else contextlib.nullcontext():
                    logits = model(x_adv)
                    loss = None if scored_by_margin else self.loss(logits, ya)  # the score, and what ascends
                with torch.no_grad():
                    # margin_loss, op for op (_margin_given), keeping the leading class for the weights
                    other = logits.masked_fill(is_y, float("-inf")).max(dim=1)
                    margin = other.values - logits.gather(1, true_class).squeeze(1)
                    if scored_by_margin:
                        # the score is the margin (b_loss is b_margin): a success beats a failure by its
                        # sign alone, so one comparison is the rule below, op for op fewer per step
                        better = margin > b_margin
                    else:
                        assert loss is not None
                        score = loss.detach()
                        if self.early_stop:  # a success beats a failure, whatever the loss says
                            won, had = margin > 0, b_margin > 0
                            better = (won & ~had) | ((won == had) & (score > b_loss))
                        else:
                            better = score > b_loss
                        b_loss = torch.where(better, score, b_loss)
                    b_x = torch.where(better.view(row), x_adv.detach(), b_x)
                    b_margin = torch.where(better, margin, b_margin)
                    done = b_margin > 0
                if last or (self.early_stop and bool(done.all())):
                    break
                if loss is not None:
                    (grad,) = torch.autograd.grad(loss, x_adv, ones)
                else:  # z_j - z_y: the leading other class now, or this restart's target
                    leading = weights if weights is not None else minus_y.scatter(1, other.indices[:, None], 1.0)
                    (grad,) = torch.autograd.grad(logits, x_adv, leading)
                with torch.no_grad():
                    frozen = done.view(row) if self.early_stop else None
                    x_adv = self.step(x_adv, grad, xa, lo, hi, alpha, eps, frozen)
            best_x[idx], best_margin[idx], best_loss[idx] = b_x, b_margin, b_margin if scored_by_margin else b_loss
        return AttackResult(best_x.detach(), best_margin, best_margin > 0)

    def _nearest_classes(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Other classes ordered by the first-order (DeepFool) distance to their decision boundary,
        margin_j / ||grad margin_j||_dual, nearest first: one backward pass per class."""
        x = x.clone().requires_grad_(True)
        logits = model(x)
        classes = logits.shape[1]
        grads = torch.stack(
            [torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c < classes - 1)[0] for c in range(classes)], 1
        ).flatten(2)  # (N, C, d)
        with torch.no_grad():
            rows = torch.arange(len(x))
            gap = logits[rows, y][:, None] - logits  # (N, C) margins z_y - z_j
            slope = (grads[rows, y][:, None, :] - grads).norm(p=self.dual, dim=2).clamp_min(1e-12)
            distance = (gap / slope).masked_fill(nn.functional.one_hot(y, classes).bool(), float("inf"))
            return distance.argsort(dim=1)[:, :-1]


class LinfPGD(PGD):
    norm = "inf"
    dual = 1.0

    def random_start(self, x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
        return (torch.rand(x.shape, generator=gen) * 2 - 1) * eps

    def direction(
        self, grad: torch.Tensor, x_adv: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> torch.Tensor:
        return grad.sign()

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        return delta.clamp(-eps, eps)

    def reach(
        self, x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.maximum(lower, x - eps), torch.minimum(upper, x + eps)

    def step(
        self,
        x_adv: torch.Tensor,
        grad: torch.Tensor,
        x: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
        alpha: float,
        eps: float,
        frozen: torch.Tensor | None,
    ) -> torch.Tensor:
        """The L∞ ball ∩ the domain is a box (`reach`): projecting onto it is one clamp, so a step is
        sign, add, clamp (three ops where the composition takes seven; on small models a step is bound by
        the number of tensor ops). Equal to the composition up to float round-off in x ± eps."""
        step_dir = grad.sign()
        if frozen is not None:
            step_dir = step_dir * ~frozen
        return torch.clamp(torch.add(x_adv, step_dir, alpha=alpha), lower, upper)


class L2PGD(PGD):
    norm = "2"
    dual = 2.0

    def random_start(self, x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
        return _uniform_in_ball(torch.randn(x.shape, generator=gen), 2, eps, gen)

    def direction(
        self, grad: torch.Tensor, x_adv: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> torch.Tensor:
        return grad / _flat_norm(grad, 2).clamp_min(1e-12)

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        return delta * (eps / _flat_norm(delta, 2).clamp_min(1e-12)).clamp(max=1.0)

    def step(
        self,
        x_adv: torch.Tensor,
        grad: torch.Tensor,
        x: torch.Tensor,
        lower: torch.Tensor,
        upper: torch.Tensor,
        alpha: float,
        eps: float,
        frozen: torch.Tensor | None,
    ) -> torch.Tensor:
        """`direction` and `project` fused: the step length and the projection's factor are per-sample
        scalars, so each scales the whole perturbation in one fused multiply-divide-add. On small models
        the L2 step is bound by the number of tensor ops, not by arithmetic: this is half as many."""
        dims = tuple(range(1, grad.dim()))
        length = torch.linalg.vector_norm(grad, 2, dim=dims, keepdim=True).clamp_min(1e-12)
        if frozen is not None:
            length = length.masked_fill(frozen, math.inf)  # a step of alpha * grad / inf = 0
        delta = torch.addcdiv(x_adv - x, grad, length, value=alpha)
        # min(1, eps / ||delta||) = eps / max(||delta||, eps): the projection onto the ball
        reach = torch.linalg.vector_norm(delta, 2, dim=dims, keepdim=True).clamp_min(eps)
        return torch.clamp(torch.addcdiv(x, delta, reach, value=eps), lower, upper)


class L1PGD(PGD):
    """Sparse L1 steps (Tramer & Boneh 2019): move only the coordinates with the largest gradients."""

    norm = "1"
    dual = float("inf")
    sparsity_quantile = 0.95  # move the top 5% of coordinates (at least one) per step

    def random_start(self, x: torch.Tensor, eps: float, gen: torch.Generator) -> torch.Tensor:
        u = torch.rand(x.shape, generator=gen).clamp(1e-12, 1 - 1e-12)
        laplace = torch.sign(u - 0.5) * -torch.log1p(-2 * (u - 0.5).abs())
        return _uniform_in_ball(laplace, 1, eps, gen)

    def direction(
        self, grad: torch.Tensor, x_adv: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor
    ) -> torch.Tensor:
        # coordinates already at the domain's edge and pushed outward cannot move: skip them
        blocked = ((x_adv <= lower) & (grad < 0)) | ((x_adv >= upper) & (grad > 0))
        g = grad.masked_fill(blocked, 0.0).flatten(1)
        k = max(1, round((1 - self.sparsity_quantile) * g.shape[1]))
        top = g.abs().topk(k, dim=1).indices
        e = torch.zeros_like(g).scatter(1, top, g.gather(1, top).sign())
        e = e / e.abs().sum(dim=1, keepdim=True).clamp_min(1e-12)
        return e.view_as(grad)

    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        return project_l1_ball(delta, eps)


def project_l1_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact Euclidean projection of each sample onto {v : ||v||_1 <= eps} (Duchi et al., 2008)."""
    flat = delta.flatten(1)
    inside = flat.abs().sum(dim=1) <= eps
    if bool(inside.all()):
        return delta
    mag = flat.abs()
    sorted_mag, _ = mag.sort(dim=1, descending=True)
    cumsum = sorted_mag.cumsum(dim=1)
    ks = torch.arange(1, flat.shape[1] + 1, dtype=flat.dtype)
    cond = sorted_mag - (cumsum - eps) / ks > 0
    rho = cond.to(torch.int64).cumsum(dim=1).argmax(dim=1)  # last index where cond holds
    theta = (cumsum.gather(1, rho[:, None]) - eps) / (rho[:, None] + 1).to(flat.dtype)
    projected = flat.sign() * (mag - theta).clamp_min(0.0)
    out = torch.where(inside[:, None], flat, projected)
    return out.view_as(delta)


ATTACKS: dict[str, type[PGD]] = {"inf": LinfPGD, "2": L2PGD, "1": L1PGD}


def pgd_for(norm: str, **kwargs: object) -> PGD:
    """The PGD attack for a norm given as in the spec: 'inf', '2' or '1'."""
    if norm not in ATTACKS:
        raise UverifyError(f"norm {norm!r} is not supported (choose from inf, 2, 1)")
    return ATTACKS[norm](**kwargs)  # type: ignore[arg-type]
