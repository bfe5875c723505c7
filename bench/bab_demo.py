"""What `uverify demo --complete` would cost: branch and bound on the demo's unknown samples, two ways.

Runs the demo's study (`uverify demo`, timed) or reads one already run (--demo DIR), then for each
model M and M' and each epsilon with unknown samples, runs `uverify check`'s branch-and-bound stage
(`CompleteStage`, the check's own judge) on up to --limit of them, side by side:

* `bab`: β-CROWN branch and bound alone (exact_share 0: no MILP at the root);
* `default`: the configuration `uverify check --complete` uses (the root MILP first on
  one-hidden-layer nets, SISA's mean of MLPs included, then β-CROWN BaB in the time left).

Per cell: the demo's unknown count, samples tried, decided, seconds per tried and per decided sample,
the stop reasons. Last, the projection: every cell's unknown count × its measured seconds per tried
sample, summed, beside the demo's own time (the issue's target: the demo with --complete within 2× the
demo, i.e. BaB's total at most the demo's time).

Run: `.venv/bin/python bench/bab_demo.py [--demo runs/demo] [--limit 3] [--timeout 10] [--configs
bab,default] [--runs sisa-standard,...]` (about 10 minutes on two cores with the defaults; --limit 2
--configs default about 3).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from uverify.specs.load import load_spec
from uverify.specs.schema import CompleteSpec
from uverify.verifier import check as check_module
from uverify.verifier.bab import BabConfig, BranchAndBound
from uverify.verifier.bab.stage import CompleteStage
from uverify.verifier.bounds import Bounder
from uverify.verifier.samples import samples_from_spec

RUNS = ("sisa-standard", "sisa-adversarial", "amnesiac-standard", "amnesiac-adversarial")
REPORTS = (("M", "report_before.json"), ("M'", "report_after.json"))


@dataclass
class Cell:
    unknown: int
    tried: int
    decided: int
    seconds: float
    stops: dict[str, int]

    @property
    def per_tried(self) -> float:
        return self.seconds / self.tried if self.tried else 0.0


def run_demo(out: Path) -> float:
    started = time.perf_counter()
    subprocess.run(
        [str(Path(sys.executable).parent / "uverify"), "demo", "--out", str(out), "--quiet"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def config_for(name: str, timeout: float) -> BabConfig:
    if name == "bab":
        return BabConfig(timeout_s=timeout, exact_share=0.0)
    if name == "default":
        return BabConfig(timeout_s=timeout)
    raise SystemExit(f"unknown configuration {name!r}: bab or default")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, default=None, help="a demo's output folder (default: run the demo)")
    parser.add_argument("--limit", type=int, default=3, help="unknown samples tried per model and epsilon")
    parser.add_argument("--timeout", type=float, default=10.0, help="branch-and-bound budget per sample, seconds")
    parser.add_argument("--configs", default="bab,default")
    parser.add_argument("--runs", default=",".join(RUNS))
    args = parser.parse_args()
    torch.set_num_threads(1)  # the study's setting for these small models
    demo_seconds = None
    folder = args.demo
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="uverify-bab-demo-"))
        demo_seconds = run_demo(folder)
        print(f"uverify demo: {demo_seconds:.1f} s")
    spec = load_spec("mixture")
    samples, domain = samples_from_spec(spec)
    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    cells: dict[tuple[str, str, str, float], Cell] = {}
    print(
        f"{'model':28} {'eps':>5} {'config':8} {'unknown':>7} {'tried':>5} {'decided':>7} {'s/tried':>8} "
        f"{'s/decided':>9}  stops"
    )
    for run in [r.strip() for r in args.runs.split(",") if r.strip()]:
        for which, name in REPORTS:
            report = json.loads((folder / run / name).read_text())
            target = check_module._load_target(Path(report["model"]["path"]))
            inputs = check_module._prepare_inputs(target, samples, domain, spec)
            bounder = Bounder(target.members[0], target.input_shape, "CROWN", num_classes=inputs.num_classes)
            row_of = {int(sid): i for i, sid in enumerate(inputs.ids)}
            stage = CompleteStage(bounder, CompleteSpec(timeout_s=args.timeout), target.referee, "inf",
                                  inputs.lower, inputs.upper)  # fmt: skip
            for k, result in enumerate(report["results"]):
                eps = float(result["epsilon"])
                unknown = [row_of[int(s["id"])] for s in report["samples"] if s["verdicts"][k] == "unknown"]
                if not unknown:
                    continue
                for config in configs:
                    stage.bab = BranchAndBound(bounder, config_for(config, args.timeout))
                    cell = Cell(len(unknown), 0, 0, 0.0, {})
                    for i in unknown[: args.limit]:
                        decision = stage.decide(inputs.x[i], int(inputs.y[i]), eps)
                        cell.tried += 1
                        cell.decided += decision.status in ("verified", "falsified")
                        cell.seconds += decision.seconds
                        cell.stops[decision.status] = cell.stops.get(decision.status, 0) + 1
                    cells[(run, which, config, eps)] = cell
                    per_decided = cell.seconds / cell.decided if cell.decided else float("nan")
                    stops = ", ".join(f"{s} {n}" for s, n in sorted(cell.stops.items()))
                    print(
                        f"{run + ' ' + which:28} {eps:5g} {config:8} {cell.unknown:7d} {cell.tried:5d} "
                        f"{cell.decided:7d} {cell.per_tried:8.3f} {per_decided:9.3f}  {stops}", flush=True,
                    )  # fmt: skip
    print("\nprojection over every unknown of the demo (unknown x measured s/tried, summed):")
    totals = {}
    for config in configs:
        mine = [c for key, c in cells.items() if key[2] == config]
        total = sum(c.unknown * c.per_tried for c in mine)
        count = sum(c.unknown for c in mine)
        decided = sum(c.decided for c in mine) / max(1, sum(c.tried for c in mine))
        totals[config] = total
        print(f"  {config:8} {count} unknowns, {total:7.1f} s projected, {decided:.0%} of those tried decided")
    if len(totals) == 2 and all(totals.values()):
        print(f"  bab / default: {totals['bab'] / totals['default']:.1f}x")
    if demo_seconds is not None:
        for config, total in totals.items():
            print(f"  demo + {config}: {(demo_seconds + total) / demo_seconds:.1f}x the demo's {demo_seconds:.1f} s")


if __name__ == "__main__":
    main()
