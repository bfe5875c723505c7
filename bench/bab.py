"""Benchmark of complete verification: what branch and bound adds to `uverify check`, side by side.

For the default mixture MLP and the digits CNN, trained here (standard and PGD-adversarial training),
exported to ONNX and checked through `uverify check`'s own code path over the spec's epsilon sweep on
the spec's samples: the same check without and with `verify.complete` (auto mode, or each of --modes).
Per epsilon: the fraction of samples left unknown by the incomplete pass and after branch and bound,
the fraction of those it decided, the incomplete check's seconds per sample beside BaB's seconds per
attempted and per decided sample, and the stop reasons.

Run: `.venv/bin/python bench/bab.py` (about 10 minutes on 2 cores; --only, --training, --epochs and
--timeout shorten it; `--modes auto,input,relu` compares the split kinds on the same models).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from uverify.datasets import load
from uverify.models import build_model, export_onnx
from uverify.specs.load import load_spec
from uverify.specs.schema import Spec
from uverify.unlearning.train import Trainer
from uverify.verifier.check import check
from uverify.verifier.report import EpsilonResult
from uverify.verifier.samples import samples_from_spec

HEADER = (
    f"{'training, mode':24} {'epsilon':>7} {'unknown':>8} {'after':>8} {'decided':>8} {'s/sample':>9} "
    f"{'s/attempt':>9} {'s/decided':>9}  stop reasons"
)


def prepare(name: str, epochs: int | None, adversarial: bool, workdir: Path) -> tuple[Spec, Path, float]:
    """Train the spec's model (standard or Madry PGD) and export it; the seconds it took."""
    started = time.perf_counter()
    spec = load_spec(name)
    splits = load(spec.data)
    model = build_model(spec.model, splits.train.input_shape, splits.train.num_classes, seed=0)
    kind = spec.adversarial_or_default() if adversarial else None
    Trainer(model, spec.train, adversarial=kind, norm=spec.property.norm).fit(
        splits.train, epochs or spec.train.epochs, progress=False
    )
    path = workdir / f"{name}-{'adversarial' if adversarial else 'standard'}.onnx"
    export_onnx(model, path, splits.train.X[:64])
    return spec, path, time.perf_counter() - started


def with_complete(spec: Spec, complete: dict[str, Any]) -> Spec:
    raw = spec.model_dump(mode="json")
    raw["verify"]["complete"] = complete
    return Spec.model_validate(raw)


def row(label: str, before: EpsilonResult, after: EpsilonResult, n: int, per_sample: float) -> str:
    c = after.complete
    assert c is not None
    decided = c.verified + c.falsified
    fraction = decided / c.attempted if c.attempted else float("nan")
    per_attempt = c.seconds / c.attempted if c.attempted else float("nan")
    per_decided = c.seconds / decided if decided else float("nan")
    stops = ", ".join(f"{k} {v}" for k, v in c.stop_reasons.items() if v) or "-"
    return (
        f"{label:24} {before.epsilon:7g} {before.counts.unknown / n:8.3f} {after.counts.unknown / n:8.3f} "
        f"{fraction:8.3f} {per_sample:9.3f} {per_attempt:9.3f} {per_decided:9.3f}  {stops}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=["mixture", "digits"])
    parser.add_argument("--training", default="standard,adversarial", help="comma-separated: standard, adversarial")
    parser.add_argument("--modes", default="auto", help="comma-separated branch-and-bound modes: auto, input, relu")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the spec's)")
    parser.add_argument("--timeout", type=float, default=30.0, help="branch-and-bound budget per sample, seconds")
    args = parser.parse_args()
    print(
        "Branch and bound after the incomplete check (the spec's bounds, then PGD), per epsilon of the sweep.\n"
        "unknown, after: fraction of all samples left unknown before and after BaB; decided: fraction of those\n"
        "BaB decided; s/sample: the incomplete check's seconds per sample; s/attempt, s/decided: BaB seconds\n"
        f"per sample it ran on and per sample it decided ({args.timeout:g} s budget each)."
    )
    names = [args.only] if args.only else ["mixture", "digits"]
    trainings = [t.strip() for t in args.training.split(",") if t.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for training in trainings:
                spec, path, trained = prepare(name, args.epochs, training == "adversarial", Path(tmp))
                samples, domain = samples_from_spec(spec)
                n = len(samples.y)
                print(f"\n{name} {training} ({spec.model.arch}, trained in {trained:.0f} s), {n} samples")
                print(HEADER)
                t0 = time.perf_counter()
                before = check(path, spec, samples, domain, progress=False)
                per_sample = (time.perf_counter() - t0) / (n * len(spec.property.epsilon))
                for mode in modes:
                    complete = {"timeout_s": args.timeout, "mode": mode}
                    after = check(path, with_complete(spec, complete), samples, domain, progress=False)
                    for b, a in zip(before.results, after.results, strict=True):
                        chosen = a.complete.mode if a.complete else "?"
                        print(row(f"{training}, {mode} ({chosen})", b, a, n, per_sample))


if __name__ == "__main__":
    main()
