"""auto_LiRPA driven for branch and bound: many sub-domains of one property bounded in one batch.

The only BaB module that calls auto_LiRPA. Two kinds of sub-domain:

* sub-boxes of the input (input splitting): CROWN over each box, with the linear lower bound's input
  coefficients (the gradient that the branching heuristic and the falsifier use);
* ReLU splits of one input region (ReLU splitting, β-CROWN): each domain fixes some neurons active
  (z >= 0) or inactive (z <= 0). Pass A is CROWN with the domain's pre-activation bounds as
  auto_LiRPA `reference_bounds` (every layer recomputed, then intersected with the domain's bounds, so a
  split also tightens the layers after it) and the parent's β in the split constraints. Pass B optimises
  α and β (auto_LiRPA's `enable_beta_crown`, one Lagrange multiplier β >= 0 per split, sign +1 for
  active, -1 for inactive) over the final layer with pass A's intermediate bounds fixed. Both passes
  give sound lower bounds for every β >= 0; the domain keeps the larger.

Soundness notes on auto_LiRPA 0.3 (what this module does about each):

* `check_IBP_first_linear` returns the first Linear/Conv layer's IBP bounds before `reference_bounds`
  are applied, so a split in the first layer would be lost: those layers' bounds go in
  `intermediate_layer_bounds` (fixed; the input region never changes under ReLU splits).
* A split is encoded in `sparse_beta_loc` / `sparse_beta_sign`; `get_optimized_bounds` indexes the
  betas by position among the ReLUs, so every ReLU gets a (padded, sign 0) β even without splits.
* `get_optimized_bounds` prints ("all verified at ...", "Early stop ...") to stdout: redirected.
* A domain whose recomputed pre-activation bounds cross (lower > upper + `INFEASIBLE_MARGIN`) holds no
  point: both are sound bounds over it. It is reported infeasible and never bounded further.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from uverify.errors import one_line
from uverify.verifier import lirpa_compat
from uverify.verifier.bounds import CERTIFY_MARGIN, Bounder, BoundsError, parse_norm

# crossing pre-activation bounds prove a domain empty only beyond float32 round-off
INFEASIBLE_MARGIN = CERTIFY_MARGIN
_NORM_VALUE = {"inf": math.inf, "2": 2.0, "1": 1.0}
_MAX_CACHED = 10  # padded batch sizes 1, 2, 4, ..., 512: a run never retraces


@dataclass(frozen=True)
class Region:
    """The input set of one property: a box (norm inf; lower/upper) or an L_p ball (centre, radius)
    whose points the falsifier also keeps inside the domain box [lower, upper]."""

    centre: torch.Tensor  # one sample, input_shape
    lower: torch.Tensor  # input_shape: the box (inf) or the domain (2, 1)
    upper: torch.Tensor
    norm: str = "inf"
    epsilon: float = 0.0  # the ball's radius (norms 2 and 1 only)

    @staticmethod
    def box(lower: torch.Tensor, upper: torch.Tensor) -> Region:
        return Region((lower + upper) / 2, lower, upper, "inf", float((upper - lower).max()) / 2)


@dataclass(frozen=True)
class Layer:
    """One ReLU of the graph, as BaB sees it: its pre-activation node and that node's bias."""

    relu: str  # the BoundRelu's name
    pre: str  # its input node's name
    shape: tuple[int, ...]  # per sample
    size: int
    fixed: bool  # first Linear/Conv on the input: bounds passed as intermediate_layer_bounds
    bias: torch.Tensor  # (size,) the pre-activation layer's bias (zeros when it has none), for BaBSR


@dataclass
class BoxBounds:
    lower: torch.Tensor  # (n, rows) lower bounds of C y (d not subtracted)
    coef: torch.Tensor  # (n, rows, inputs) coefficients of the linear lower bound in the input
    bias: torch.Tensor  # (n, rows)


@dataclass
class ReluBounds:
    lower: torch.Tensor  # (n, rows) lower bounds of C y
    pre_lower: list[torch.Tensor]  # per layer (n, size): the domains' pre-activation bounds
    pre_upper: list[torch.Tensor]
    relu_coef: list[torch.Tensor]  # per layer (n, rows, size): pass A's coefficients of each ReLU output
    coef: torch.Tensor  # (n, rows, inputs) pass A's coefficients in the input
    bias: torch.Tensor  # (n, rows)
    beta: list[torch.Tensor]  # per layer (n, size): the optimised multipliers (0 where no split)
    infeasible: torch.Tensor  # (n,) bool


class DomainBounder:
    """Lower bounds of C y over batches of sub-domains of one model, through auto_LiRPA (CROWN, α, β).

    BoundedModules are traced per batch size; batches are padded to powers of two so that a run traces
    a handful. `bounder` supplies the frozen model and its checks (shapes, the Lp-ball guard)."""

    def __init__(
        self,
        bounder: Bounder,
        *,
        beta_iterations: int = 8,
        alpha_iterations: int = 20,
        lr_alpha: float = 0.1,
        lr_beta: float = 0.05,
    ) -> None:
        self.bounder = bounder
        self.input_shape = bounder.input_shape
        self.inputs = int(math.prod(self.input_shape))
        self.num_classes = bounder.num_classes
        self.dtype, self.device = bounder.dtype, bounder.device
        self.beta_iterations = int(beta_iterations)
        self.alpha_iterations = int(alpha_iterations)
        self._lirpa = lirpa_compat.import_auto_lirpa()
        self._opts: dict[str, Any] = copy.deepcopy(lirpa_compat.WORKAROUND_BOUND_OPTS)
        self._row_weight: torch.Tensor | None = None
        self._stop: Callable[[torch.Tensor], Any] | None = None
        # perf_counter time at which every α/β optimisation stops at its next step (the search's deadline)
        self.deadline: float | None = None
        self.root_crown_seconds = 0.0  # the last root's CROWN pass: a first estimate of a domain's cost
        self._opts["optimize_bound_args"] = {
            "iteration": max(1, self.beta_iterations),
            "lr_alpha": float(lr_alpha),
            "lr_beta": float(lr_beta),
            "enable_beta_crown": True,
            "use_shared_alpha": True,
        }
        self._cache: OrderedDict[int, Any] = OrderedDict()
        probe = self._module(1)
        self.final = probe.final_name
        self.input_node = probe.root_name[0]
        self.layers = self._layers(probe)
        # auto_LiRPA 0.3 indexes the best betas by position among *all* optimisable activations
        # (optimized_bounds.py, `best_betas[idx]`): with a Sigmoid/Tanh/Exp among them it fails, so β is
        # used only on ReLU-only graphs; the others still split, with CROWN bounds
        from auto_LiRPA.operators import BoundRelu

        self.beta = all(isinstance(node, BoundRelu) for node in probe.optimizable_activations)
        if not self.beta:
            self._opts["optimize_bound_args"]["enable_beta_crown"] = False
            self._cache.clear()
        # the first torch.optim optimiser imports torch._dynamo (about 3 s on 2 cores): pay it here, not
        # inside the first property's time budget
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])

    # -------------------------------------------------------------------------------------- set-up
    def _reduce(self, bound: torch.Tensor) -> torch.Tensor:
        """The loss α/β ascend: the bounds of the rows still undecided (all rows when none are set)."""
        weight = self._row_weight
        if weight is None or weight.shape != bound.shape:
            return bound.sum(1, keepdim=True)
        return (bound * weight).sum(1, keepdim=True)

    def _stop_criterion(self, bound: torch.Tensor) -> Any:
        """auto_LiRPA's early stop for α/β: every domain once the deadline has passed (the bounds of any
        step are sound), else the current call's criterion, or never."""
        if self.deadline is not None and time.perf_counter() >= self.deadline:
            return torch.ones((bound.shape[0], 1), dtype=torch.bool)
        return False if self._stop is None else self._stop(bound)

    def _module(self, batch: int) -> Any:
        if batch in self._cache:
            self._cache.move_to_end(batch)
            return self._cache[batch]
        dummy = torch.zeros((batch, *self.input_shape), dtype=self.dtype, device=self.device)
        try:
            with lirpa_compat.quiet():
                bounded = self._lirpa.BoundedModule(
                    self.bounder.module, dummy, bound_opts=copy.deepcopy(self._opts), device=self.device
                )
        except Exception as error:
            raise BoundsError(f"auto_LiRPA cannot convert this model: {one_line(error, with_type=True)}") from error
        lirpa_compat.prepare(bounded)
        # set after construction, not in _opts: deep-copying a bound method would copy this whole object
        bounded.bound_opts["optimize_bound_args"]["loss_reduction_func"] = self._reduce
        bounded.bound_opts["optimize_bound_args"]["stop_criterion_func"] = self._stop_criterion
        self._cache[batch] = bounded
        while len(self._cache) > _MAX_CACHED:
            self._cache.popitem(last=False)
        return bounded

    def _layers(self, bounded: Any) -> list[Layer]:
        from auto_LiRPA.operators import BoundConv, BoundInput, BoundLinear, BoundRelu

        with torch.no_grad(), lirpa_compat.quiet():
            x = torch.zeros((1, *self.input_shape), dtype=self.dtype, device=self.device)
            bounded(x)  # records every node's output shape
        layers = []
        for node in bounded.relus:
            if not isinstance(node, BoundRelu):
                continue
            pre = node.inputs[0]
            shape = tuple(int(s) for s in pre.output_shape[1:])
            size = int(math.prod(shape))
            fixed = isinstance(pre, (BoundLinear, BoundConv)) and type(pre.inputs[0]) is BoundInput
            layers.append(Layer(node.name, pre.name, shape, size, fixed, _bias_of(pre, shape, size)))
        return layers

    def _pad(self, n: int) -> int:
        return max(1, 1 << (n - 1).bit_length())

    # ------------------------------------------------------------------------------------- perturbation
    def _bounded_input(
        self, region: Region, n: int, x_lower: torch.Tensor | None = None, x_upper: torch.Tensor | None = None
    ) -> Any:
        lirpa = self._lirpa
        if region.norm == "inf":
            lo = region.lower.expand(n, *self.input_shape) if x_lower is None else x_lower
            hi = region.upper.expand(n, *self.input_shape) if x_upper is None else x_upper
            centre = (lo + hi) / 2
            eps = float((hi - lo).max()) / 2
            ptb = self._perturbation(norm=math.inf, eps=eps, x_L=lo.contiguous(), x_U=hi.contiguous())
        else:
            centre = region.centre.expand(n, *self.input_shape)
            ptb = self._perturbation(norm=_NORM_VALUE[parse_norm(region.norm)], eps=region.epsilon)
        return lirpa.BoundedTensor(centre.contiguous(), ptb)

    def _perturbation(self, **kwargs: Any) -> Any:
        with lirpa_compat.quiet():  # norm 1's dual norm divides by zero on purpose
            return self._lirpa.PerturbationLpNorm(**kwargs)

    def _crown(self, bounded: Any, x: Any, C: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        with torch.no_grad(), lirpa_compat.quiet(), contextlib.redirect_stdout(io.StringIO()):
            lb, _, a_dict = bounded.compute_bounds(
                x=(x,), C=C, method="backward", bound_upper=False, return_A=True,
                needed_A_dict={self.final: [self.input_node]}, **kwargs,
            )  # fmt: skip
        a = a_dict[self.final][self.input_node]
        return lb.detach(), a

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except BoundsError:
            raise
        except Exception as error:
            self._cache.clear()  # a failed call may leave a module half-updated
            raise BoundsError(f"auto_LiRPA failed while {what}: {one_line(error, with_type=True)}") from error

    # ------------------------------------------------------------------------------------ input split
    def boxes(self, x_lower: torch.Tensor, x_upper: torch.Tensor, C: torch.Tensor) -> BoxBounds:
        """CROWN over each box (n, *input_shape) for the rows C (rows, outputs)."""
        n = x_lower.shape[0]
        size = self._pad(n)
        lo, hi = _pad_rows(x_lower, size), _pad_rows(x_upper, size)
        bounded = self._module(size)
        self._clear_betas(bounded)
        x = self._bounded_input(Region.box(lo[0], hi[0]), size, lo, hi)
        spec = C.to(self.dtype).expand(size, *C.shape).contiguous()
        lb, a = self._call("bounding sub-boxes", lambda: self._crown(bounded, x, spec))
        coef = a["lA"].reshape(size, C.shape[0], -1)
        return BoxBounds(lb[:n], coef[:n].detach(), a["lbias"][:n].detach())

    # ------------------------------------------------------------------------------------- ReLU split
    def root(self, region: Region, C: torch.Tensor, alpha_seconds: float = 0.0) -> ReluBounds:
        """The whole region, no splits: CROWN (`root_crown`), then alpha-CROWN (`root_alpha`)."""
        return self.root_alpha(region, C, self.root_crown(region, C), alpha_seconds)

    def root_crown(self, region: Region, C: torch.Tensor) -> ReluBounds:
        """CROWN over the whole region, no splits; its time is `root_crown_seconds`."""
        empty = [torch.full((1, layer.size), -math.inf, dtype=self.dtype) for layer in self.layers]
        full = [torch.full((1, layer.size), math.inf, dtype=self.dtype) for layer in self.layers]
        zeros = [torch.zeros((1, layer.size), dtype=torch.int8) for layer in self.layers]
        started = time.perf_counter()
        first = self.domains(region, C, empty, full, zeros, [z.to(self.dtype) for z in zeros], optimise=False)
        self.root_crown_seconds = max(time.perf_counter() - started, 1e-4)
        return first

    def root_alpha(self, region: Region, C: torch.Tensor, first: ReluBounds, alpha_seconds: float) -> ReluBounds:
        """alpha-CROWN from the root's CROWN pass `first`, every layer's bounds optimised (the tightest
        intermediate bounds a run starts from), for as many of `alpha_iterations` steps as fit in
        `alpha_seconds` by the estimate of three CROWN passes a step (none when fewer than two fit), and
        never past `alpha_seconds` (nor the deadline) by the clock."""
        zeros = [torch.zeros((1, layer.size), dtype=torch.int8) for layer in self.layers]
        crown = self.root_crown_seconds
        iterations = min(self.alpha_iterations, int(alpha_seconds / (3 * crown)))
        if iterations < 2 or not self.layers:
            return first
        saved_deadline = self.deadline
        until = time.perf_counter() + alpha_seconds
        self.deadline = until if saved_deadline is None else min(until, saved_deadline)
        bounded = self._module(1)
        self._set_betas(bounded, zeros, [z.to(self.dtype) for z in zeros])
        x = self._bounded_input(region, 1)
        spec = C.to(self.dtype).expand(1, *C.shape).contiguous()
        opts = bounded.bound_opts["optimize_bound_args"]
        saved = opts["iteration"]
        opts["iteration"] = iterations

        def optimise() -> torch.Tensor:
            try:
                with torch.enable_grad(), lirpa_compat.quiet(), contextlib.redirect_stdout(io.StringIO()):
                    lb, _ = bounded.compute_bounds(x=(x,), C=spec, method="CROWN-Optimized", bound_upper=False)
            finally:
                opts["iteration"] = saved
                self.deadline = saved_deadline
            return lb.detach()

        lb = self._call("optimising the root bounds", optimise)
        pre_lower = [torch.maximum(first.pre_lower[k], self._pre(bounded, k, 1)[0]) for k in range(len(self.layers))]
        pre_upper = [torch.minimum(first.pre_upper[k], self._pre(bounded, k, 1)[1]) for k in range(len(self.layers))]
        # a second CROWN pass from the optimised intermediate bounds: coefficients for branching and x*
        second = self.domains(region, C, pre_lower, pre_upper, zeros, [z.to(self.dtype) for z in zeros], optimise=False)
        second.lower = torch.maximum(second.lower, torch.maximum(lb, first.lower))
        return second

    def _pre(self, bounded: Any, k: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        node = bounded[self.layers[k].pre]
        return node.lower.detach().reshape(-1, self.layers[k].size)[:n], node.upper.detach().reshape(
            -1, self.layers[k].size
        )[:n]

    def domains(
        self,
        region: Region,
        C: torch.Tensor,
        pre_lower: list[torch.Tensor],
        pre_upper: list[torch.Tensor],
        splits: list[torch.Tensor],
        beta: list[torch.Tensor],
        *,
        optimise: bool = True,
        row_weight: torch.Tensor | None = None,
        done: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> ReluBounds:
        """Bound n ReLU-split domains of `region`: per layer their pre-activation bounds (n, size), the
        split state (n, size) int8 (+1 active, -1 inactive, 0 free; the bounds must already honour it) and
        β (n, size) to start from. Pass A always; pass B (α, β) when `optimise` and β iterations > 0, on
        the feasible domains that `done` does not call decided after pass A, stopping once it calls them
        all decided. `done(lower, index)`: lower bounds of C y (m, rows) of the domains `index` (m,) ->
        (m,) bool."""
        n = pre_lower[0].shape[0] if pre_lower else 1
        size = self._pad(n)
        bounded = self._module(size)
        spec = C.to(self.dtype).expand(size, *C.shape).contiguous()
        lo = [_pad_rows(t, size) for t in pre_lower]
        hi = [_pad_rows(t, size) for t in pre_upper]
        st = [_pad_rows(t, size) for t in splits]
        bt = [_pad_rows(t, size) for t in beta]
        known = [bool(torch.isfinite(lo[k]).all() and torch.isfinite(hi[k]).all()) for k in range(len(lo))]
        fixed = {
            layer.pre: [lo[k].reshape(size, *layer.shape), hi[k].reshape(size, *layer.shape)]
            for k, layer in enumerate(self.layers)
            if layer.fixed and known[k]
        }
        reference = {
            layer.pre: [lo[k].reshape(size, *layer.shape), hi[k].reshape(size, *layer.shape)]
            for k, layer in enumerate(self.layers)
            if not layer.fixed and known[k]
        }
        x = self._bounded_input(region, size)
        self._set_betas(bounded, st, bt)
        lb_a, a = self._call(
            "bounding ReLU-split domains",
            lambda: self._crown(bounded, x, spec, intermediate_layer_bounds=fixed or None, reference_bounds=reference),
        )
        new_lo, new_hi, relu_coef = [], [], []
        for k, layer in enumerate(self.layers):
            node_lo, node_hi = self._pre(bounded, k, size)
            new_lo.append(torch.maximum(node_lo, lo[k])[:n])
            new_hi.append(torch.minimum(node_hi, hi[k])[:n])
            relu = bounded[layer.relu]
            coef = getattr(relu, "lA", None)
            if isinstance(coef, torch.Tensor) and coef.numel() == C.shape[0] * size * layer.size:
                relu_coef.append(coef.detach().reshape(C.shape[0], size, layer.size).transpose(0, 1)[:n])
            else:  # not reached by the final pass (or Patches): no branching signal from this layer
                relu_coef.append(torch.zeros((n, C.shape[0], layer.size), dtype=self.dtype))
        infeasible = torch.zeros(n, dtype=torch.bool)
        for k in range(len(self.layers)):
            infeasible |= (new_lo[k] - new_hi[k] > INFEASIBLE_MARGIN).any(dim=1)
        lower = lb_a[:n]
        beta_out = [b[:n].clone() for b in bt]
        need = ~infeasible if done is None else ~infeasible & ~done(lower, torch.arange(n))
        if optimise and self.beta and self.beta_iterations > 0 and self.layers and bool(need.any()):
            pick = need.nonzero().view(-1)
            weight = None if row_weight is None else row_weight[pick]
            lb_b, beta_b = self._optimise(
                region, C, [t[pick] for t in new_lo], [t[pick] for t in new_hi], [t[:n][pick] for t in st],
                [t[pick] for t in beta_out], weight, None if done is None else lambda lb: done(lb, pick),
            )  # fmt: skip
            lower = lower.clone()
            lower[pick] = torch.maximum(lower[pick], lb_b)
            for k in range(len(self.layers)):
                beta_out[k][pick] = beta_b[k]
        coef_in = a["lA"].reshape(size, C.shape[0], -1)
        return ReluBounds(
            lower, new_lo, new_hi, relu_coef, coef_in[:n].detach(), a["lbias"][:n].detach(), beta_out, infeasible
        )

    def _optimise(
        self,
        region: Region,
        C: torch.Tensor,
        lo: list[torch.Tensor],
        hi: list[torch.Tensor],
        splits: list[torch.Tensor],
        beta: list[torch.Tensor],
        row_weight: torch.Tensor | None,
        done: Callable[[torch.Tensor], torch.Tensor] | None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Pass B on m feasible domains: α and β over the final layer, intermediate bounds fixed at pass
        A's. Returns (m, rows) lower bounds of C y and the optimised β per layer (m, size)."""
        m = lo[0].shape[0]
        size = self._pad(m)
        bounded = self._module(size)
        spec = C.to(self.dtype).expand(size, *C.shape).contiguous()
        lo, hi = [_pad_rows(t, size) for t in lo], [_pad_rows(t, size) for t in hi]
        splits, beta = [_pad_rows(t, size) for t in splits], [_pad_rows(t, size) for t in beta]
        fixed = {
            layer.pre: [lo[k].reshape(size, *layer.shape), hi[k].reshape(size, *layer.shape)]
            for k, layer in enumerate(self.layers)
        }
        x = self._bounded_input(region, size)
        locs = self._set_betas(bounded, splits, beta)
        weight = None if row_weight is None else _pad_rows(row_weight.to(self.dtype), size)

        def stop(bound: torch.Tensor) -> Any:
            """auto_LiRPA's early stop: (size, 1), True where the domain needs no more steps."""
            if done is None:
                return False
            return _pad_rows(done(bound.detach()[:m]), size).reshape(-1, 1)

        def run() -> torch.Tensor:
            self._row_weight, self._stop = weight, stop
            try:
                with torch.enable_grad(), lirpa_compat.quiet(), contextlib.redirect_stdout(io.StringIO()):
                    lb, _ = bounded.compute_bounds(
                        x=(x,), C=spec, method="CROWN-Optimized", bound_upper=False, intermediate_layer_bounds=fixed
                    )
            finally:
                self._row_weight, self._stop = None, None
            return lb.detach()

        lb = self._call("optimising α and β", run)
        out = []
        for k, layer in enumerate(self.layers):
            node = bounded[layer.relu]
            loc, sign = locs[k]
            dense = torch.zeros((size, layer.size), dtype=self.dtype)
            values = node.sparse_beta.detach().clamp_min(0) * (sign != 0)
            out.append(dense.scatter(1, loc, values)[:m])
        return lb[:m], out

    def _set_betas(
        self, bounded: Any, splits: list[torch.Tensor], beta: list[torch.Tensor]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each ReLU's split constraints as auto_LiRPA's sparse β: (loc, sign) per layer."""
        locs = []
        for k, layer in enumerate(self.layers):
            state = splits[k]
            count = int((state != 0).sum(dim=1).max()) if state.numel() else 0
            width = max(1, count)
            order = torch.argsort((state != 0).to(torch.int8), dim=1, descending=True, stable=True)[:, :width]
            sign = state.gather(1, order).to(self.dtype)
            start = beta[k].gather(1, order).clamp_min(0) * (sign != 0)
            node = bounded[layer.relu]
            node.sparse_beta = start.detach().clone().requires_grad_(True)
            node.sparse_beta_loc = order.contiguous()
            node.sparse_beta_sign = sign.contiguous()
            locs.append((order, sign))
        return locs

    def _clear_betas(self, bounded: Any) -> None:
        """No split constraints: CROWN skips the β terms altogether (a tenth of its time otherwise)."""
        for layer in self.layers:
            bounded[layer.relu].sparse_beta = None


def _pad_rows(t: torch.Tensor, size: int) -> torch.Tensor:
    """`t` with its first row repeated up to `size` rows (padding is bounded and thrown away)."""
    if t.shape[0] == size:
        return t
    return torch.cat([t, t[:1].expand(size - t.shape[0], *t.shape[1:])])


def _bias_of(node: Any, shape: tuple[int, ...], size: int) -> torch.Tensor:
    """The bias of a Linear/Conv pre-activation node, broadcast over its outputs; zeros otherwise."""
    from auto_LiRPA.operators import BoundConv, BoundLinear

    bias = None
    if isinstance(node, (BoundLinear, BoundConv)) and len(node.inputs) > 2:
        value = getattr(node.inputs[2], "param", None)
        if value is None:
            value = getattr(node.inputs[2], "value", None)
        if isinstance(value, torch.Tensor):
            bias = value.detach()
    if bias is None:
        return torch.zeros(size)
    if isinstance(node, BoundConv) and len(shape) == 3:
        return bias.reshape(-1, 1, 1).expand(shape).reshape(-1).float()
    return bias.reshape(-1).expand(size).float() if bias.numel() in (1, size) else torch.zeros(size)
