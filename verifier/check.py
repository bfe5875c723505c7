"""`uverify check`: per sample and per epsilon, a verdict on the L_p-ball property of an ONNX model.

    verified       every margin z_y - z_j has a certified lower bound > 1e-5 over the ball ∩ domain
    falsified      PGD found a point that onnxruntime confirms: in the ball, in the domain, misclassified
    unknown        neither
    misclassified  the clean sample is already wrong (onnxruntime's prediction)

Bounds are computed on the torch module imported from the file (checked against onnxruntime on the
samples when imported). PGD then attacks the same module on the correctly classified samples that the
bounds did not certify: a certified sample has no counterexample to find, and attacking it would
cost most of the run. `cross_check=True` attacks the certified ones too, so that a certified sample
with a confirmed counterexample, a soundness bug, is raised instead of reported; the soundness tests
run that way.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from uverify import __version__
from uverify.datasets import Domain, Splits, load
from uverify.errors import UverifyError
from uverify.files import atomic_write, sha256_file
from uverify.specs.schema import Spec, spec_sha256
from uverify.verifier.attacks import pgd_for
from uverify.verifier.report import Counts, EpsilonResult, Report, SampleRow, Timings

IMPORT_CHECK_SAMPLES = 32
DOMAIN_SLACK = 1e-6  # samples this close outside the domain (float round-off) are clipped into it


class SoundnessError(RuntimeError):
    """A sample was certified and also has a confirmed counterexample: a bug, never a result."""


@dataclass(frozen=True)
class Samples:
    x: np.ndarray  # float32 (N, *input_shape)
    y: np.ndarray  # int64 (N,)
    ids: np.ndarray  # int64 (N,)
    source: str


def samples_from_spec(spec: Spec, count: int | None = None, splits: Splits | None = None) -> tuple[Samples, Domain]:
    """`count` (default data.samples) samples of the spec's split, a seeded choice kept in id order
    (from `splits` when the caller has loaded the data already)."""
    part = (splits or load(spec.data)).split(spec.data.split)
    asked = count or spec.data.samples
    count = min(asked, len(part))
    rng = np.random.default_rng(spec.data.seed)
    pick = np.sort(rng.choice(len(part), size=count, replace=False))
    chosen = part.subset(pick)
    source = f"{chosen.name}:{spec.data.split}" + (f" (all {count}; {asked} asked)" if asked > count else "")
    return Samples(chosen.X, chosen.y, chosen.ids, source), part.domain


def samples_from_npz(path: str | Path) -> Samples:
    """Arrays `x` and `y` (and optionally `ids`) from an .npz a user brings; pickles are refused."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise UverifyError(f"samples {path}: a single array, not an .npz with arrays x and y")
            missing = [k for k in ("x", "y") if k not in data.files]
            if missing:
                raise UverifyError(f"samples {path}: no array {' or '.join(map(repr, missing))} (has {data.files})")
            x, y = data["x"], data["y"]
            ids = data["ids"] if "ids" in data.files else None
    except UverifyError:
        raise
    except (OSError, ValueError, EOFError, TypeError, zipfile.BadZipFile) as exc:
        raise UverifyError(f"samples {path}: not a readable .npz file ({exc})") from None
    if x.ndim < 2 or y.ndim != 1 or (ids is not None and ids.ndim != 1):
        raise UverifyError(f"samples {path}: x must be (N, features...) and y, ids (N,); got {x.shape}, {y.shape}")
    ids = np.arange(len(y)) if ids is None else ids
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise UverifyError(f"samples {path}: x must be real numbers, not {x.dtype}")
    if not np.isfinite(x.astype(np.float32)).all():
        raise UverifyError(f"samples {path}: x must be finite float32 numbers")
    if len(y) != len(x) or len(ids) != len(x):
        raise UverifyError(f"samples {path}: x has {len(x)} rows but y {y.shape} and ids {ids.shape}")
    if not np.issubdtype(y.dtype, np.integer) or not np.issubdtype(ids.dtype, np.integer):
        raise UverifyError(f"samples {path}: y and ids must be integers")
    if len(x) == 0:
        raise UverifyError(f"samples {path}: no samples")
    return Samples(x.astype(np.float32), y.astype(np.int64), ids.astype(np.int64), str(path))


def check(
    model_path: str | Path,
    spec: Spec,
    samples: Samples,
    domain: Domain | None,
    *,
    progress: bool = True,
    counterexamples: str | Path | None = None,
    cross_check: bool = False,
) -> Report:
    """Run the certified and the empirical check of the spec's property; see the module docstring."""
    from uverify.verifier.bounds import Bounder, verified
    from uverify.verifier.referee import confirm_counterexamples

    started = time.perf_counter()
    model_path = Path(model_path)
    if not model_path.is_file():
        raise UverifyError(f"model {model_path}: no such file")
    target = _load_target(model_path)
    shape = target.input_shape
    x = _fit(samples.x, shape, model_path)
    # bounds and PGD run on the imported modules: they must compute what the files compute, here
    target.validate(x[:IMPORT_CHECK_SAMPLES])
    lower, upper = _domain_arrays(domain, shape, model_path)
    flat = x.reshape(len(x), -1)
    outside = ~np.all((flat >= lower.reshape(-1) - DOMAIN_SLACK) & (flat <= upper.reshape(-1) + DOMAIN_SLACK), axis=1)
    if outside.any():
        raise UverifyError(
            f"{int(outside.sum())} sample(s) lie outside the input domain (first id {int(samples.ids[outside][0])})"
        )
    x = np.clip(x, lower, upper)  # round-off of at most DOMAIN_SLACK: the ball's centre must lie in the domain
    referee = target.referee
    t0 = time.perf_counter()
    clean_logits = referee.logits(x)
    referee_seconds = time.perf_counter() - t0
    num_classes = clean_logits.shape[1]
    prediction = clean_logits.argmax(1).astype(np.int64)
    y = samples.y if spec.property.label else prediction
    if (y < 0).any() or (y >= num_classes).any():
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise UverifyError(f"label {bad} is out of range: the model has {num_classes} classes")
    correct = prediction == y

    bounders = [Bounder(module, shape, spec.verify.method, num_classes=num_classes) for module in target.members]
    attack = pgd_for(
        spec.property.norm,
        steps=spec.attack.steps,
        restarts=spec.attack.restarts,
        step_size=spec.attack.step_size,
        loss=spec.attack.loss,
    )
    n = len(x)
    epsilons = spec.property.epsilon
    verdicts = np.full((len(epsilons), n), "misclassified", dtype=object)
    margins = np.full((len(epsilons), n), np.nan)
    results: list[EpsilonResult] = []
    saved: dict[str, list[np.ndarray]] = {k: [] for k in ("ids", "epsilon", "x", "x_adv", "y", "logits")}
    todo = np.flatnonzero(correct)
    batch = spec.verify.batch_size
    lo_t, hi_t = torch.from_numpy(lower), torch.from_numpy(upper)
    bar = tqdm(
        total=len(epsilons) * -(-len(todo) // batch), desc="check", unit="batch", disable=None if progress else True
    )
    try:
        for k, eps in enumerate(epsilons):
            timing = {"bounds": 0.0, "attack": 0.0, "referee": 0.0}
            rejected = 0
            generator = torch.Generator().manual_seed(_attack_seed(spec.attack.seed, eps))
            for start in range(0, len(todo), batch):
                idx = todo[start : start + batch]
                xb, yb = torch.from_numpy(x[idx]), torch.from_numpy(y[idx])
                t0 = time.perf_counter()
                min_lb = target.margin(
                    [b.margins(xb, yb, eps, spec.property.norm, lo_t, hi_t).numpy().min(axis=1) for b in bounders]
                )
                timing["bounds"] += time.perf_counter() - t0
                is_verified = verified(torch.from_numpy(min_lb[:, None])).numpy()
                t0 = time.perf_counter()
                hit = np.zeros(len(idx), bool)
                todo_attack = np.ones(len(idx), bool) if cross_check else ~is_verified
                if todo_attack.any():
                    sel = torch.from_numpy(np.flatnonzero(todo_attack))
                    result = attack.run(target.module, xb[sel], yb[sel], eps, lo_t[None], hi_t[None], generator)
                    x_adv = np.zeros_like(x[idx])
                    x_adv[todo_attack] = result.x_adv.numpy()
                    # a vote is judged by onnxruntime, not by the surrogate PGD attacked
                    hit[todo_attack] = target.judge(result, x_adv[todo_attack], y[idx][todo_attack])
                timing["attack"] += time.perf_counter() - t0
                t0 = time.perf_counter()
                confirmed = np.zeros(len(idx), bool)
                if hit.any():
                    conf = confirm_counterexamples(
                        referee, x[idx][hit], x_adv[hit], y[idx][hit], eps, spec.property.norm, lower, upper
                    )
                    confirmed[hit] = conf.confirmed
                    rejected += int((~conf.confirmed).sum())
                    keep = conf.confirmed
                    for key, value in (
                        ("ids", samples.ids[idx][hit][keep]),
                        ("epsilon", np.full(int(keep.sum()), eps)),
                        ("x", x[idx][hit][keep]),
                        ("x_adv", conf.x_adv[keep]),
                        ("y", y[idx][hit][keep]),
                        ("logits", conf.logits[keep]),
                    ):
                        saved[key].append(value)
                timing["referee"] += time.perf_counter() - t0
                if (is_verified & confirmed).any():
                    bad = samples.ids[idx][is_verified & confirmed][0]
                    raise SoundnessError(
                        f"sample {bad} at epsilon {eps:g}: {spec.verify.method} certified it, yet onnxruntime "
                        "confirms a counterexample; this is a bug in uverify, please report it"
                    )
                margins[k, idx] = min_lb
                verdicts[k, idx] = np.where(is_verified, "verified", np.where(confirmed, "falsified", "unknown"))
                bar.update(1)
            results.append(_summarise(eps, verdicts[k], timing, rejected, referee_seconds if k == 0 else 0.0))
    finally:
        bar.close()

    if counterexamples is not None:
        _save_counterexamples(counterexamples, saved, x.shape[1:])
    rows = [
        SampleRow(
            id=int(samples.ids[i]),
            label=int(y[i]),
            prediction=int(prediction[i]),
            verdicts=[verdicts[k, i] for k in range(len(epsilons))],
            margin_lower_bounds=[
                None if not np.isfinite(margins[k, i]) else float(margins[k, i]) for k in range(len(epsilons))
            ],
        )
        for i in range(n)
    ]
    return Report(
        spec_name=spec.name,
        spec_sha256=spec_sha256(spec),
        spec=spec.model_dump(mode="json"),
        model={"path": str(model_path), "sha256": sha256_file(model_path), "metadata": target.metadata},
        samples_source=samples.source,
        norm=spec.property.norm,
        method=spec.verify.method,
        attack=spec.attack.model_dump(mode="json"),
        versions=_versions(),
        seconds=time.perf_counter() - started,
        results=results,
        samples=rows,
    )


@dataclass
class _Target:
    """What `check` verifies: one ONNX classifier, or a majority vote of several (verifier/vote.py)."""

    path: Path
    members: list[nn.Module]  # bounded one by one
    protos: list[Any]  # their ONNX graphs, for the import check
    module: nn.Module  # PGD attacks this: the model itself, or the vote's mean-of-logits surrogate
    referee: Any  # Referee | VoteReferee: `logits` decides predictions and counterexamples
    input_shape: tuple[int, ...]
    metadata: dict[str, Any]
    vote: bool

    def validate(self, x: np.ndarray) -> None:
        from uverify.verifier.onnx_import import validate_against_onnxruntime

        for proto, member in zip(self.protos, self.members, strict=True):
            validate_against_onnxruntime(proto, member, x)

    def margin(self, member_margins: list[np.ndarray]) -> np.ndarray:
        """The lower bound whose sign certifies the model: a member's own, or the vote's order statistic."""
        from uverify.verifier.vote import vote_margin

        return vote_margin(np.stack(member_margins)) if self.vote else member_margins[0]

    def judge(self, result: Any, x_adv: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Which PGD points are candidates worth confirming."""
        if not self.vote:
            return result.success.numpy()
        return self.referee.logits(x_adv).argmax(1) != y


def _load_target(model_path: Path) -> _Target:
    from uverify.verifier.onnx_import import load_onnx, onnx_to_torch
    from uverify.verifier.referee import Referee
    from uverify.verifier.vote import MeanOfLogits, VoteReferee, is_vote_manifest, read_vote_manifest

    if not is_vote_manifest(model_path):
        proto = load_onnx(model_path)
        imported = onnx_to_torch(proto)
        return _Target(
            model_path, [imported.module], [proto], imported.module, Referee(model_path),
            imported.input_shape, dict(imported.metadata), vote=False,
        )  # fmt: skip
    _, files = read_vote_manifest(model_path)
    protos = [load_onnx(f) for f in files]
    members = [onnx_to_torch(p) for p in protos]
    shapes = {m.input_shape for m in members}
    if len(shapes) != 1:
        raise UverifyError(f"vote {model_path}: members take different input shapes {sorted(shapes)}")
    metadata: dict[str, Any] = dict(members[0].metadata)
    metadata.update(aggregation="majority_vote", members=[str(f.relative_to(model_path.parent)) for f in files])
    modules = [m.module for m in members]
    return _Target(
        model_path, modules, protos, MeanOfLogits(modules).eval(), VoteReferee(files),
        members[0].input_shape, metadata, vote=True,
    )  # fmt: skip


def _attack_seed(seed: int, eps: float) -> int:
    """A PGD seed from the spec's seed and the epsilon's value, not its place in the sweep: the same
    epsilon gives the same attack in any sweep."""
    digest = hashlib.sha256(f"{seed}:{eps!r}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _summarise(
    eps: float, verdicts: np.ndarray, timing: dict[str, float], rejected: int, clean_seconds: float
) -> EpsilonResult:
    n = len(verdicts)
    count = {v: int((verdicts == v).sum()) for v in ("verified", "falsified", "unknown", "misclassified")}
    clean = (n - count["misclassified"]) / n
    certified = count["verified"] / n
    pgd = (count["verified"] + count["unknown"]) / n
    return EpsilonResult(
        epsilon=eps,
        clean_accuracy=clean,
        certified_accuracy=certified,
        pgd_accuracy=pgd,
        gap_pgd=clean - pgd,
        gap_certified=clean - certified,
        counts=Counts(**count, rejected_counterexamples=rejected),
        seconds=Timings(bounds=timing["bounds"], attack=timing["attack"], referee=timing["referee"] + clean_seconds),
    )


def _fit(x: np.ndarray, shape: tuple[int, ...], model_path: Path) -> np.ndarray:
    """Samples shaped for the model: the same per-sample shape, or the same number of features
    laid out row-major (VNN-COMP files take MNIST as [1, 784, 1])."""
    if tuple(x.shape[1:]) == shape:
        return np.ascontiguousarray(x, dtype=np.float32)
    if int(np.prod(x.shape[1:])) == int(np.prod(shape)):
        return np.ascontiguousarray(x.reshape(len(x), *shape), dtype=np.float32)
    raise UverifyError(
        f"model {model_path} takes inputs of shape {list(shape)} per sample; the samples have {list(x.shape[1:])}"
    )


def _domain_arrays(domain: Domain | None, shape: tuple[int, ...], model_path: Path) -> tuple[np.ndarray, np.ndarray]:
    if domain is None:
        return np.full(shape, -np.inf, np.float32), np.full(shape, np.inf, np.float32)
    if domain.lower.size != int(np.prod(shape)):
        raise UverifyError(
            f"the input domain has {domain.lower.size} features but model {model_path} takes {list(shape)}"
        )
    return domain.lower.reshape(shape).astype(np.float32), domain.upper.reshape(shape).astype(np.float32)


def domain_from_metadata(metadata: dict[str, Any]) -> Domain | None:
    """The input domain an exported model records (uverify's own exports), if any."""
    raw = metadata.get("input_domain")
    if raw is None:
        return None
    try:
        return Domain.from_json(json.loads(raw) if isinstance(raw, str) else raw)
    except (ValueError, KeyError, TypeError):
        raise UverifyError("the model's metadata_props input_domain is malformed") from None


def _save_counterexamples(path: str | Path, saved: dict[str, list[np.ndarray]], shape: tuple[int, ...]) -> None:
    arrays = {
        key: np.concatenate(parts) if parts else np.zeros((0, *shape) if key in ("x", "x_adv") else (0,))
        for key, parts in saved.items()
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]

    atomic_write(path, write)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    from uverify.verifier import lirpa_compat

    return {
        "uverify": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "auto_LiRPA": getattr(lirpa_compat.import_auto_lirpa(), "__version__", "0.3"),
    }
