"""How well a deletion worked, the same numbers for SISA, Amnesiac and the retraining baseline.

- accuracy on the test set, the retained training set and the forgotten samples, for M and M';
- with a retrained baseline (trained from scratch without the deleted ids): prediction disagreement
  on the test set and the L2 distance of the parameters (when both models have the same parameters);
- a loss-threshold membership-inference attack (Yeom et al. 2018): the AUC of telling the forgotten
  samples from held-out test samples by the model's loss on them. Near the retrained model's AUC is
  what forgetting looks like; well above it, the model still remembers them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from uverify.datasets import Dataset
from uverify.kinds import Aggregation
from uverify.models import predict_logits


def outputs_are_probabilities(model: nn.Module) -> bool:
    """SISA's mean_softmax and majority_vote ensembles output class shares, not logits."""
    return Aggregation(getattr(model, "aggregation", Aggregation.MEAN_LOGITS)) != Aggregation.MEAN_LOGITS


def per_sample_loss(model: nn.Module, data: Dataset) -> np.ndarray:
    out = predict_logits(model, data.X).astype(np.float64)
    if len(data) == 0:
        return np.zeros(0)
    rows = np.arange(len(data))
    if outputs_are_probabilities(model):
        share = out / np.maximum(out.sum(axis=1, keepdims=True), 1e-12)
        return -np.log(np.clip(share[rows, data.y], 1e-6, 1.0))
    shifted = out - out.max(axis=1, keepdims=True)
    return -(shifted[rows, data.y] - np.log(np.exp(shifted).sum(axis=1)))


def predictions(model: nn.Module, data: Dataset) -> np.ndarray:
    return predict_logits(model, data.X).argmax(1) if len(data) else np.zeros(0, np.int64)


def accuracy_on(model: nn.Module, data: Dataset) -> float | None:
    return float((predictions(model, data) == data.y).mean()) if len(data) else None


def membership_auc(model: nn.Module, members: Dataset, held_out: Dataset) -> float | None:
    """AUC of the attack 'lower loss means member'; 0.5 is chance."""
    if len(members) == 0 or len(held_out) == 0:
        return None
    scores = -np.concatenate([per_sample_loss(model, members), per_sample_loss(model, held_out)])
    truth = np.concatenate([np.ones(len(members)), np.zeros(len(held_out))])
    return roc_auc(truth, scores)


def roc_auc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC, computed the way `sklearn.metrics.roc_auc_score` computes it (the ROC curve at each
    distinct score, collinear points dropped, the trapezoidal area), so that it is scikit-learn's value
    to the last bit (tested) without importing scikit-learn into every command."""
    order = np.argsort(scores, kind="stable")[::-1]  # descending; the order inside a tie cannot matter
    ordered = scores[order]
    hit = truth.astype(bool)[order].astype(np.float64)
    thresholds = np.r_[np.flatnonzero(np.diff(ordered)), len(ordered) - 1]
    tps = np.cumsum(hit)[thresholds]
    fps = 1 + thresholds.astype(np.float64) - tps
    if len(fps) > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps = fps[keep], tps[keep]
    fpr, tpr = np.r_[0.0, fps] / fps[-1], np.r_[0.0, tps] / tps[-1]
    return float(np.trapezoid(tpr, fpr))


def parameter_l2(a: nn.Module, b: nn.Module) -> float | None:
    """||θ_a - θ_b||_2 over all parameters, when both models have the same parameter shapes."""
    pa, pb = list(a.state_dict().values()), list(b.state_dict().values())
    if len(pa) != len(pb) or any(x.shape != y.shape for x, y in zip(pa, pb, strict=True)):
        return None
    with torch.no_grad():
        return float(torch.sqrt(sum(((x.double() - y.double()) ** 2).sum() for x, y in zip(pa, pb, strict=True))))


def unlearning_metrics(
    before: nn.Module,
    after: nn.Module,
    train: Dataset,
    test: Dataset,
    forgotten_ids: np.ndarray,
    deleted_ids: np.ndarray,
    retrained: nn.Module | None = None,
) -> dict[str, Any]:
    """The numbers `uverify unlearn` prints and writes; `forgotten_ids` are this request's ids,
    `deleted_ids` every id deleted so far (the retained set is the training set without them)."""
    forgotten = train.subset(np.isin(train.ids, forgotten_ids))
    retained = train.without(deleted_ids)
    models = {"M": before, "M_prime": after} | ({"retrained": retrained} if retrained is not None else {})
    out: dict[str, Any] = {
        "accuracy": {
            name: {
                "test": accuracy_on(model, test),
                "retained": accuracy_on(model, retained),
                "forgotten": accuracy_on(model, forgotten),
            }
            for name, model in models.items()
        },
        "membership_inference_auc": {name: membership_auc(model, forgotten, test) for name, model in models.items()},
        "sizes": {"test": len(test), "retained": len(retained), "forgotten": len(forgotten)},
    }
    if retrained is not None:
        reference = predictions(retrained, test)
        out["disagreement_with_retrained"] = {
            name: float((predictions(model, test) != reference).mean()) if len(test) else None
            for name, model in (("M", before), ("M_prime", after))
        }
        out["parameter_l2_to_retrained"] = {
            name: parameter_l2(model, retrained) for name, model in (("M", before), ("M_prime", after))
        }
    return out


def render_unlearning(entry: dict[str, Any]) -> str:
    """The deletion log entry as the few lines `uverify unlearn` prints."""
    metrics = entry["metrics"]
    touched = entry["touched"]
    lines = [
        f"{entry['method']}: deleted {len(entry['ids'])} of {entry['requested']} requested ids "
        f"({entry['deleted_total']} deleted in all) in {metrics['seconds']['unlearn']:.2f} s"
    ]
    if entry["method"] == "sisa":
        where = ", ".join(f"shard {t['shard']} from slice {t['from_slice']}" for t in touched)
        lines.append(f"retrained: {where}")
    else:
        for t in touched:
            lines.append(
                f"subtracted {t['batches_subtracted']} of {t['batches_total']} recorded batch updates "
                f"({t['fraction_of_batches']:.1%}; {t['batches_already_subtracted']} already subtracted), "
                f"read {_size(t['bytes_read'])} in {t['subtract_seconds']:.3f} s; repair: {t['repair_epochs']} "
                f"epoch(s) on {t['repair_samples']} samples in {t['repair_seconds']:.2f} s"
            )
    if metrics.get("speedup_vs_retraining"):
        lines.append(
            f"retraining from scratch took {metrics['seconds']['retrain']:.2f} s: "
            f"speed-up {metrics['speedup_vs_retraining']:.1f}x"
        )
    names = list(metrics["accuracy"])
    lines.append(f"{'':24}" + "".join(f"{name:>12}" for name in names))
    for split in ("test", "retained", "forgotten"):
        lines.append(f"{'accuracy ' + split:24}" + "".join(f"{_fmt(metrics['accuracy'][n][split]):>12}" for n in names))
    lines.append(
        f"{'membership AUC':24}" + "".join(f"{_fmt(metrics['membership_inference_auc'][n]):>12}" for n in names)
    )
    for key, label in (
        ("disagreement_with_retrained", "disagreement w/ retrained"),
        ("parameter_l2_to_retrained", "L2 to retrained"),
    ):
        if key in metrics:
            lines.append(f"{label:24}" + "".join(f"{_fmt(metrics[key].get(n)):>12}" for n in names))
    lines.append(f"storage {_size(metrics['storage_bytes'])}")
    return "\n".join(lines)


def _size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.3g}"
    return str(value)


__all__ = [
    "accuracy_on",
    "membership_auc",
    "parameter_l2",
    "per_sample_loss",
    "render_unlearning",
    "unlearning_metrics",
]
