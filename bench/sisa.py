"""SISA deletion time against retraining from scratch, measured side by side in one run.

For each data set (mixture, and loan on a generated Lending Club file of the real format) and each
S in {1, 5, 10} shards x R in {1, 4} slices:
  * train SISA once (checkpoints after every slice);
  * one deletion: `--single` separate single-id requests, each on a fresh copy of the trained run,
    timed from the request to M' (the shard retrained from its checkpoint);
  * 1% deletion: one request of 1% of the training ids (seeded);
  * baseline: right after each deletion, retraining from scratch without the same ids = one model
    (S=1, R=1: the spec's E epochs over all data); the speed-up is the median of those paired ratios,
    shown beside the expected S*3R/(2R+1) (one deletion, uniform over slices, equal epoch budgets).
    "speed-up" is end to end (checkpoint reads, manifest, loading M'); "training" counts only the
    retraining of the touched shards, the quantity the formula models;
  * the test accuracy of each ensemble.

Run: `make bench-sisa` or `.venv/bin/python bench/sisa.py [--datasets mixture] [--loan-rows 60000]`.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from uverify.datasets import Splits, load
from uverify.specs.load import load_spec
from uverify.specs.schema import Spec
from uverify.testing.loan import write_loan_csv
from uverify.unlearning.metrics import accuracy_on
from uverify.unlearning.sisa import Sisa

GRID = [(1, 1), (1, 4), (5, 1), (5, 4), (10, 1), (10, 4)]


def with_sisa(spec: Spec, shards: int, slices: int) -> Spec:
    sisa = spec.unlearning.sisa.model_copy(update={"shards": shards, "slices": slices})
    return spec.model_copy(update={"unlearning": spec.unlearning.model_copy(update={"sisa": sisa})})


T = TypeVar("T")


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[float, T]:
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - started, out


def bench_dataset(name: str, spec: Spec, splits: Splits, workdir: Path, singles: int) -> None:
    train, test = splits.train, splits.test
    rng = np.random.default_rng(0)
    one_ids = [np.array([i]) for i in rng.choice(train.ids, size=singles, replace=False)]
    percent = np.sort(rng.choice(train.ids, size=max(1, round(0.01 * len(train))), replace=False))
    # the baseline, retraining from scratch: one model, E epochs over the retained data
    scratch = Sisa(with_sisa(spec, 1, 1), train, None)
    print(f"\n{name}: {len(train)} train / {len(test)} test, {spec.train.epochs} epochs, batch {spec.train.batch_size}")
    print(
        f"{'S':>3} {'R':>3} {'train s':>8} {'scratch s':>9} {'del 1 s':>8} {'speed-up':>9} {'training':>9} "
        f"{'expected':>9} {'of exp.':>7} {'del 1% s':>9} {'speed-up':>9} {'shards':>7} {'test acc':>9}"
    )
    for shards, slices in GRID:
        sisa = Sisa(with_sisa(spec, shards, slices), train, None)
        trained = workdir / f"{name}_{shards}x{slices}"
        train_s, (model, _) = timed(sisa.fit, trained, progress=False)
        acc = accuracy_on(model, test)
        ratios, work_ratios, deletion_times, scratch_times = [], [], [], []
        for ids in [*one_ids, percent]:  # each deletion timed right beside its own retraining from scratch
            copy = workdir / "copy"
            shutil.copytree(trained, copy)
            deletion, (_, touched) = timed(sisa.unlearn, copy, ids, ids, progress=False)
            shutil.rmtree(copy)
            baseline, _ = timed(scratch.fit, workdir / "scratch", exclude=ids, progress=False)
            shutil.rmtree(workdir / "scratch")
            ratios.append(baseline / deletion)
            work_ratios.append(baseline / sum(t["seconds"] for t in touched))
            deletion_times.append(deletion)
            scratch_times.append(baseline)
        shutil.rmtree(trained)
        expected = shards * 3 * slices / (2 * slices + 1)
        one, work = statistics.median(ratios[:-1]), statistics.median(work_ratios[:-1])
        print(
            f"{shards:>3} {slices:>3} {train_s:>8.2f} {statistics.median(scratch_times):>9.2f} "
            f"{statistics.median(deletion_times[:-1]):>8.3f} {one:>8.2f}x {work:>8.2f}x {expected:>8.2f}x "
            f"{work / expected:>7.2f} {deletion_times[-1]:>9.2f} {ratios[-1]:>8.2f}x {len(touched):>3}/{shards:<3} "
            f"{acc:>9.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["mixture", "loan"], choices=["mixture", "loan"])
    parser.add_argument("--single", type=int, default=5, help="single-id deletions timed per configuration")
    parser.add_argument("--loan-rows", type=int, default=30_000, help="rows of the generated Lending Club file")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: one thread is as fast, and far less noisy beside other work
    print("torch threads 1; times are wall seconds of training only (no export)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in args.datasets:
            if name == "mixture":
                spec = load_spec("mixture")
            else:
                csv = workdir / "accepted_2007_to_2018Q4.csv"
                write_loan_csv(csv, args.loan_rows, seed=0)
                spec = load_spec("loan", {"data.path": str(csv), "data.subsample": None})
            bench_dataset(name, spec, load(spec.data), workdir, args.single)


if __name__ == "__main__":
    main()
