"""Re-check a SISA run's current model in time proportional to what its deletions touched.

A SISA deletion retrains only the shards that held the deleted ids, and the ensemble's certified bound
composes from per-shard pieces, so the pieces of the untouched shards are kept in the run's certificate
cache (rundir.py owns its files) and reused; only the shards whose weights changed are bounded again.

* `mean_logits` is one ONNX graph, c·(M_1 + ... + M_S) with c = 1/S. It is split into the S member
  graphs (they must share nothing but the input). CROWN and CROWN-IBP bound the ensemble by propagating
  c·C backwards (C: the margin rows e_y − e_j): through the sum each member receives c·C, its ReLU
  relaxations depend only on its own intermediate bounds (the sign of the coefficients is that of C,
  c > 0), and the coefficients meet at the input. So each member's linear bound (A_k, b_k) of
  c·C·M_k(x) is cached, and the ensemble's bound is the sum Σ A_k, Σ b_k concretised over the ball,
  exactly as auto_LiRPA concretises the whole graph (not the sum of the members' concretised bounds,
  which is looser). IBP is interval arithmetic node by node: each member's logit interval is cached and
  the intervals are added, scaled and multiplied by C as auto_LiRPA does for the whole graph.
* `majority_vote` is certified by counting members whose margin bound is positive (verifier/vote.py):
  each member's margin lower bounds are cached as they are.
* alpha-CROWN optimises its relaxation for the margins it is asked about and batch by batch, so a
  member's share of the ensemble's optimised bound does not exist on its own, and a member's optimised
  bound depends on the batch it was optimised in: no reuse, a full check. `mean_softmax` averages
  softmax outputs, not logits: no reuse, a full check (the brief says so, and the report is the same).

Everything after the bounds (PGD on the uncertified samples, onnxruntime replaying counterexamples,
branch and bound, the report) is `verifier.check.check` itself, which takes the composed margins
through its `margins` hook. Soundness of a cached entry: its key (rundir.py) names the shard by the
sha256 of its graph and the samples by the sha256 of their inputs, labels and domain, so it can never be
used for other weights or samples; its digest catches changed bytes; and every entry is checked against
the shard's own outputs at the ball centres (a lower bound above the value it bounds is a forgery or a
bug), so a hand-made entry that passes must at least be consistent with the model.
"""

from __future__ import annotations

import hashlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from uverify import __version__
from uverify.errors import one_line
from uverify.files import ensure_writable_dir
from uverify.kinds import Aggregation, UnlearningMethod
from uverify.models.referee import Referee
from uverify.models.vote import is_vote_manifest, read_vote_manifest
from uverify.rundir import (
    CERTIFICATE_SCHEMA,
    Run,
    RunDir,
    certificate_ignored,
    locked,
    open_run,
    prune_certificates,
    read_certificate,
    write_certificate,
)
from uverify.specs.schema import Spec
from uverify.verifier import lirpa_compat
from uverify.verifier.bounds import Bounder, BoundsError, spec_matrix
from uverify.verifier.check import check
from uverify.verifier.onnx_import import load_onnx, onnx_to_torch
from uverify.verifier.report import Report, save_report
from uverify.verifier.samples import samples_for_check
from uverify.verifier.vote import vote_margin

__all__ = ["REUSABLE_METHODS", "Reuse", "check_run", "check_run_with_reuse"]

# The bound methods whose per-shard results compose exactly (see the module docstring).
REUSABLE_METHODS = ("CROWN", "CROWN-IBP", "IBP")
# The shards split from model.onnx must reproduce onnxruntime's logits to this (absolute) on the samples.
SPLIT_TOLERANCE = 1e-4
SPLIT_CHECK_SAMPLES = 32
# A cached lower bound may exceed the value it bounds at the ball's centre by float32 round-off only.
CENTRE_SLACK = 1e-4
_NORM_VALUE = {"inf": math.inf, "2": 2.0, "1": 1.0}
_DUAL_NORM = {"2": 2.0, "1": math.inf}
_LIRPA_METHOD = {"CROWN": "backward", "CROWN-IBP": "CROWN-IBP"}

Representation = Literal["linear", "interval", "margins"]
Tree = int | tuple["Tree", "Tree"]  # the ensemble's Add tree over member indices


@dataclass
class Reuse:
    """What a `check_run` did with the certificate cache, in (shard, epsilon) entries."""

    applies: bool
    reason: str  # why reuse applies or not, one line
    shards: int = 0
    reused: int = 0
    computed: int = 0
    ignored: int = 0  # invalid entries, warned about and recomputed
    seconds: float = 0.0  # bounds: cache reads, the missing shards' bounds and composing them

    def summary(self) -> str:
        if not self.applies:
            return f"certificate reuse: {self.reason}; full check"
        return (
            f"certificate reuse: {self.reused} of {self.reused + self.computed} (shard, epsilon) entries reused, "
            f"{self.computed} computed" + (f", {self.ignored} invalid ignored" if self.ignored else "")
        )


def check_run(
    run_dir: str | Path,
    *,
    reuse: bool = True,
    out: Path | None = None,
    progress: bool = True,
    cross_check: bool = False,
    notes: Callable[[str], None] | None = None,
) -> Report:
    """`uverify check --run RUN [--no-reuse]`: see `check_run_with_reuse`."""
    return check_run_with_reuse(run_dir, reuse=reuse, out=out, progress=progress, cross_check=cross_check, notes=notes)[
        0
    ]


def check_run_with_reuse(
    run_dir: str | Path,
    *,
    reuse: bool = True,
    out: Path | None = None,
    progress: bool = True,
    cross_check: bool = False,
    spec: Spec | None = None,
    notes: Callable[[str], None] | None = None,
) -> tuple[Report, Reuse]:
    """Check the run's current model with the run's spec and samples, as `uverify check --model` would,
    bounding only the shards without a valid certificate and filling the cache with theirs. `reuse=False`
    (or a run reuse does not apply to, which `notes` is told) is the plain full check and leaves the cache
    alone. `spec` replaces the run's (command-line overrides: another norm, epsilon or method); the
    report (and its counterexamples, `REPORT.counterexamples.npz`) go to `out` when given; `notes` hears
    one line on what was reused (default: stderr). Holds the run's lock: the cache is part of the run."""
    say = notes or _to_stderr
    with locked(run_dir):
        run = open_run(run_dir)
        spec = spec or run.spec
        if out is not None:
            ensure_writable_dir(out.parent)
        chosen = samples_for_check(spec, run.model_path, None)
        plan: _Plan | str = _plan(run, spec, chosen.samples.x) if reuse else "not asked for (--no-reuse)"
        source = _CachedMargins(run.dir, plan, spec) if isinstance(plan, _Plan) else None
        if source is not None:
            prune_certificates(run.dir, {shard.sha256 for shard in source.plan.shards})
        counterexamples = out.with_suffix(".counterexamples.npz") if out is not None else None
        report = check(
            run.model_path, spec, chosen.samples, chosen.domain,
            progress=progress, counterexamples=counterexamples, cross_check=cross_check, assumed=chosen.assumed,
            margins=source,
        )  # fmt: skip
        if out is not None:
            save_report(report, out)
    summary = source.reuse if source is not None else Reuse(False, str(plan))
    say(summary.summary())
    return report, summary


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


# ------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class _Shard:
    index: int
    proto: onnx.ModelProto  # the shard's own graph: (batch, *input) → (batch, classes) logits
    sha256: str  # of that graph (nodes, weights, opset): what the cache is keyed by


@dataclass(frozen=True)
class _Plan:
    representation: Representation
    shards: list[_Shard]
    scale: float  # c, the mean's 1/S (1 for a vote)
    tree: Tree | None  # the mean's Add tree (None for a vote)
    modules: list[nn.Module] = field(default_factory=list)  # the shards imported to torch, as `shards`


def _plan(run: Run, spec: Spec, x: np.ndarray) -> _Plan | str:
    """How to compose the run's current model from per-shard certificates, or why that does not apply."""
    if run.info.method != UnlearningMethod.SISA:
        return f"a {run.info.method} run is one model, not shards"
    aggregation = run.spec.unlearning.sisa.aggregation  # what was trained, whatever the check overrides
    method = spec.verify.method
    if aggregation == Aggregation.MEAN_SOFTMAX:
        return "mean_softmax averages softmax outputs, which is not linear in the shards' logits"
    if method not in REUSABLE_METHODS:
        return (
            f"{method} optimises its bound for each batch of margins, so its shard bounds do not compose "
            f"exactly (reuse supports {', '.join(REUSABLE_METHODS)})"
        )
    if is_vote_manifest(run.model_path):
        files = read_vote_manifest(run.model_path)[1]
        shards = [_Shard(k, proto, _graph_sha256(proto)) for k, proto in enumerate(load_onnx(f) for f in files)]
        return _Plan("margins", shards, 1.0, None, [onnx_to_torch(s.proto).module for s in shards])
    split = _split_mean(load_onnx(run.model_path))
    if isinstance(split, str):
        return f"{run.info.model} {split}"
    protos, scale, tree = split
    shards = [_Shard(k, proto, _graph_sha256(proto)) for k, proto in enumerate(protos)]
    modules = [onnx_to_torch(s.proto).module for s in shards]
    mismatch = _split_mismatch(run.model_path, modules, scale, tree, x)
    if mismatch is not None:
        return f"the shards split from {run.info.model} do not reproduce it ({mismatch})"
    return _Plan("interval" if method == "IBP" else "linear", shards, scale, tree, modules)


def _graph_sha256(proto: onnx.ModelProto) -> str:
    """What the shard computes, without the file's metadata (which names the run, not the function)."""
    digest = hashlib.sha256(proto.graph.SerializeToString(deterministic=True))
    for opset in proto.opset_import:
        digest.update(f"\0{opset.domain}:{opset.version}".encode())
    return digest.hexdigest()


def _split_mean(proto: onnx.ModelProto) -> tuple[list[onnx.ModelProto], float, Tree] | str:
    """The member graphs of c·(M_1 + ... + M_S) (SISA's mean_logits export), c, and the Add tree; or why
    the graph is not of that form."""
    graph = proto.graph
    if len(graph.output) != 1:
        return "has several outputs"
    inits = {i.name: i for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1:
        return "has several inputs"
    producer = {out: node for node in graph.node for out in node.output}
    top = producer.get(graph.output[0].name)
    if top is None or top.op_type != "Mul" or len(top.input) != 2:
        return "is not a sum of shard graphs times 1/S (no final Mul)"
    const = [name for name in top.input if name in inits]
    if len(const) != 1:
        return "is not a sum of shard graphs times 1/S (the final Mul is not by a constant)"
    scale_array = numpy_helper.to_array(inits[const[0]])
    if scale_array.size != 1 or not (np.isfinite(scale_array).all() and float(scale_array.ravel()[0]) > 0):
        return "is not a sum of shard graphs times 1/S (the scale is not one positive number)"
    scale = float(scale_array.ravel()[0])
    outputs: list[str] = []

    def tree_of(name: str) -> Tree:
        node = producer.get(name)
        if node is not None and node.op_type == "Add" and len(node.input) == 2 and not set(node.input) & set(inits):
            return (tree_of(node.input[0]), tree_of(node.input[1]))
        outputs.append(name)
        return len(outputs) - 1

    summed = next(name for name in top.input if name not in inits)
    tree = tree_of(summed)
    if len(outputs) < 2:
        return "is not a sum of several shard graphs"
    used: set[int] = set()
    members = []
    for name in outputs:
        nodes = _ancestors(name, producer)
        if used & nodes.keys():
            return "has shards that share nodes"
        used |= nodes.keys()
        members.append(_member_model(proto, [n for n in graph.node if id(n) in nodes], inputs[0], name))
    return members, scale, tree


def _ancestors(name: str, producer: dict[str, onnx.NodeProto]) -> dict[int, onnx.NodeProto]:
    nodes: dict[int, onnx.NodeProto] = {}
    stack = [name]
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in nodes:
            nodes[id(node)] = node
            stack.extend(node.input)
    return nodes


def _member_model(
    proto: onnx.ModelProto, nodes: list[onnx.NodeProto], graph_input: onnx.ValueInfoProto, output: str
) -> onnx.ModelProto:
    used = {name for node in nodes for name in node.input}
    value = onnx.ValueInfoProto()
    value.CopyFrom(proto.graph.output[0])
    value.name = output
    graph = helper.make_graph(
        nodes, "shard", [graph_input], [value], [i for i in proto.graph.initializer if i.name in used]
    )
    member = helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    return member


def _split_mismatch(model_path: Path, modules: list[nn.Module], scale: float, tree: Tree, x: np.ndarray) -> str | None:
    """None when c·(sum of the shard modules) computes onnxruntime's logits of the file on the samples."""
    sample = np.ascontiguousarray(x[:SPLIT_CHECK_SAMPLES], dtype=np.float32)
    try:
        with torch.no_grad():
            outs = [m(torch.from_numpy(sample)) for m in modules]
        ours = (_tree_sum(tree, outs) * scale).numpy()
        theirs = Referee(model_path).logits(sample)
    except Exception as error:  # a shape the shards do not take, an op onnxruntime refuses: no reuse
        return one_line(error, with_type=True)
    diff = float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else math.inf
    return None if diff <= SPLIT_TOLERANCE else f"max |logit diff| {diff:.3g}"


def _tree_sum(tree: Tree, leaves: list[torch.Tensor]) -> torch.Tensor:
    """The Add tree evaluated in the graph's own order (float32 sums are not associative)."""
    if isinstance(tree, int):
        return leaves[tree]
    return _tree_sum(tree[0], leaves) + _tree_sum(tree[1], leaves)


# ------------------------------------------------------------------------------- the margins source
class _CachedMargins:
    """`verifier.check`'s `margins` hook: on the first batch of an epsilon, every shard's certificate
    from the cache or computed (then stored), composed into the margins of every sample."""

    def __init__(self, folder: RunDir, plan: _Plan, spec: Spec) -> None:
        self.folder, self.plan, self.spec = folder, plan, spec
        self.reuse = Reuse(True, f"{plan.representation} certificates of {len(plan.shards)} shards")
        self.reuse.shards = len(plan.shards)
        self._margins: dict[float, np.ndarray] = {}
        self._bounders: dict[int, _ShardBounder] = {}
        self._centre: list[np.ndarray] | None = None  # each shard's logits at the samples
        self._samples_sha256: str | None = None

    def __call__(
        self, x: np.ndarray, y: np.ndarray, lower: np.ndarray, upper: np.ndarray, idx: np.ndarray, eps: float
    ) -> np.ndarray:
        if eps not in self._margins:
            started = time.perf_counter()
            self._margins[eps] = self._compose(x, y, lower, upper, eps)
            self.reuse.seconds += time.perf_counter() - started
        return self._margins[eps][idx]

    def _compose(self, x: np.ndarray, y: np.ndarray, lower: np.ndarray, upper: np.ndarray, eps: float) -> np.ndarray:
        plan = self.plan
        if self._samples_sha256 is None:
            self._samples_sha256 = _samples_sha256(x, y, lower, upper)
            with torch.no_grad():
                self._centre = [m(torch.from_numpy(x)).numpy() for m in plan.modules]
        assert self._centre is not None
        pieces = [self._piece(shard, x, y, lower, upper, eps) for shard in plan.shards]
        if plan.representation == "margins":
            return vote_margin(np.stack([p["margins"].min(axis=1) for p in pieces]))
        if plan.representation == "interval":
            assert plan.tree is not None
            spec = spec_matrix(torch.from_numpy(y), self._centre[0].shape[1])
            scale = torch.tensor(plan.scale, dtype=torch.float32)
            lo = _tree_sum(plan.tree, [torch.from_numpy(p["lower"]) for p in pieces]) * scale
            hi = _tree_sum(plan.tree, [torch.from_numpy(p["upper"]) for p in pieces]) * scale
            mid, rad = ((hi + lo) / 2.0).unsqueeze(-1), ((hi - lo) / 2.0).unsqueeze(-1)
            bound = (spec.matmul(mid) - spec.abs().matmul(rad)).squeeze(-1)
        else:
            a = torch.from_numpy(pieces[0]["A"].copy())
            b = torch.from_numpy(pieces[0]["bias"].copy())
            for p in pieces[1:]:
                a += torch.from_numpy(p["A"])
                b += torch.from_numpy(p["bias"])
            norm, lower_t, upper_t = self.spec.property.norm, torch.from_numpy(lower), torch.from_numpy(upper)
            bound = _concretise(a, b, torch.from_numpy(x), eps, norm, lower_t, upper_t)
        return bound.numpy().min(axis=1)

    def _piece(
        self, shard: _Shard, x: np.ndarray, y: np.ndarray, lower: np.ndarray, upper: np.ndarray, eps: float
    ) -> dict[str, np.ndarray]:
        """Shard `shard`'s certificate at `eps`: the cached one if valid, else computed and stored."""
        plan, spec = self.plan, self.spec
        assert self._centre is not None and self._samples_sha256 is not None
        centre = self._centre[shard.index]
        n, classes = centre.shape
        meta: dict[str, Any] = {
            "schema": CERTIFICATE_SCHEMA,
            "uverify": __version__,
            "torch": torch.__version__,
            "shard": shard.index,
            "shard_sha256": shard.sha256,
            "samples_sha256": self._samples_sha256,
            "samples": n,
            "norm": spec.property.norm,
            "epsilon": repr(float(eps)),
            "method": spec.verify.method,
            "representation": plan.representation,
            "scale": repr(plan.scale),
        }
        features = int(np.prod(x.shape[1:]))
        expected = {
            "linear": {"A": ((n, classes - 1, features), "float32"), "bias": ((n, classes - 1), "float32")},
            "interval": {"lower": ((n, classes), "float32"), "upper": ((n, classes), "float32")},
            "margins": {"margins": ((n, classes - 1), "float32")},
        }[plan.representation]
        cached = read_certificate(self.folder, shard.sha256, meta, expected)
        if cached is not None:
            why = self._implausible(cached, centre, x, y)
            if why is None:
                self.reuse.reused += 1
                return cached
            certificate_ignored(self.folder.certificate_file(shard.sha256, meta), why)
        if cached is not None or self.folder.certificate_file(shard.sha256, meta).is_file():
            self.reuse.ignored += 1
        piece = self._compute(shard, x, y, lower, upper, eps)
        write_certificate(self.folder, shard.sha256, meta, piece)
        self.reuse.computed += 1
        return piece

    def _implausible(
        self, piece: dict[str, np.ndarray], centre: np.ndarray, x: np.ndarray, y: np.ndarray
    ) -> str | None:
        """Why an entry cannot be a sound bound of the shard it claims to be (None: it can). Every ball
        holds its centre, so each lower bound must lie below the shard's value there, each upper above."""
        margins = (spec_matrix(torch.from_numpy(y), centre.shape[1]) @ torch.from_numpy(centre).unsqueeze(-1)).squeeze(
            -1
        )
        if self.plan.representation == "linear":
            at_centre = (
                torch.from_numpy(piece["A"]).reshape(len(x), margins.shape[1], -1)
                @ torch.from_numpy(x.reshape(len(x), -1, 1))
            ).squeeze(-1) + torch.from_numpy(piece["bias"])
            pairs = [(at_centre.numpy(), self.plan.scale * margins.numpy())]
        elif self.plan.representation == "interval":
            pairs = [(piece["lower"], centre), (centre, piece["upper"])]
        else:
            pairs = [(piece["margins"], margins.numpy())]
        for below, above in pairs:
            if not (np.isfinite(below).all() and np.isfinite(above).all()):
                return "it holds values that are not finite"
            if (below > above + CENTRE_SLACK * (1.0 + np.abs(above))).any():
                return "its bounds are not bounds of this shard's outputs at the samples"
        return None

    def _compute(
        self, shard: _Shard, x: np.ndarray, y: np.ndarray, lower: np.ndarray, upper: np.ndarray, eps: float
    ) -> dict[str, np.ndarray]:
        plan, spec = self.plan, self.spec
        bounder = self._bounders.get(shard.index)
        if bounder is None:
            input_shape = tuple(x.shape[1:])
            bounder = _ShardBounder(
                plan.modules[shard.index], input_shape, spec.verify.method,
                trace_batch=min(spec.verify.batch_size, len(x)),  # the batches' size: traced once, not twice
            )  # fmt: skip
            self._bounders[shard.index] = bounder
        norm, batch = spec.property.norm, spec.verify.batch_size
        lower_t, upper_t = torch.from_numpy(lower), torch.from_numpy(upper)
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(x), batch):
            xb, yb = torch.from_numpy(x[start : start + batch]), torch.from_numpy(y[start : start + batch])
            if plan.representation == "margins":
                out = {"margins": bounder.margins(xb, yb, eps, norm, lower_t, upper_t)}
            elif plan.representation == "interval":
                lo, hi = bounder.logit_interval(xb, eps, norm, lower_t, upper_t)
                out = {"lower": lo, "upper": hi}
            else:
                a, b = bounder.linear_margins(xb, yb, eps, norm, lower_t, upper_t, plan.scale)
                out = {"A": a, "bias": b}
            for key, value in out.items():
                parts.setdefault(key, []).append(value.numpy().astype(np.float32, copy=False))
        return {key: np.concatenate(values) for key, values in parts.items()}


def _samples_sha256(x: np.ndarray, y: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> str:
    """The balls' centres, labels and domain, as the check holds them (float32, int64)."""
    digest = hashlib.sha256()
    for name, array in (("x", x), ("y", y), ("lower", lower), ("upper", upper)):
        array = np.ascontiguousarray(array)
        digest.update(f"\0{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _concretise(
    a: torch.Tensor,
    b: torch.Tensor,
    x: torch.Tensor,
    eps: float,
    norm: str,
    lower: torch.Tensor,
    upper: torch.Tensor,
) -> torch.Tensor:
    """min over the ball of A·x' + b, as auto_LiRPA's PerturbationLpNorm.concretize computes it: for L_inf
    the box ball ∩ domain (as `Bounder.margins` builds it), for L_2 and L_1 the whole ball."""
    n = x.shape[0]
    a = a.reshape(n, a.shape[1], -1)
    if norm == "inf":
        x_l = torch.maximum(x - eps, lower).reshape(n, -1, 1)
        x_u = torch.minimum(x + eps, upper).reshape(n, -1, 1)
        bound = a.matmul((x_u + x_l) / 2.0) - a.abs().matmul((x_u - x_l) / 2.0)
    else:
        deviation = a.norm(_DUAL_NORM[norm], -1) * eps
        bound = a.matmul(x.reshape(n, -1, 1)) - deviation.unsqueeze(-1)
    return bound.squeeze(-1) + b


class _ShardBounder(Bounder):
    """A `Bounder` that also returns what composes: CROWN's linear bound on scale·C·M_k(x) with respect
    to the input, before concretisation, and IBP's logit interval before C is applied."""

    def linear_margins(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        epsilon: float,
        norm: str,
        lower: torch.Tensor,
        upper: torch.Tensor,
        scale: float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (batch, classes-1, *input_shape), b (batch, classes-1)) with A·x' + b ≤ scale·(z_y − z_j)(x')."""
        bounded, ball = self._ball(x, y, epsilon, norm, lower, upper)
        spec = spec_matrix(y, self.num_classes, dtype=self.dtype) * torch.tensor(scale, dtype=self.dtype)
        out_name, in_name = bounded.output_name[0], bounded.input_name[0]
        result = self._run(
            bounded, x.shape[0], norm,
            lambda: bounded.compute_bounds(
                x=(ball,), C=spec, method=_LIRPA_METHOD[self.method], bound_upper=False, return_A=True,
                needed_A_dict={out_name: [in_name]},
            ),
        )  # fmt: skip
        record = result[2][out_name][in_name]
        a, b = record["lA"], record["lbias"]
        if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor) or a.shape[:2] != b.shape:
            raise BoundsError(f"auto_LiRPA returned no linear bound with {self.method}")
        return a.detach().reshape(x.shape[0], b.shape[1], *self.input_shape), b.detach()

    def logit_interval(
        self, x: torch.Tensor, epsilon: float, norm: str, lower: torch.Tensor, upper: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """IBP's (lower, upper) bounds of the logits, each (batch, classes)."""
        bounded, ball = self._ball(x, torch.zeros(x.shape[0], dtype=torch.long), epsilon, norm, lower, upper)
        lo, hi = self._run(bounded, x.shape[0], norm, lambda: bounded.compute_bounds(x=(ball,), method="IBP"))
        return lo.detach(), hi.detach()

    def _ball(
        self, x: torch.Tensor, y: torch.Tensor, epsilon: float, norm: str, lower: torch.Tensor, upper: torch.Tensor
    ) -> tuple[Any, Any]:
        """The traced module and the ball, built as `Bounder.margins` builds them."""
        x, y, epsilon = self._check_inputs(x, y, epsilon)
        bounded, _ = self._bounded(x.shape[0])
        if epsilon > 0:
            self.check_norm(norm)
        lirpa = self._lirpa
        if norm == "inf":
            lower_t, upper_t = self._domain_bound(lower, x, "lower"), self._domain_bound(upper, x, "upper")
            assert lower_t is not None and upper_t is not None
            x_l, x_u = torch.maximum(x - epsilon, lower_t), torch.minimum(x + epsilon, upper_t)
            ptb = lirpa.PerturbationLpNorm(norm=math.inf, eps=epsilon, x_L=x_l, x_U=x_u)
        else:
            ptb = lirpa.PerturbationLpNorm(norm=_NORM_VALUE[norm], eps=epsilon)
        return bounded, lirpa.BoundedTensor(x, ptb)

    def _run(self, bounded: Any, batch: int, norm: str, compute: Callable[[], Any]) -> Any:
        try:
            with lirpa_compat.quiet(), torch.no_grad():
                return compute()
        except Exception as error:
            self._cache.pop(batch, None)  # its internal state may be half-updated
            raise BoundsError(
                f"auto_LiRPA cannot bound this shard with {self.method} for norm {norm}: "
                f"{one_line(error, with_type=True)}"
            ) from error
