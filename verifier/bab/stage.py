"""`uverify check`'s last stage: branch and bound on one sample's L_p-ball property.

The property is the check's own (ball ∩ domain for norm inf, the ball for norms 2 and 1), written as
`verifier/property.py`'s disjunction z_j − z_y >= 0 over j ≠ y, and the judge is the check's own:
`confirm_counterexamples`, onnxruntime on the file, strictly inside the open ball and the domain,
misclassified there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from uverify.specs.schema import CompleteSpec
from uverify.verifier.bab import BabConfig, BranchAndBound, Region, choose_mode
from uverify.verifier.bounds import Bounder
from uverify.verifier.counterexamples import Judge, confirm_counterexamples
from uverify.verifier.property import robustness


@dataclass(frozen=True)
class SampleDecision:
    status: str  # a BaB stop reason
    seconds: float
    domains: int
    x_adv: np.ndarray | None  # the confirmed counterexample, as onnxruntime checked it
    logits: np.ndarray | None  # onnxruntime's logits there


class CompleteStage:
    """Branch and bound for one check: one BranchAndBound (one trace of the model) for every sample."""

    def __init__(
        self,
        bounder: Bounder,
        spec: CompleteSpec,
        referee: Judge,
        norm: str,
        lower: np.ndarray,
        upper: np.ndarray,
    ) -> None:
        self.spec, self.referee, self.norm = spec, referee, norm
        self.lower, self.upper = lower, upper
        inputs = int(np.prod(lower.shape))
        self.mode = choose_mode(spec.mode, inputs, norm)  # a BabError: the check falls back, saying why
        config = BabConfig(timeout_s=spec.timeout_s, mode=self.mode, memory_mb=spec.memory_mb)
        self.bab = BranchAndBound(bounder, config)
        self.num_classes = bounder.num_classes

    def decide(self, x: np.ndarray, y: int, eps: float) -> SampleDecision:
        """Branch and bound on the ball of radius eps around x (one sample, the model's input shape)."""
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        lo_t, hi_t = torch.from_numpy(self.lower), torch.from_numpy(self.upper)
        if self.norm == "inf":
            region = Region.box(torch.maximum(xt - eps, lo_t), torch.minimum(xt + eps, hi_t))
        else:
            region = Region(xt, lo_t, hi_t, self.norm, float(eps))
        violation = robustness(np.zeros(1), np.zeros(1), y, self.num_classes).violation
        kept: dict[str, np.ndarray] = {}

        def judge(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            m = len(points)
            conf = confirm_counterexamples(
                self.referee, np.repeat(x[None], m, 0), points.astype(np.float32), np.full(m, y), eps, self.norm,
                self.lower, self.upper,
            )  # fmt: skip
            if conf.confirmed.any():
                first = int(np.flatnonzero(conf.confirmed)[0])
                kept.setdefault("x_adv", conf.x_adv[first])
                kept.setdefault("logits", conf.logits[first])
            return conf.confirmed, conf.x_adv

        result = self.bab.run(region, violation, judge)
        if result.status == "falsified":
            return SampleDecision(result.status, result.seconds, result.domains, kept["x_adv"], kept["logits"])
        return SampleDecision(result.status, result.seconds, result.domains, None, None)
