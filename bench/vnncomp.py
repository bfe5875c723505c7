"""The shared VNN-COMP instances (`../shared/vnncomp`, listed with their consensus in ground_truth.csv)
through `uverify vnncomp`'s runner: per category the answers, how many were decided, the VNN-COMP score
against the ground truth (DISPUTED rows count as sat), and the prepare and run seconds (wall clock on
this machine's cores; VNN-COMP's are on its own hardware, so only our own figures compare).

Run: `.venv/bin/python bench/vnncomp.py [--root ../shared/vnncomp] [--timeout S] [--out DIR]`.
`--timeout` caps each row's own limit (116 s for ACAS Xu, 120 s for MNIST); the full run takes about
ten minutes on two cores, most of it on the ACAS Xu instances that need branch and bound.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from uverify.vnn.results import read_instances, render_score
from uverify.vnn.runner import run_instances

ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "vnncomp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="the folder holding ground_truth.csv")
    parser.add_argument("--timeout", type=float, default=None, help="cap on each instance's timeout (seconds)")
    parser.add_argument("--out", type=Path, default=None, help="folder for results.csv and the result files")
    args = parser.parse_args()
    listing = args.root / "ground_truth.csv"
    if not listing.is_file():
        raise SystemExit(f"no {listing}: give --root")
    instances = read_instances(listing, args.root)
    out = args.out or Path(tempfile.mkdtemp(prefix="uverify-vnncomp-"))
    started = time.monotonic()
    results = run_instances(instances, out / "results.csv", timeout_cap=args.timeout, echo=print)
    wall = time.monotonic() - started
    print()
    print(render_score(results))
    wrong = [r for r in results if r.truth is not None and r.result in ("sat", "unsat") and r.result != r.truth]
    for r in wrong:
        print(f"WRONG: {r.onnx} {r.vnnlib}: {r.result}, truth {r.truth}")
    by_stage: dict[str, int] = {}
    for r in results:
        if r.stage:
            by_stage[r.stage] = by_stage.get(r.stage, 0) + 1
    print("decided by stage: " + ", ".join(f"{k} {v}" for k, v in sorted(by_stage.items())))
    print(f"{len(results)} instances answered in {wall:.1f} s wall; results: {out / 'results.csv'}")


if __name__ == "__main__":
    main()
