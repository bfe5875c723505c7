"""Re-checking M′ after a SISA deletion with certificate reuse against the full check, side by side.

For each data set (mixture, and loan on a generated Lending Club file of the real format), S in {5, 10}
shards and aggregation in {mean_logits, majority_vote}:
  * train SISA (one slice per shard: the check does not care), check M once with reuse, which fills the
    run's certificate cache with every shard's certificates;
  * delete one training id: SISA retrains the one shard that held it, M′ replaces M;
  * time `check_run(M′, reuse=False)` (the full check) and `check_run(M′)` (the untouched shards'
    certificates reused, the touched shard bounded again), interleaved, `--repeats` times each, the
    cache put back to its after-deletion state before every reused check; ratios are of medians;
  * verdicts must be identical and every margin bound within 1e-6 (the bench stops if not).

Columns: `full s` / `reuse s` the whole check (samples, model import, bounds, PGD on the uncertified
samples, onnxruntime replay, report), `speed-up` their ratio against the target 0.8·S; `PGD s` the
seconds of PGD and its onnxruntime replay, the same work in both checks (reuse cannot shorten it);
`w/o PGD` the ratio of the rest (samples, import, bounds, report), the part reuse changes; `fill` the
first reused check of M (empty cache: every shard bounded on its own) over M's full check.
The property is CROWN at the spec's smallest epsilon over 512 test samples: there most samples are
certified, so PGD, which reuse cannot shorten, runs on few of them (`unc.`: uncertified share).

What bounds the speed-up (measured on the configurations above, per phase): the reused check does
exactly the full check's PGD on the uncertified samples (the same samples, batches and seeds, so the
report is the same; a previous counterexample replayed on M′ could falsify a sample fresh PGD does
not, so it cannot stand in for the attack), and where many samples stay uncertified (the mixture's
majority vote at S=10: 55%) PGD is most of either check (the robust ones run all of its steps).
`verifier.check` also imports and validates every member against onnxruntime (for a 10-member vote
~0.35 s, one onnxruntime session per member) before the margins hook is asked, cached or not. What
reuse removes is the bounds of the untouched shards: the `w/o PGD` column.

Run: `.venv/bin/python bench/incremental.py [--datasets mixture loan] [--shards 5 10] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from uverify.pipeline import train_run, unlearn_run
from uverify.specs.load import load_spec, validate_spec
from uverify.specs.schema import Spec
from uverify.testing.loan import write_loan_csv
from uverify.unlearning.sisa import Manifest
from uverify.verifier.incremental import check_run_with_reuse
from uverify.verifier.report import Report

SAMPLES = 512


def configured(spec: Spec, shards: int, aggregation: str, epochs: int) -> Spec:
    raw = spec.model_dump(mode="json")
    raw["data"]["samples"] = SAMPLES
    raw["train"]["epochs"] = epochs
    raw["unlearning"]["sisa"] |= {"shards": shards, "slices": 1, "aggregation": aggregation}
    raw["property"]["epsilon"] = [min(raw["property"]["epsilon"])]
    raw["verify"]["method"] = "CROWN"
    return validate_spec(raw)


def timed_check(run: Path, reuse: bool) -> tuple[float, Report, str]:
    started = time.perf_counter()
    lines: list[str] = []
    report, _ = check_run_with_reuse(run, reuse=reuse, progress=False, notes=lines.append)
    return time.perf_counter() - started, report, lines[0]


def pgd_seconds(report: Report) -> float:
    """PGD and onnxruntime's replay of its points: the same work in both checks, which reuse cannot shorten."""
    return sum(r.seconds.attack + r.seconds.referee for r in report.results)


def same(a: Report, b: Report) -> float:
    """The largest margin difference; raises when a verdict differs or a margin differs by more than 1e-6."""
    worst = 0.0
    for x, y in zip(a.samples, b.samples, strict=True):
        if x.verdicts != y.verdicts:
            raise SystemExit(f"verdicts differ on sample {x.id}: {x.verdicts} vs {y.verdicts}")
        for p, q in zip(x.margin_lower_bounds, y.margin_lower_bounds, strict=True):
            if (p is None) != (q is None) or (p is not None and q is not None and abs(p - q) > 1e-6):
                raise SystemExit(f"margin bounds differ on sample {x.id}: {p} vs {q}")
            if p is not None and q is not None:
                worst = max(worst, abs(p - q))
    return worst


def bench(name: str, spec: Spec, shards: int, aggregation: str, workdir: Path, repeats: int, epochs: int) -> str:
    spec = configured(spec, shards, aggregation, epochs)
    run = workdir / f"{name}_{shards}_{aggregation}"
    train_run(spec, run, adversarial=False, progress=False)
    full_m, _, _ = timed_check(run, reuse=False)
    fill_m, _, _ = timed_check(run, reuse=True)  # M: every shard's certificates into the cache
    manifest = Manifest.load(run / "sisa" / "manifest.npz")
    unlearn_run(run, ids=manifest.ids[manifest.shard == shards // 2][:1], progress=False)
    saved = workdir / "certificates"
    shutil.copytree(run / "certificates", saved)
    fulls, reuses, full_pgd, reuse_pgd = [], [], [], []
    worst, note = 0.0, ""
    for _ in range(repeats):
        seconds, full, _ = timed_check(run, reuse=False)
        fulls.append(seconds)
        full_pgd.append(pgd_seconds(full))
        shutil.rmtree(run / "certificates")
        shutil.copytree(saved, run / "certificates")  # as the deletion left it: the touched shard's missing
        seconds, reused, note = timed_check(run, reuse=True)
        reuses.append(seconds)
        reuse_pgd.append(pgd_seconds(reused))
        worst = max(worst, same(full, reused))
    shutil.rmtree(saved)
    shutil.rmtree(run)
    full_s, reuse_s = statistics.median(fulls), statistics.median(reuses)
    pgd = statistics.median(full_pgd + reuse_pgd)
    rest = statistics.median(f - p for f, p in zip(fulls, full_pgd, strict=True)) / statistics.median(
        r - p for r, p in zip(reuses, reuse_pgd, strict=True)
    )
    counts = full.results[0].counts
    uncertified = (counts.falsified + counts.unknown) / max(1, len(full.samples) - counts.misclassified)
    entries = note.removeprefix("certificate reuse: ").split(" (shard")[0]
    return (
        f"{name:<8} {aggregation:<14} {shards:>3} {full_s:>7.2f} {reuse_s:>8.2f} {full_s / reuse_s:>8.2f}x "
        f"{0.8 * shards:>7.1f}x {'yes' if full_s / reuse_s >= 0.8 * shards else 'no':>4} {pgd:>6.2f} {rest:>7.2f}x "
        f"{fill_m / full_m:>6.2f} {uncertified:>5.0%} {entries:>9} {'identical':>10} {worst:>9.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mixture", "loan"], choices=["mixture", "loan"])
    parser.add_argument("--shards", nargs="+", type=int, default=[5, 10])
    parser.add_argument("--aggregations", nargs="+", default=["mean_logits", "majority_vote"])
    parser.add_argument("--repeats", type=int, default=3, help="timed full and reused checks, interleaved")
    parser.add_argument(
        "--epochs", type=int, default=5, help="training epochs (the check's cost does not depend on them)"
    )
    parser.add_argument("--loan-rows", type=int, default=30_000, help="rows of the generated Lending Club file")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: one thread is as fast, and far less noisy beside other work
    print(f"torch threads 1; CROWN, {SAMPLES} samples, the spec's smallest epsilon; medians of {args.repeats}")
    print(
        f"{'data':<8} {'aggregation':<14} {'S':>3} {'full s':>7} {'reuse s':>8} {'speed-up':>9} {'target':>8} "
        f"{'met':>4} {'PGD s':>6} {'w/o PGD':>8} {'fill':>6} {'unc.':>5} {'reused':>9} {'verdicts':>10} {'max diff':>9}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in args.datasets:
            if name == "mixture":
                spec = load_spec("mixture")
            else:
                csv = workdir / "accepted_2007_to_2018Q4.csv"
                write_loan_csv(csv, args.loan_rows, seed=0)
                spec = load_spec("loan", {"data.path": str(csv), "data.subsample": None})
            for shards in args.shards:
                for aggregation in args.aggregations:
                    line = bench(name, spec, shards, aggregation, workdir, args.repeats, args.epochs)
                    print(line, flush=True)


if __name__ == "__main__":
    main()
