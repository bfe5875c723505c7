"""The shared VNN-COMP instances (`../shared/vnncomp`, listed with their consensus in ground_truth.csv)
through `uverify vnncomp`'s runner: per category the answers, how many were decided, the VNN-COMP score
against the ground truth (DISPUTED rows are not scored: vnn/results.py says why), and the prepare and
run seconds (wall clock on this machine's cores; VNN-COMP's are on its own hardware, so only our own
figures compare).

Run: `.venv/bin/python bench/vnncomp.py [--root ../shared/vnncomp] [--timeout S] [--out DIR]`.
`--timeout` caps each row's own limit (116 s for ACAS Xu, 120 s for MNIST); the full run takes about
40 s on two cores (every instance decided: the longest is mnistfc prop_0_0.05, about 9 s, falsified by
the MILP's feasibility search inside branch and bound). Last, each instance beside α,β-CROWN's 2021
answer and time from ground_truth.csv.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from uverify.vnn.results import InstanceResult, read_instances, render_score
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
    print()
    print(beside_abcrown(listing, results))


def beside_abcrown(listing: Path, results: list[InstanceResult]) -> str:
    """Per instance: the consensus, our answer, stage and run seconds, and α,β-CROWN's 2021 answer and
    wall time (GPU, with its ~6-7 s start-up) from ground_truth.csv, matched by file names."""
    with listing.open(newline="", encoding="utf-8") as handle:
        rows = {(Path(r["onnx"]).name, Path(r["vnnlib"]).name): r for r in csv.DictReader(handle)}
    lines = [f"{'instance':44} {'consensus':14} {'uverify':8} {'stage':9} {'run s':>7}  {'abcrown':8} {'s':>6}"]
    for r in results:
        key = (Path(r.onnx).name, Path(r.vnnlib).name)
        g = rows.get(key, {})
        name = f"{key[0].replace('_batch_2000.onnx', '').replace('.onnx', '')} {key[1].replace('.vnnlib', '')}"
        abcrown_s = float(g.get("abcrown_2021_runtime_s") or "nan")
        lines.append(
            f"{name:44} {g.get('consensus_result', '?'):14} {r.result:8} {r.stage or '-':9} {r.run_seconds:7.1f}  "
            f"{g.get('abcrown_2021_result', '?'):8} {abcrown_s:6.1f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
