"""Speed-up of 2 workers over serial, and the Dask path's overhead at 1 worker, measured side by side
in one run (compute.py's executors):

  (a) SISA training, S=4 shards, on a generated Lending Club file of the real format;
  (b) a deletion touching 2 of those shards (ids from two shards' first slices);
  (c) `check` of 512 test samples of the mixture spec with CROWN + PGD (50 steps, 3 restarts) at its 3
      epsilons, on a model trained quickly (Amnesiac's single model, 5 epochs): 24 batch tasks; and
      the same with alpha-CROWN, whose optimised bounds make each task a few times heavier;
  (d) the demo study (the shipped mixture spec: 4 cells of train, check, unlearn, check).

Each case runs serially (the reference), on Dask with 2 workers and on a local pool of 2 processes,
and (a) and (c) also on Dask with 1 worker. "cold" is what a command pays end to end (the cluster's start,
the tasks, the teardown) but for the forkserver's start, printed once at the top: every local worker
forks from uverify's forkserver, which a command starts once and which has imported torch and uverify
(compute.forkserver_context); "warm" reuses an open executor (tasks only),
what a long-lived cluster gives (for (c): the workers have imported the verifier on an earlier, smaller
check, and load and trace this check's model once each, as a new model on a long-lived cluster
would). Every parallel run's files are checked byte for byte against the serial run's; for (c), the
report (timings left out) and the counterexamples file. "busy cores" is how many of the machine's
cores were busy during each run, ours and every other process's (with the load average before and
after): on a shared machine a ratio is only as good as the cores it got. "our CPU" is the CPU time this
process and its live descendants (the workers) spent in the run, what the run costs whatever the load
(processes that end within the run, a cold cluster's, are not counted). Every run, serial and each
worker, uses one torch thread (`compute.threads: 1`; serially `torch.set_num_threads(1)`): the bench
prints a training step's time at 1 and at torch's default thread count, which on a busy machine
differ many times over.

Run: `make bench-parallel` or `.venv/bin/python bench/parallel.py [--loan-rows 60000] [--epochs 40] [--skip-study]
[--only c]`.
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
from typing import Any, NamedTuple

import numpy as np
import psutil
import torch

from uverify.compute import SERIAL, Executor, open_executor
from uverify.datasets import Splits, load
from uverify.pipeline import train_run, unlearn_run
from uverify.specs.load import load_spec
from uverify.specs.schema import ComputeSpec, Spec
from uverify.study import study
from uverify.testing.loan import write_loan_csv
from uverify.testing.reports import timeless
from uverify.unlearning.sisa import Manifest, Sisa
from uverify.verifier.check import check, check_and_save
from uverify.verifier.samples import samples_from_spec

# one torch thread in every run, serial and each worker alike (see `step_ms`: on a busy machine torch's
# default of one thread per core makes every step wait for the slowest core)
DASK2 = ComputeSpec(executor="dask", workers=2, threads=1)
DASK1 = ComputeSpec(executor="dask", workers=1, threads=1)
POOL2 = ComputeSpec(executor="processes", workers=2, threads=1)


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


class Timing(NamedTuple):
    seconds: float
    busy: float  # cores the whole machine kept busy meanwhile (ours and every other process's)
    ours: float = 0.0  # CPU seconds of this process and its live descendants (workers) meanwhile


def _our_cpu() -> dict[int, float]:
    """CPU seconds so far of this process and each live descendant (a LocalCluster's nannies and
    workers, a pool's processes), by pid."""
    me = psutil.Process()
    spent = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        spent[proc.pid] = t.user + t.system
    return spent


def measure(fn: Callable[[], Any]) -> Timing:
    """Wall time, and how many of the machine's cores were busy: on a shared machine, what the other
    processes took is what our workers did not get."""
    before, ours_before = psutil.cpu_times(), _our_cpu()
    seconds = timed(fn)
    after, ours_after = psutil.cpu_times(), _our_cpu()
    busy = sum(getattr(after, f) - getattr(before, f) for f in ("user", "system", "nice", "irq", "softirq"))
    ours = sum(cpu - ours_before.get(pid, 0.0) for pid, cpu in ours_after.items())
    return Timing(seconds, busy / seconds, ours)


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
        print(f"  {'case':<66} {'how':<22} {'seconds':>10}  {'ratio':>6}  {'busy cores':>10}  {'our CPU':>9}  files")

    def add(self, case: str, how: str, timing: Timing, serial: Timing, same: bool | None) -> None:
        check = "-" if same is None else ("identical" if same else "DIFFERENT")
        ratio = serial.seconds / timing.seconds
        print(
            f"  {case:<66} {how:<22} {timing.seconds:8.2f} s  {ratio:5.2f}x  {timing.busy:10.2f}  "
            f"{timing.ours:7.2f} s  {check}",
            flush=True,
        )


def bench_sisa(spec: Spec, splits: Splits, work: Path, table: Table) -> Path:
    """(a): training the S=4 ensemble; returns the serial run (the deletion's starting point)."""
    case = "(a) SISA train S=4 (loan)"
    serial_run = work / "a-serial"
    serial = measure(lambda: train_run(spec, serial_run, adversarial=False, progress=False, splits=splits))
    table.add(case, "serial", serial, serial, None)
    reference = files_digest(serial_run)
    for name, compute in (("dask 2 workers", DASK2), ("processes 2", POOL2), ("dask 1 worker", DASK1)):
        run = work / f"a-{name.replace(' ', '-')}"
        seconds = measure(
            lambda: train_run(spec, run, adversarial=False, progress=False, splits=splits, compute=compute)
        )
        table.add(case, f"{name}, cold", seconds, serial, files_digest(run) == reference)
    # warm: the shards alone, on an executor already open (serial measured the same way)
    warm_serial = measure(lambda: sisa_fit(spec, splits, work / "a-warm-serial", SERIAL))
    table.add(case + " [shards only]", "serial", warm_serial, warm_serial, None)
    shards_reference = files_digest(work / "a-warm-serial")
    for name, compute in (("dask 2 workers", DASK2), ("dask 1 worker", DASK1)):
        folder = work / f"a-warm-{name.replace(' ', '-')}"
        with open_executor(compute) as executor:
            seconds = measure(lambda: sisa_fit(spec, splits, folder, executor))
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
    serial = measure(lambda: unlearn_run(runs["serial"], ids=ids, splits=splits, progress=False))
    table.add(case, "serial", serial, serial, None)
    reference = files_digest(runs["serial"])
    touched = len(unlearn_touched(runs["serial"]))
    assert touched == 2, touched
    for name, compute in (("dask 2 workers", DASK2), ("processes 2", POOL2)):
        seconds = measure(lambda: unlearn_run(runs[name], ids=ids, splits=splits, progress=False, compute=compute))
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
    serial = measure(lambda: study(spec, work / "d-serial", progress=False, echo=quiet))
    table.add(case, "serial", serial, serial, None)
    reference = cell_digests(work / "d-serial")
    for name, compute in (("dask 2 workers", DASK2), ("processes 2", POOL2)):
        out = work / f"d-{name.replace(' ', '-')}"
        seconds = measure(lambda: study(spec, out, progress=False, echo=quiet, compute=compute))
        table.add(case, f"{name}, cold", seconds, serial, cell_digests(out) == reference)


def check_digest(report: Any, cex: Path) -> str:
    """One hash over the report (timings left out) and the counterexamples' arrays, bit for bit."""
    import json

    h = hashlib.sha256(json.dumps(timeless(report.model_dump(mode="json")), sort_keys=True).encode())
    with np.load(cex) as arrays:
        for key in sorted(arrays.files):
            h.update(key.encode() + arrays[key].tobytes())
    return h.hexdigest()


def check_spec(samples: int = 512, method: str = "CROWN") -> Spec:
    overrides = {"data.samples": samples, "unlearning.method": "amnesiac", "train.epochs": 5, "verify.method": method}
    return load_spec("mixture", overrides)


def median_timing(timings: list[Timing]) -> Timing:
    ordered = sorted(timings)
    return ordered[len(ordered) // 2]


def bench_check(work: Path, table: Table, method: str = "CROWN", repeats: int = 3) -> None:
    """(c): `check` of 512 samples, bounds + PGD, on the mixture spec's quickly trained model."""
    case = f"(c) check 512 samples, {method} + PGD"
    spec = check_spec(method=method)
    run = work / "c-model"
    if not run.exists():
        train_run(spec, run, adversarial=False, progress=False)
    model = run / "model.onnx"
    work = work / method
    work.mkdir()

    def cold(name: str, compute: ComputeSpec | None) -> tuple[Timing, str, Any]:
        """`uverify check --out` as a command runs it: the executor opened and closed around it."""
        out = work / f"c-{name}.json"
        holder: list[Any] = []
        timing = measure(lambda: holder.append(check_and_save(model, spec, None, out, progress=False, compute=compute)))
        return timing, check_digest(holder[0], out.with_suffix(".counterexamples.npz")), holder[0]

    serial, reference, report = cold("serial", None)
    table.add(case, "serial", serial, serial, None)
    for name, compute in (("dask 2 workers", DASK2), ("processes 2", POOL2), ("dask 1 worker", DASK1)):
        timing, digest, _ = cold(name.replace(" ", "-"), compute)
        table.add(case, f"{name}, cold", timing, serial, digest == reference)

    samples, domain = samples_from_spec(spec)
    small = check_spec(16, method)
    small_samples, small_domain = samples_from_spec(small)

    def warm(name: str, executor: Executor) -> tuple[Timing, str]:
        """`check` alone on an open executor whose workers imported the verifier on a smaller check."""
        cex = work / f"c-warm-{name.replace(' ', '-')}.npz"
        holder: list[Any] = []
        timing = measure(
            lambda: holder.append(
                check(model, spec, samples, domain, progress=False, counterexamples=cex, executor=executor)
            )
        )
        return timing, check_digest(holder[0], cex)

    # warm: every executor open at once and the runs interleaved, `repeats` rounds, the median of each:
    # on a shared machine the other processes' load then falls on all of them alike
    with open_executor(DASK2) as dask2, open_executor(POOL2) as pool2, open_executor(DASK1) as dask1:
        executors: dict[str, Executor] = {
            "serial": SERIAL, "dask 2 workers": dask2, "processes 2": pool2, "dask 1 worker": dask1,
        }  # fmt: skip
        for executor in executors.values():
            check(model, small, small_samples, small_domain, progress=False, executor=executor)  # imports done
        runs: dict[str, list[tuple[Timing, str]]] = {name: [] for name in executors}
        for _ in range(repeats):
            for name, executor in executors.items():
                runs[name].append(warm(name, executor))
    medians = {name: median_timing([t for t, _ in got]) for name, got in runs.items()}
    reference_digest = runs["serial"][0][1]
    label = f"{case} [check only, median of {repeats}]"
    table.add(label, "serial", medians["serial"], medians["serial"], None)
    for name in ("dask 2 workers", "processes 2", "dask 1 worker"):
        same = all(digest == reference_digest for _, digest in runs[name] + runs["serial"])
        table.add(label, f"{name}, warm", medians[name], medians["serial"], same)
    print(
        "      (c)'s verdicts: "
        + "; ".join(
            f"eps {r.epsilon:g}: {r.counts.verified} verified, {r.counts.falsified} falsified, "
            f"{r.counts.unknown} unknown"
            for r in report.results
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loan-rows", type=int, default=60_000, help="rows of the generated Lending Club file")
    parser.add_argument("--epochs", type=int, default=40, help="train.epochs of the loan spec")
    parser.add_argument("--skip-study", action="store_true", help="leave out (d)")
    parser.add_argument("--only", choices=["c"], help="run only this case (and the Dask overhead lines)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (c)'s warm runs (the median is shown)")
    parser.add_argument(
        "--check-methods", nargs="+", default=["CROWN", "alpha-CROWN"], help="bound methods of (c), one row group each"
    )
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}; load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    work = Path(tempfile.mkdtemp(prefix="uverify-bench-parallel."))
    os.environ.setdefault("UVERIFY_CACHE_DIR", str(work / "cache"))
    try:
        import torch._dynamo

        default = torch.get_num_threads()
        print(
            f"torch threads: 1 in every run; a training step takes {step_ms(1):.1f} ms on 1 thread and "
            f"{step_ms(default):.1f} ms on torch's default {default} on this machine now"
        )
        torch.set_num_threads(1)
        if args.only is None:
            csv = write_loan_csv(work / "accepted_2007_to_2018Q4.csv", args.loan_rows, seed=0)
            spec = loan_spec(csv, args.epochs)
            splits = load(spec.data)
            print(
                f"loan: {len(splits.train)} train rows, SISA 4 shards x 2 slices, {args.epochs} epochs, mlp "
                f"{spec.model.hidden}; ratio = serial seconds / these seconds"
            )
        ready = forkserver_ready()
        print(
            f"uverify's forkserver ready in {ready:.2f} s (a command starts it once, before its first local worker; "
            "every cold row below forks its workers from it, so a command's cold figure is the row plus this)"
        )
        table = Table()
        if args.only is None:
            serial_run = bench_sisa(spec, splits, work, table)
            bench_deletion(serial_run, splits, work, table)
        for method in args.check_methods:
            bench_check(work, table, method, args.repeats)
        if not args.skip_study and args.only is None:
            bench_study(work, table)
        start = timed(lambda: _open_close(DASK2))
        print(f"  a 2-worker LocalCluster's start + teardown alone: {start:.2f} s")
        print(f"  Dask's round trip per task (no-op tasks, 2 warm workers): {task_overhead() * 1000:.1f} ms")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def forkserver_ready() -> float:
    """Seconds until uverify's forkserver (compute.forkserver_context) has imported its preloads and forked
    a first child: what the first local pool or LocalCluster of a command waits for once."""

    from uverify.compute import forkserver_context

    started = time.perf_counter()
    child = forkserver_context("distributed").Process(target=time.sleep, args=(0,))
    child.start()
    child.join()
    return time.perf_counter() - started


def step_ms(threads: int, steps: int = 200) -> float:
    """Milliseconds per training step of the loan-sized MLP (batch 128) at `threads` torch threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(100, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                    torch.nn.Linear(64, 2))  # fmt: skip
        optimizer = torch.optim.Adam(model.parameters())
        x, y = torch.randn(128, 100, generator=torch.Generator().manual_seed(0)), torch.zeros(128, dtype=torch.long)

        def step() -> None:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()

        def run(n: int) -> None:
            for _ in range(n):
                step()

        run(10)
        return timed(lambda: run(steps)) / steps * 1000
    finally:
        torch.set_num_threads(previous)


def task_overhead(tasks: int = 200) -> float:
    """Seconds per task that the scheduler adds: no-op tasks submitted together on an open cluster."""
    with open_executor(DASK2) as executor:
        list(executor.map(abs, [(k,) for k in range(20)]))  # connections up
        return timed(lambda: list(executor.map(abs, [(k,) for k in range(tasks)]))) / tasks


def _open_close(compute: ComputeSpec) -> None:
    with open_executor(compute):
        pass


if __name__ == "__main__":
    main()
