"""The samples a check centres its balls on, and the input domain the balls are cut to: drawn from the
spec's data set, or brought by the user as an .npz (with the domain from the model's own metadata).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uverify.datasets import Domain, Splits, load
from uverify.errors import UverifyError
from uverify.files import read_npz
from uverify.models import read_metadata
from uverify.models.vote import is_vote_manifest, manifest_metadata
from uverify.specs.schema import CheckSpec, Spec


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
    data = read_npz(path, f"samples {path}", ("x", "y"))
    x, y = data["x"], data["y"]
    ids = data.get("ids")
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
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        twice = unique[counts > 1]
        raise UverifyError(
            f"samples {path}: ids must be unique; {len(twice)} repeat ({', '.join(map(str, twice[:5]))}"
            f"{', ...' if len(twice) > 5 else ''})"
        )
    return Samples(x.astype(np.float32), y.astype(np.int64), ids.astype(np.int64), str(path))


def model_metadata(model_path: Path) -> dict[str, Any]:
    """What a model file records about itself: an ONNX file's metadata_props, or a vote's (its first
    member's plus the aggregation)."""
    return manifest_metadata(model_path) if is_vote_manifest(model_path) else read_metadata(model_path)


def domain_from_metadata(metadata: dict[str, Any]) -> Domain | None:
    """The input domain an exported model records (uverify's own exports), if any."""
    raw = metadata.get("input_domain")
    if raw is None:
        return None
    try:
        return Domain.from_json(json.loads(raw) if isinstance(raw, str) else raw)
    except (ValueError, KeyError, TypeError):
        raise UverifyError("the model's metadata_props input_domain is malformed") from None


@dataclass(frozen=True)
class CheckSamples:
    """The samples of a check, their domain, and what was assumed for want of a spec or metadata (the
    report lists it, so that a reader knows which settings nobody chose)."""

    samples: Samples
    domain: Domain | None
    assumed: list[str]


def samples_for_check(spec: Spec | CheckSpec, model_path: Path, npz: Path | None) -> CheckSamples:
    """The spec's samples and domain, or, given `npz`, the user's samples and the domain the model
    records (none: the ball is not cut to a domain)."""
    if npz is None:
        if not isinstance(spec, Spec):
            raise UverifyError("without --spec there is no data set to draw samples from: give --samples FILE.npz")
        samples, domain = samples_from_spec(spec)
        return CheckSamples(samples, domain, [])
    samples = samples_from_npz(npz)
    assumed = []
    if not isinstance(spec, Spec):
        attack = spec.attack
        labels = "the samples' y" if spec.property.label else "the model's clean predictions"
        assumed.append(
            f"no spec: L{spec.property.norm} ball, {spec.verify.method} bounds, PGD {attack.steps} steps x "
            f"{attack.restarts} restarts (seed {attack.seed}), {labels} as labels (flags, else defaults)"
        )
    domain = domain_from_metadata(model_metadata(model_path)) if model_path.is_file() else None
    if domain is None:
        assumed.append("the model records no input domain: the balls are not cut to one")
    return CheckSamples(samples, domain, assumed)


__all__ = [
    "CheckSamples",
    "Samples",
    "domain_from_metadata",
    "model_metadata",
    "samples_for_check",
    "samples_from_npz",
    "samples_from_spec",
]
