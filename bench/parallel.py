"""Speed-up of 2 workers over serial, and the Dask path's overhead at 1 worker, measured side by side
in one run (compute.py's executors):

  (a) SISA training, S=4 shards, on a generated Lending Club file of the real format;
  (b) a deletion touching 2 of those shards (ids from two shards' first slices);
  (d) the demo study (the shipped mixture spec: 4 cells of train, check, unlearn, check).

Each case runs serially (the reference), on Dask with 2 workers and on a local pool of 2 processes,
and (a) also on Dask with 1 worker. "cold" is what a command pays end to end (the cluster's start,
the workers' torch import, the tasks, the teardown); "warm" reuses an open executor (tasks only), what
a long-lived cluster gives. Every parallel run's files are checked byte for byte against the serial
run's. The machine's load average is printed before and after: on a shared machine a ratio is only
as good as the cores it got.

Run: `.venv/bin/python bench/parallel.py [--loan-rows 20000] [--epochs 6] [--skip-study]`.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from uverify.compute import SERIAL, Executor, open_executor
from uverify.datasets import Splits, load
from uverify.pipeline import train_run, unlearn_run
from uverify.specs.load import load_spec
from uverify.specs.schema import ComputeSpec, Spec
from uverify.study import study
from uverify.testing.loan import write_loan_csv
from uverify.unlearning.sisa import Manifest, Sisa

DASK2 = ComputeSpec(executor="dask", workers=2)
DASK1 = ComputeSpec(executor="dask", workers=1)
POOL2 = ComputeSpec(executor="processes", workers=2)


def files_digest(folder: Path) -> str:
    """One hash over every model file (checkpoints, weights, manifest, ONNX, deleted ids) of a folder."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix in (".pt", ".safetensors", ".npz", ".onnx", ".npy"):
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def loan_spec(csv: Path, epochs: int) -> Spec:
    spec = load_spec("loan", {"data.path": str(csv), "data.subsample": None})
    sisa = spec.unlearning.sisa.model_copy(update={"shards": 4, "slices": 2})
    return spec.model_copy(
        update={
            "unlearning": spec.unlearning.model_copy(update={"sisa": sisa}),
            "train": spec.train.model_copy(update={"epochs": epochs}),
        }
    )


def sisa_fit(spec: Spec, splits: Splits, folder: Path, executor: Executor) -> None:
    sisa = Sisa(spec, splits.train, None)
    sisa.executor = executor
    sisa.fit(folder, progress=False)


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, float, float, str]] = []

    def add(self, case: str, how: str, seconds: float, serial: float, same: bool | None) -> None:
        check = "-" if same is None else ("identical" if same else "DIFFERENT")
        self.rows.append((case, how, seconds, serial / seconds, check))
        print(f"  {case:<34} {how:<22} {seconds:8.2f} s  {serial / seconds:5.2f}x  {check}", flush=True)


def bench_sisa(spec: Spec, splits: Splits, work: Path, table: Table) -> Path:
    """(a): training the S=4 ensemble; returns the serial run (the deletion's starting point)."""
    case = "(a) SISA train S=4 (loan)"
    serial_run = work / "a-serial"
    serial = timed(lambda: train_run(spec, serial_run, adversarial=False, progress=False))
    table.add(case, "serial", serial, serial, None)
    reference = files_digest(serial_run)
    for name, compute in (("dask 2 workers", DASK2), ("processes 2", POOL2), ("dask 1 worker", DASK1)):
        run = work / f"a-{name.replace(' ', '-')}"
        seconds = timed(lambda: train_run(spec, run, adversarial=False, progress=False, compute=compute))
        table.add(case, f"{name}, cold", seconds, serial, files_digest(run) == reference)
    # warm: the shards alone, on an executor already open (serial measured the same way)
    warm_serial = timed(lambda: sisa_fit(spec, splits, work / "a-warm-serial", SERIAL))
    table.add(case + " [shards only]", "serial", warm_serial, warm_serial, None)
    shards_reference = files_digest(work / "a-warm-serial")
    for name, compute in (("dask 2 workers", DASK2), ("dask 1 worker", DASK1)):
        folder = work / f"a-warm-{name.replace(' ', '-')}"
        with open_executor(compute) as executor:
            seconds = timed(lambda: sisa_fit(spec, splits, folder, executor))
        same = files_digest(folder) == shards_reference
        table.add(case + " [shards only]", f"{name}, warm", seconds, warm_serial, same)
    return serial_run


def two_shard_ids(run: Path, splits: Splits) -> np.ndarray:
    """Ids from the first slice of shards 0 and 2: the deletion retrains both shards whole."""
    manifest = Manifest.load(run / "sisa" / "manifest.npz")
    picks = [manifest.ids[(manifest.shard == k) & (manifest.slice == 0)][:3] for k in (0, 2)]
    return np.sort(np.concatenate(picks))


def bench_deletion(serial_run: Path, splits: Splits, work: Path, table: Table) -> None:
    case = "(b) deletion touching 2 shards"
    ids = two_shard_ids(serial_run, splits)
    runs = {}
    for name in ("serial", "dask 2 workers", "processes 2"):
        runs[name] = work / f"b-{name.replace(' ', '-')}"
        shutil.copytree(serial_run, runs[name])
    serial = timed(lambda: unlearn_run(runs["serial"], ids=ids, splits=splits, progress=False))
    table.add(case, "serial", serial, serial, None)
    reference = files_digest(runs["serial"])
    touched = len(unlearn_touched(runs["serial"]))
    assert touched == 2, touched
    for name, compute in (("dask 2 workers", DASK2), ("processes 2", POOL2)):
        seconds = timed(lambda: unlearn_run(runs[name], ids=ids, splits=splits, progress=False, compute=compute))
        table.add(case, f"{name}, cold", seconds, serial, files_digest(runs[name]) == reference)


def unlearn_touched(run: Path) -> list[Any]:
    import json

    return list(json.loads((run / "deletions.json").read_text())[-1]["touched"])


def cell_digests(out: Path) -> list[str]:
    """The model files' hash of each cell's run directory (`<method>-<training>/`)."""
    return [files_digest(out / cell) for cell in sorted(os.listdir(out)) if "-" in cell]


def bench_study(work: Path, table: Table) -> None:
    case = "(d) demo study (mixture, 4 cells)"
    spec = load_spec("mixture")
    quiet: Callable[[str], None] = lambda line: None  # noqa: E731
    serial = timed(lambda: study(spec, work / "d-serial", progress=False, echo=quiet))
    table.add(case, "serial", serial, serial, None)
    reference = cell_digests(work / "d-serial")
    for name, compute in (("dask 2 workers", DASK2), ("processes 2", POOL2)):
        out = work / f"d-{name.replace(' ', '-')}"
        seconds = timed(lambda: study(spec, out, progress=False, echo=quiet, compute=compute))
        table.add(case, f"{name}, cold", seconds, serial, cell_digests(out) == reference)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loan-rows", type=int, default=20_000, help="rows of the generated Lending Club file")
    parser.add_argument("--epochs", type=int, default=6, help="train.epochs of the loan spec")
    parser.add_argument("--skip-study", action="store_true", help="leave out (d)")
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    work = Path(tempfile.mkdtemp(prefix="uverify-bench-parallel."))
    os.environ.setdefault("UVERIFY_CACHE_DIR", str(work / "cache"))
    try:
        csv = write_loan_csv(work / "accepted_2007_to_2018Q4.csv", args.loan_rows, seed=0)
        spec = loan_spec(csv, args.epochs)
        splits = load(spec.data)
        print(
            f"loan: {len(splits.train)} train rows, SISA 4 shards x 2 slices, {args.epochs} epochs, mlp "
            f"{spec.model.hidden}; ratio = serial seconds / these seconds"
        )
        table = Table()
        serial_run = bench_sisa(spec, splits, work, table)
        bench_deletion(serial_run, splits, work, table)
        if not args.skip_study:
            bench_study(work, table)
        start = timed(lambda: _open_close(DASK2))
        print(f"  a 2-worker LocalCluster's start + teardown alone: {start:.2f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _open_close(compute: ComputeSpec) -> None:
    with open_executor(compute):
        pass


if __name__ == "__main__":
    main()
