"""Projection of the loan study at S = 20 shards on a 20-worker Dask cluster, from measured task times.

No cluster is at hand, so the figure is a model, and the bench says how good the model is:

1. **Measured, serially, on this machine (one torch thread):** the study's four cells (SISA and
   Amnesiac, standard and adversarial training), each step as `uverify study` runs it (train, keep M,
   check M, unlearn, check M'), on a generated Lending Club file of the real format. A recording
   executor times every SISA shard task (training, then the touched shards' retraining), so each cell
   becomes a chain of phases: serial work on one worker, then a group of shard tasks, then serial work
   again. The driver's own work (loading the data, rendering tables, plots and report.html) is measured
   by a rerun of `uverify study` that finds every cell done and only renders.
2. **Measured on a real Dask LocalCluster (127.0.0.1, 2 workers):** the scheduler's cost per task (a
   round trip of no-op tasks, and of tasks carrying one shard's payload as pickled bytes), and the
   cluster's start and teardown.
3. **Simulated:** list scheduling of those phases on W one-thread workers as compute.py and study.py
   run them: every cell is a task of its own; a SISA cell leaves its worker's thread pool while it
   waits for its shard tasks (`secede`) and takes the next free slot when they are done (`rejoin`, ahead
   of queued tasks); tasks start in submission order; each task pays the measured per-task cost and its
   payload's transfer at the assumed network bandwidth.
4. **Checked:** the same simulation at W = 2 against a measured 2-worker study on this machine.

Assumptions (printed with the figures): the cluster's workers are as fast per core as this machine's;
one task per worker at a time (`dask worker --nthreads 1`); a SISA cell's check runs inside its cell
(checks are not split over workers here); the driver's work is serial; the network moves
`--bandwidth-mbit` per second and its latency is in the measured per-task cost; the cluster is already
running (its start is the user's, once, not the study's).

Run: `make bench-cluster` or `.venv/bin/python bench/cluster.py [--rows 40000] [--shards 20] [--epochs 20]
[--samples 200] [--workers 20] [--skip-check]`.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import pickle
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from uverify.compute import TaskFuture
from uverify.datasets import load
from uverify.kinds import Training, UnlearningMethod
from uverify.pipeline import train_run, unlearn_run
from uverify.rundir import keep_m, open_run
from uverify.specs.load import load_spec
from uverify.specs.schema import ComputeSpec, Spec
from uverify.study import cell_spec, study
from uverify.testing.loan import write_loan_csv
from uverify.verifier.check import check
from uverify.verifier.report import save_report
from uverify.verifier.samples import samples_from_spec


# ------------------------------------------------------------------------------------ measuring
@dataclass
class Phase:
    """Serial work of `seconds` on the cell's worker, or (tasks not empty) a group of shard tasks."""

    seconds: float = 0.0
    tasks: list[float] = field(default_factory=list)
    payload_bytes: list[int] = field(default_factory=list)


class RecordingExecutor:
    """Serial, like compute.SERIAL, and it times each task: the cell's timeline becomes phases."""

    kind = "serial"
    workers = 1

    def __init__(self) -> None:
        self.phases: list[Phase] = []
        self._mark = time.perf_counter()
        self._group: Phase | None = None

    def _serial_until_now(self) -> None:
        now = time.perf_counter()
        self.phases.append(Phase(seconds=now - self._mark))
        self._mark = now

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> TaskFuture[Any]:
        if self._group is None:
            self._serial_until_now()
            self._group = Phase()
            self.phases.append(self._group)
        started = time.perf_counter()
        future: Future[Any] = Future()
        future.set_result(fn(*args))
        self._group.tasks.append(time.perf_counter() - started)
        self._group.payload_bytes.append(len(pickle.dumps(args, protocol=pickle.HIGHEST_PROTOCOL)))
        self._mark = time.perf_counter()
        return future

    def map(self, fn: Callable[..., Any], tasks: Any) -> Any:
        return iter(self.gather([self.submit(fn, *args) for args in tasks]))

    def gather(self, futures: Sequence[TaskFuture[Any]]) -> list[Any]:
        self._group = None
        return [f.result() for f in futures]

    def finish(self) -> list[Phase]:
        self._group = None
        self._serial_until_now()
        return [p for p in self.phases if p.tasks or p.seconds > 0]


def measure_cell(
    spec: Spec, method: str, training: Training, out: Path, splits: Any, samples: Any, domain: Any
) -> list[Phase]:
    """One study cell's four steps, as study._run_cell runs them, into the folder `uverify study` uses."""
    cell = cell_spec(spec, UnlearningMethod(method))
    run_dir = out / f"{method}-{training}"
    recorder = RecordingExecutor()
    train_run(
        cell, run_dir, adversarial=training is Training.ADVERSARIAL, overwrite=True, splits=splits, progress=False,
        compute=recorder,
    )  # fmt: skip
    run = open_run(run_dir)
    m_path = keep_m(run)
    save_report(check(m_path, cell, samples, domain, progress=False), run.dir.report_file("before"))
    unlearn_run(run_dir, from_spec=True, splits=splits, progress=False, compute=recorder)
    run = open_run(run_dir)
    save_report(check(run.model_path, cell, samples, domain, progress=False), run.dir.report_file("after"))
    return recorder.finish()


def _noop(payload: bytes) -> int:
    return len(payload)


def task_cost(tasks: int, payload: int) -> tuple[float, float, float]:
    """(seconds per task for no-op tasks, ... for tasks carrying `payload` bytes, the cluster's start and
    teardown) on a real LocalCluster of 2 one-thread workers on loopback."""
    from distributed import Client

    from uverify.compute import local_cluster

    started = time.perf_counter()
    with (
        local_cluster(2) as local,
        Client(local, set_as_default=False) as client,
    ):
        start_s = time.perf_counter() - started
        client.gather(client.map(_noop, [b""] * 20, pure=False))  # warm
        costs = []
        for size in (0, payload):
            blobs = [bytes(size)] * tasks
            t0 = time.perf_counter()
            client.gather([client.submit(_noop, blob, pure=False) for blob in blobs])
            costs.append((time.perf_counter() - t0) * 2 / tasks)  # 2 workers took them in parallel
        t0 = time.perf_counter()
    teardown = time.perf_counter() - t0
    return costs[0], costs[1], start_s + teardown


# ------------------------------------------------------------------------------------ simulating
def simulate(cells: list[list[Phase]], workers: int, per_task: float, bandwidth: float, cell_bytes: int) -> float:
    """The cells' wall time on `workers` one-thread workers (list scheduling, see the module docstring)."""
    free, now, order = workers, 0.0, itertools.count()
    events: list[tuple[float, int, str, int]] = []
    rejoining: deque[int] = deque()
    starting: deque[int] = deque(range(len(cells)))  # the cell tasks, submitted before any shard task
    tasks: deque[tuple[float, int]] = deque()  # (seconds, cell), in submission order
    position, left = [0] * len(cells), [0] * len(cells)

    def run(c: int) -> None:
        """Cell c holds a slot at `now`: its current phase."""
        nonlocal free
        if position[c] == len(cells[c]):
            free += 1
            return
        phase = cells[c][position[c]]
        if not phase.tasks:
            heapq.heappush(events, (now + phase.seconds, next(order), "serial", c))
            return
        free += 1  # secede while its shards run
        left[c] = len(phase.tasks)
        for seconds, size in zip(phase.tasks, phase.payload_bytes, strict=True):
            tasks.append((seconds + per_task + size * 8 / bandwidth, c))

    def dispatch() -> None:
        nonlocal free
        while free > 0 and (rejoining or starting or tasks):
            free -= 1
            if rejoining:
                c = rejoining.popleft()
                position[c] += 1
                run(c)
            elif starting:
                c = starting.popleft()
                heapq.heappush(events, (now + per_task + cell_bytes * 8 / bandwidth, next(order), "begin", c))
            else:
                seconds, c = tasks.popleft()
                heapq.heappush(events, (now + seconds, next(order), "task", c))

    dispatch()
    while events:
        now, _, kind, c = heapq.heappop(events)
        if kind == "begin":
            run(c)
        elif kind == "serial":
            position[c] += 1
            run(c)
        else:
            free += 1
            left[c] -= 1
            if left[c] == 0:
                rejoining.append(c)
        dispatch()
    assert free == workers and all(p == len(c) for p, c in zip(position, cells, strict=True))
    return now


# ------------------------------------------------------------------------------------ the bench
def loan_spec(csv: Path, shards: int, epochs: int, samples: int) -> Spec:
    spec = load_spec("loan", {"data.path": str(csv), "data.subsample": None, "data.samples": samples})
    sisa = spec.unlearning.sisa.model_copy(update={"shards": shards})
    return spec.model_copy(
        update={
            "unlearning": spec.unlearning.model_copy(update={"sisa": sisa}),
            "train": spec.train.model_copy(update={"epochs": epochs}),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=40000, help="rows of the generated Lending Club file")
    parser.add_argument("--shards", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=20, help="the loan spec's 20 by default")
    parser.add_argument("--samples", type=int, default=200, help="test samples each check verifies (spec: 500)")
    parser.add_argument("--workers", type=int, default=20, help="the projected cluster's workers")
    parser.add_argument("--bandwidth-mbit", type=float, default=1000.0, help="the cluster's network, Mbit/s")
    parser.add_argument("--skip-check", action="store_true", help="no measured 2-worker study to test the model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    bandwidth = args.bandwidth_mbit * 1e6
    with tempfile.TemporaryDirectory(prefix="uverify-bench-cluster-") as tmp:
        work = Path(tmp)
        csv = write_loan_csv(work / "accepted_2007_to_2018Q4.csv", args.rows, seed=0)
        spec = loan_spec(csv, args.shards, args.epochs, args.samples)
        print(
            f"loan study: {args.rows} generated rows, SISA {args.shards} shards x {spec.unlearning.sisa.slices} "
            f"slices, {args.epochs} epochs, {args.samples} samples x {len(spec.property.epsilon)} epsilons; "
            "one torch thread",
            flush=True,
        )
        out = work / "serial"
        t0 = time.perf_counter()
        splits = load(spec.data)
        samples, domain = samples_from_spec(spec, splits=splits)
        load_s = time.perf_counter() - t0
        # warm-up, not measured: the first cell of a process pays its imports and the exporter's start,
        # as each worker does once (in the cluster's start, not per task)
        warm = spec.model_copy(update={"train": spec.train.model_copy(update={"epochs": 1})})
        measure_cell(warm, "sisa", Training.ADVERSARIAL, work / "warm-up", splits, samples, domain)
        cells: list[list[Phase]] = []
        names = []
        for method in ("sisa", "amnesiac"):
            for training in (Training.STANDARD, Training.ADVERSARIAL):
                t0 = time.perf_counter()
                cells.append(measure_cell(spec, method, training, out, splits, samples, domain))
                names.append(f"{method}-{training}")
                phases = cells[-1]
                tasks = [t for p in phases for t in p.tasks]
                print(
                    f"  {names[-1]:<22} {time.perf_counter() - t0:7.1f} s serially: {len(tasks)} shard tasks "
                    f"({sum(tasks):.1f} s, {min(tasks, default=0):.2f}-{max(tasks, default=0):.2f} s each), "
                    f"{sum(p.seconds for p in phases):.1f} s of the cell's own work",
                    flush=True,
                )
        t0 = time.perf_counter()
        rerun = study(spec, out, methods=("sisa", "amnesiac"), progress=False, echo=lambda _: None)
        render_s = time.perf_counter() - t0
        assert all(len(c.reused) == 4 for c in rerun.cells), "the rerun must reuse every cell's four steps"
        cells_s = sum(p.seconds + sum(p.tasks) for c in cells for p in c)
        serial_s = load_s + cells_s + render_s
        cell_bytes = len(pickle.dumps((splits, samples, domain), protocol=pickle.HIGHEST_PROTOCOL))
        payload = max((b for c in cells for p in c for b in p.payload_bytes), default=0)
        noop, loaded, cluster_s = task_cost(200, payload)
        print(
            f"  driver: {render_s:.1f} s (load, check every cell is done, render); the cells {cells_s:.1f} s; "
            f"serial study {serial_s:.1f} s (first load {load_s:.1f} s); a cell task ships {cell_bytes / 1e6:.1f} MB",
            flush=True,
        )
        print(
            f"  Dask, 2 workers on loopback: {noop * 1000:.1f} ms per no-op task, {loaded * 1000:.1f} ms per task "
            f"carrying {payload / 1e6:.2f} MB (the largest shard payload); cluster start + teardown {cluster_s:.1f} s"
        )
        per_task = loaded
        driver = render_s  # the rerun loads the data too: the driver's whole serial part
        if not args.skip_check:
            simulated = driver + simulate(cells, 2, per_task, bandwidth, cell_bytes)
            t0 = time.perf_counter()
            study(
                spec, work / "dask2", methods=("sisa", "amnesiac"), progress=False, echo=lambda _: None,
                compute=ComputeSpec(executor="dask", workers=2, threads=1),
            )  # fmt: skip
            measured = time.perf_counter() - t0
            print(
                f"  model check, 2 workers: simulated {simulated + cluster_s:.1f} s (with the cluster's start), "
                f"measured {measured:.1f} s ({measured / (simulated + cluster_s):.2f}x the model)"
            )
        print(f"projection (one-thread workers as fast as this machine's cores, {args.bandwidth_mbit:g} Mbit/s):")
        for workers in sorted({1, 2, 4, 8, args.shards, args.workers, 2 * args.shards}):
            projected = driver + simulate(cells, workers, per_task, bandwidth, cell_bytes)
            print(f"  {workers:>3} workers: {projected:7.1f} s  ({serial_s / projected:5.2f}x serial)")
        longest = max(names, key=lambda n: sum(p.seconds for p in cells[names.index(n)]))
        print(
            f"  the floor: the driver ({driver:.1f} s) plus the longest cell's own serial work ({longest}: "
            f"{sum(p.seconds for p in cells[names.index(longest)]):.1f} s), which no number of workers shortens"
        )


if __name__ == "__main__":
    main()
