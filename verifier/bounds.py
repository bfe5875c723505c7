"""Certified lower bounds on the classification margins z_y − z_j (j ≠ y), through auto_LiRPA.

The margins are bounded directly with a specification matrix C (row j: e_y − e_j), which is tighter
than bounding the logits and subtracting. A sample is verified when every margin's lower bound is
positive. Margin columns are ordered by j ascending with j = y left out; `other_classes` gives the
mapping.

Soundness notes on auto_LiRPA 0.3 (what this module does about each):

* Input domain. `PerturbationLpNorm` honours `x_L`/`x_U` only for norm inf (`init` and
  `concretize` ignore them for other norms). For norm inf we bound the box ball ∩ domain; for norms 2
  and 1 we bound the whole ball, a superset of ball ∩ domain, so the bound stays sound, only looser.
* Lp balls through the first layer. For norms 2 and 1, IBP keeps the ball only while the input
  flows through ops that carry it (reshapes, BatchNorm) into a Linear or Conv layer; other ops
  (Sub, Div, Add, ReLU, … on the raw input) silently turn it into a zero-width box, and IBP, CROWN-IBP
  and CROWN (which uses IBP for the first layer and to pick unstable neurons) then return unsound
  bounds. `Bounder` detects such graphs and refuses norms 2 and 1 on them with a `BoundsError`.
* auto_LiRPA failures (unsupported ops, shape bugs) surface as a one-line `BoundsError`; the
  BoundedModule that failed is discarded because a failed alpha-CROWN run leaves it half-optimised.
  `lirpa_compat.prepare` steers around the bugs we know (alpha-CROWN then optimises ReLU slopes
  only; MaxPool keeps its CROWN relaxation).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from uverify.errors import UverifyError, one_line
from uverify.kinds import BoundMethod, Norm, canonical_norm, values
from uverify.verifier import lirpa_compat

__all__ = [
    "METHODS",
    "NORMS",
    "Bounder",
    "BoundsError",
    "margin_lower_bounds",
    "other_classes",
    "parse_method",
    "parse_norm",
    "spec_matrix",
    "verified",
]

METHODS = tuple(values(BoundMethod))
NORMS = tuple(values(Norm))

# Our method names → auto_LiRPA's `compute_bounds(method=...)`.
_LIRPA_METHOD = {
    "IBP": "IBP",
    "CROWN-IBP": "CROWN-IBP",
    "CROWN": "backward",
    "alpha-CROWN": "CROWN-Optimized",
}
_METHOD_ALIASES = {m.lower(): m for m in METHODS} | {"crown-optimized": "alpha-CROWN"}
_NORM_VALUE = {"inf": math.inf, "2": 2.0, "1": 1.0}
# BoundedModules kept per batch size (see `Bounder._bounded`); a run has one or two sizes.
_MAX_CACHED = 4
# alpha-CROWN with one alpha per ReLU shared by all specifications: with per-spec alpha (and sparse
# alpha off, see lirpa_compat.WORKAROUND_BOUND_OPTS) the digits CNN needed 3.7 GB for 8 samples;
# shared, 0.9 GB. Bounds stay at least as tight as CROWN's, only the optimisation has fewer knobs.
SHARED_ALPHA = True
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class BoundsError(UverifyError):
    """auto_LiRPA cannot bound this model with this method and norm, or the request is malformed."""


def parse_method(method: str) -> str:
    """The canonical method name, or a `BoundsError` listing the choices."""
    canonical = _METHOD_ALIASES.get(str(method).strip().lower())
    if canonical is None:
        raise BoundsError(f"unknown bound method {method!r}; choose one of {', '.join(METHODS)}")
    return canonical


def parse_norm(norm: str | float) -> str:
    """'inf', '2' or '1' (also accepts math.inf, 2, 1, 'Linf', 'L2', 'L1')."""
    canonical = canonical_norm(norm)
    if canonical not in NORMS:
        raise BoundsError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    return str(canonical)


def other_classes(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(batch, num_classes-1) class indices j ≠ y, ascending: column k of the bounds is z_y − z_j[k]."""
    classes = torch.arange(num_classes, device=y.device).expand(y.shape[0], num_classes)
    return classes[classes != y.unsqueeze(1)].view(y.shape[0], num_classes - 1)


def spec_matrix(y: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """C of shape (batch, num_classes-1, num_classes) with rows e_y − e_j, so C·z are the margins."""
    eye = torch.eye(num_classes, dtype=dtype, device=y.device)
    return eye[y].unsqueeze(1) - eye[other_classes(y, num_classes)]


# Bounds are float32 arithmetic without outward rounding, and onnxruntime's float32 logits may
# differ from torch's by a few ulps: a bound this close to zero proves nothing, so it certifies nothing.
CERTIFY_MARGIN = 1e-5


def verified(lower_bounds: torch.Tensor) -> torch.Tensor:
    """Per sample: every margin's lower bound exceeds CERTIFY_MARGIN (NaN counts as not verified)."""
    return (lower_bounds > CERTIFY_MARGIN).all(dim=-1)


def _strip_dropout(module: nn.Module) -> None:
    """Dropout is the identity in eval mode; auto_LiRPA instead flips the model to train mode."""
    for name, child in list(module.named_children()):
        if isinstance(child, _DROPOUT):
            setattr(module, name, nn.Identity())
        else:
            _strip_dropout(child)


class Bounder:
    """Margin lower bounds for one model and one method, reusable across batches.

    The model is copied (frozen, eval mode, dropout removed), so later changes to `module` do not
    affect the bounds. auto_LiRPA's BoundedModule is traced lazily once per batch size and cached:
    some of its operators (MaxPool's alpha) size their state by the traced batch.

    Args:
        module: a classifier mapping (batch, *input_shape) to (batch, num_classes) logits.
        input_shape: the shape of one sample, without the batch dimension.
        method: IBP, CROWN-IBP, CROWN or alpha-CROWN.
        num_classes: checked against the model's output width when given.
        alpha_iterations, alpha_lr: alpha-CROWN's optimisation budget and learning rate.
        device: where to bound; defaults to the module's device.
        trace_batch: the batch size traced up front (to fail early on an unsupported model); the
            batch size the bounds will be asked for saves tracing twice (a trace of a 10-shard
            ensemble costs ~0.1 s).
    """

    def __init__(
        self,
        module: nn.Module,
        input_shape: Sequence[int],
        method: str = "CROWN",
        *,
        num_classes: int | None = None,
        alpha_iterations: int = 20,
        alpha_lr: float = 0.5,
        device: str | torch.device | None = None,
        trace_batch: int = 1,
    ) -> None:
        self.method = parse_method(method)
        if int(trace_batch) < 1:
            raise BoundsError(f"trace_batch must be at least 1, got {trace_batch}")
        if int(alpha_iterations) < 1:
            raise BoundsError(f"alpha_iterations must be at least 1, got {alpha_iterations}")
        if not alpha_lr > 0:
            raise BoundsError(f"alpha_lr must be positive, got {alpha_lr}")
        self.input_shape = tuple(int(d) for d in input_shape)
        if any(d < 1 for d in self.input_shape):
            raise BoundsError(f"input_shape must have positive sizes, got {self.input_shape}")
        self._lirpa = lirpa_compat.import_auto_lirpa()

        try:
            model = copy.deepcopy(module)
        except Exception as error:
            raise BoundsError(f"the model cannot be copied for bounding: {one_line(error, with_type=True)}") from error
        _strip_dropout(model)
        model.eval()
        model.requires_grad_(False)
        params = list(model.parameters()) + list(model.buffers())
        if device is None:
            device = params[0].device if params else torch.device("cpu")
        self.device = torch.device(device)
        floats = [p.dtype for p in params if p.is_floating_point()]
        self.dtype = floats[0] if floats else torch.get_default_dtype()
        model.to(self.device)
        self._model = model

        try:
            with torch.no_grad():
                out = model(torch.zeros((1, *self.input_shape), dtype=self.dtype, device=self.device))
        except Exception as error:
            raise BoundsError(
                f"the model does not run on inputs of shape {self.input_shape}: {one_line(error, with_type=True)}"
            ) from error
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[1] < 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise BoundsError(f"the model must output (batch, classes≥2) logits, got {shape}")
        self.num_classes = int(out.shape[1])
        if num_classes is not None and int(num_classes) != self.num_classes:
            raise BoundsError(f"num_classes is {num_classes} but the model outputs {self.num_classes} logits")

        self._bound_opts: dict[str, Any] = copy.deepcopy(lirpa_compat.WORKAROUND_BOUND_OPTS)
        self._bound_opts["optimize_bound_args"] = {
            "iteration": int(alpha_iterations),
            "lr_alpha": float(alpha_lr),
            "use_shared_alpha": SHARED_ALPHA,
        }
        self._cache: OrderedDict[int, tuple[Any, str | None]] = OrderedDict()
        # trace now: an unsupported model fails here, not half-way through a run
        self._lp_breaker = self._bounded(int(trace_batch))[1]

    def _bounded(self, batch_size: int) -> tuple[Any, str | None]:
        """(BoundedModule traced at this batch size, first op that loses an Lp ball or None)."""
        if batch_size in self._cache:
            self._cache.move_to_end(batch_size)
            return self._cache[batch_size]
        dummy = torch.zeros((batch_size, *self.input_shape), dtype=self.dtype, device=self.device)
        try:
            with lirpa_compat.quiet():
                bounded = self._lirpa.BoundedModule(
                    self._model, dummy, bound_opts=copy.deepcopy(self._bound_opts), device=self.device
                )
        except Exception as error:
            raise BoundsError(f"auto_LiRPA cannot convert this model: {one_line(error, with_type=True)}") from error
        lirpa_compat.prepare(bounded)
        entry = (bounded, _lp_breaking_op(bounded))
        self._cache[batch_size] = entry
        while len(self._cache) > _MAX_CACHED:
            self._cache.popitem(last=False)
        return entry

    @property
    def module(self) -> nn.Module:
        """The frozen copy that is bounded (eval mode, dropout removed); branch and bound bounds it too."""
        return self._model

    def check_norm(self, norm: str | float) -> None:
        """A `BoundsError` when a norm-2 or norm-1 ball cannot be bounded soundly through this model."""
        norm = parse_norm(norm)
        lp_breaker = self._lp_breaker
        if norm != "inf" and lp_breaker is not None:
            raise BoundsError(
                f"auto_LiRPA 0.3 cannot bound a norm-{norm} ball through the {lp_breaker} op that "
                "precedes the first Linear/Conv layer (it would be unsound); use norm inf, or move "
                "that preprocessing out of the model"
            )

    def margins(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        epsilon: float,
        norm: str | float = "inf",
        lower: torch.Tensor | float | None = None,
        upper: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """Lower bounds (batch, num_classes-1) of z_y − z_j over the ε-ball (∩ [lower, upper] for inf).

        `lower`/`upper` broadcast against x (per-feature arrays of shape input_shape, or scalars).
        """
        norm = parse_norm(norm)
        out_device = x.device if isinstance(x, torch.Tensor) else self.device
        x, y, epsilon = self._check_inputs(x, y, epsilon)
        batch = x.shape[0]
        lower_t = self._domain_bound(lower, x, "lower")
        upper_t = self._domain_bound(upper, x, "upper")
        bounded, _ = self._bounded(batch)
        if epsilon > 0:
            self.check_norm(norm)

        lirpa = self._lirpa
        if norm == "inf":
            x_l = x - epsilon
            x_u = x + epsilon
            if lower_t is not None:
                x_l = torch.maximum(x_l, lower_t)
            if upper_t is not None:
                x_u = torch.minimum(x_u, upper_t)
            empty = (x_l > x_u).reshape(batch, -1).any(dim=1)
            if bool(empty.any()):
                index = int(empty.nonzero()[0, 0])
                raise BoundsError(
                    f"sample {index} lies more than epsilon={epsilon} outside the input domain: "
                    "the ball ∩ domain is empty"
                )
            make_ptb = lambda: lirpa.PerturbationLpNorm(norm=math.inf, eps=epsilon, x_L=x_l, x_U=x_u)  # noqa: E731
        else:
            # x_L/x_U are ignored by auto_LiRPA 0.3 for norms 2 and 1: bound the whole ball.
            value = _NORM_VALUE[norm]
            make_ptb = lambda: lirpa.PerturbationLpNorm(norm=value, eps=epsilon)  # noqa: E731

        spec = spec_matrix(y, self.num_classes, dtype=self.dtype)
        grad = torch.enable_grad() if self.method == "alpha-CROWN" else torch.no_grad()
        try:
            with lirpa_compat.quiet(), grad:
                bounded_x = lirpa.BoundedTensor(x, make_ptb())
                lb, _ = bounded.compute_bounds(
                    x=(bounded_x,), C=spec, method=_LIRPA_METHOD[self.method], bound_upper=False
                )
        except Exception as error:
            self._cache.pop(batch, None)  # its internal state may be half-updated
            raise BoundsError(
                f"auto_LiRPA cannot bound this model with {self.method} for norm {norm}: "
                f"{one_line(error, with_type=True)}"
            ) from error
        if not isinstance(lb, torch.Tensor) or tuple(lb.shape) != (batch, self.num_classes - 1):
            self._cache.pop(batch, None)
            shape = tuple(lb.shape) if isinstance(lb, torch.Tensor) else type(lb).__name__
            raise BoundsError(f"auto_LiRPA returned margin bounds of shape {shape} with {self.method}")
        lb = lb.detach()
        if bool(torch.isnan(lb).any()):
            raise BoundsError(f"auto_LiRPA returned NaN margin bounds with {self.method} for norm {norm}")
        return lb.to(out_device)

    def _check_inputs(
        self, x: torch.Tensor, y: torch.Tensor, epsilon: float
    ) -> tuple[torch.Tensor, torch.Tensor, float]:
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise BoundsError("x and y must be torch tensors")
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape or x.shape[0] < 1:
            raise BoundsError(
                f"x must have shape (batch, {', '.join(map(str, self.input_shape))}), got {tuple(x.shape)}"
            )
        if y.shape != (x.shape[0],) or y.is_floating_point() or y.is_complex():
            raise BoundsError(f"y must be {x.shape[0]} integer labels, got {y.dtype} of shape {tuple(y.shape)}")
        if bool((y < 0).any()) or bool((y >= self.num_classes).any()):
            raise BoundsError(f"labels must lie in [0, {self.num_classes}), got {y.tolist()}")
        try:
            epsilon = float(epsilon)
        except (TypeError, ValueError):
            raise BoundsError(f"epsilon must be a number, got {epsilon!r}") from None
        if not math.isfinite(epsilon) or epsilon < 0:
            raise BoundsError(f"epsilon must be finite and non-negative, got {epsilon}")
        x = x.detach().to(device=self.device, dtype=self.dtype)
        if not bool(torch.isfinite(x).all()):
            raise BoundsError("x contains NaN or infinite values")
        return x, y.detach().to(device=self.device, dtype=torch.long), epsilon

    def _domain_bound(self, bound: torch.Tensor | float | None, x: torch.Tensor, name: str) -> torch.Tensor | None:
        if bound is None:
            return None
        try:
            tensor = torch.as_tensor(bound, dtype=self.dtype, device=self.device)
            return torch.broadcast_to(tensor, x.shape)
        except (RuntimeError, TypeError, ValueError) as error:
            raise BoundsError(
                f"the domain's {name} bound does not fit inputs of shape {tuple(x.shape)}: "
                f"{one_line(error, with_type=True)}"
            ) from error


def _lp_breaking_op(bounded: Any) -> str | None:
    """The first op on the way from the input to a Linear/Conv layer that drops an Lp ball, if any.

    auto_LiRPA 0.3 represents an Lp ball in IBP as an Interval carrying the perturbation; reshapes
    and BatchNorm carry it along and Linear/Conv consume it correctly, but any other op reads it as the
    zero-width box [x, x] (e.g. BoundSub returns `x - c, x - c`), which is unsound.
    """
    from auto_LiRPA import operators as ops

    # BatchNorm hands norm 2 on as a scaled ball (norm 1 as a sound box): walk on past it.
    carry = (
        ops.BoundReshape,
        ops.BoundFlatten,
        ops.BoundUnsqueeze,
        ops.BoundSqueeze,
        ops.BoundIdentity,
        ops.BoundBatchNormalization,
    )
    consume = (ops.BoundLinear, ops.BoundConv)
    nodes = {name: bounded[name] for name in bounded._modules}
    frontier = [
        node
        for node in nodes.values()
        if isinstance(node, ops.BoundInput) and not isinstance(node, (ops.BoundParams, ops.BoundBuffers))
    ]
    seen: set[str] = set()
    while frontier:
        node = frontier.pop()
        for name in node.output_name:
            user = nodes[name]
            if isinstance(user, ops.BoundShape) or name in seen:
                continue  # Shape reads sizes, not values
            seen.add(name)
            data_input = bool(user.inputs) and user.inputs[0] is node
            if data_input and isinstance(user, consume):
                continue
            if data_input and isinstance(user, carry):
                frontier.append(user)
                continue
            return type(user).__name__.removeprefix("Bound") or type(user).__name__
    return None


def margin_lower_bounds(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    norm: str | float = "inf",
    method: str = "CROWN",
    lower: torch.Tensor | float | None = None,
    upper: torch.Tensor | float | None = None,
    num_classes: int | None = None,
    *,
    alpha_iterations: int = 20,
) -> torch.Tensor:
    """One-shot `Bounder(...).margins(...)`; build a `Bounder` to bound many batches of one model."""
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        raise BoundsError("x must be a tensor of shape (batch, *input_shape)")
    bounder = Bounder(module, tuple(x.shape[1:]), method, num_classes=num_classes, alpha_iterations=alpha_iterations)
    return bounder.margins(x, y, epsilon, norm, lower, upper)
