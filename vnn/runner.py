"""Run VNN-COMP instances under a wall-clock limit that holds whatever the verifier is doing.

Each instance runs in a child process; the parent, which never imports torch, holds the clock from the
moment the instance starts and kills the child when the limit comes, answering `timeout` rather than
running past it (the child also stops itself between steps a little before). Why a process and not a
thread: neither auto_LiRPA nor onnxruntime can be interrupted half-way through a call, nor can an
import.

* One instance (`run_instance`): the child is forked from the light parent and imports the verifier
  itself, so loading torch, auto_LiRPA, onnxruntime and the network all count against the limit.
* A list (`run_instances`): the children are forked from one server (multiprocessing's forkserver)
  that imported the verifier once before the first instance's clock starts; each instance's clock
  then covers reading its files, importing its network and deciding.
* A parent that has already imported torch (a test process) always uses the server: a fork of a
  process whose OpenMP pool has run is not safe.

In parallel (`workers` > 1, `uverify vnncomp --instances ... --workers N`): N instances run at once, each
in its own forkserver child under its own clock, N threads of the parent each waiting on one child.
Local children rather than a Dask LocalCluster: the clock must be held by a process that can kill the
instance, which is what this parent already is; a Dask worker would only add a process between the two
(and a task on it cannot be killed). Each child uses cores / N torch threads, so N instances on N cores
do not slow each other down by oversubscription; with more instances at once than cores, their
clocks would count time spent waiting for a core, so keep N at or below the cores. With a scheduler
(`--scheduler`), every instance is a Dask task that runs the same child-under-a-clock on its worker,
the clock starting when the task starts there; the network and property files travel with the tasks
(each network once per worker), so the workers need not see this machine's paths. Either way the
results CSV keeps the instances' order and is rewritten as each next row in that order is done, so a
run stopped half-way leaves a prefix of the full list.

What the child finds wrong with the input (a file that does not parse, a network that does not fit)
comes back as a `UverifyError`'s one line: `run_instance` marks it `bad_input` (`uverify vnncomp` then
exits 2), `run_instances` records `error` for that row and goes on. A `sat` comes back with its
counterexample already replayed by onnxruntime (`decide.replay`).
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from uverify.vnn.results import Instance, InstanceResult, write_result_file, write_results_csv

__all__ = [
    "CHILD_MARGIN",
    "KILL_MARGIN",
    "Outcome",
    "instance_workers",
    "result_path",
    "results_folder",
    "run_instance",
    "run_instances",
    "with_truth",
    "write_outcome",
]

PathLike = str | os.PathLike[str]
CHILD_MARGIN = 0.5  # the child stops its own work this long before the limit
KILL_MARGIN = 0.15  # the parent kills it this long before, leaving time to write the result


@dataclass(frozen=True)
class Outcome:
    """One instance's answer, as the parent saw it."""

    result: str
    prepare_seconds: float
    run_seconds: float
    stage: str | None = None
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    message: str = ""  # why `error`, or the notes of a verdict
    bad_input: bool = False


def _child(conn: Connection, onnx: str, vnnlib: str, end: float, threads: int | None = None) -> None:
    """The child's entry point: import the verifier (already there in a forkserver child), run it.
    Its stdout goes to stderr: a parent's stdout carries only answers (the solver CLI's rule).
    `threads`: torch's thread count (instances run side by side share the cores)."""
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    from uverify.vnn.worker import work

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    work(conn, onnx, vnnlib, end)


_SERVER: Any = None


def _server() -> Any:
    """uverify's forkserver context (`compute.forkserver_context`: the verifier among its preloads),
    started and warmed once per process."""
    global _SERVER
    if _SERVER is None:
        # here, not at the top: compute (pydantic, the spec schema, ~0.12 s) stays off the solver's start-up
        from uverify.compute import forkserver_context

        ctx = forkserver_context()
        warm = ctx.Process(target=_noop, daemon=True)
        warm.start()  # blocks until the server has imported the verifier
        warm.join()
        _SERVER = ctx
    return _SERVER


def _noop() -> None:
    """A child that does nothing: starting it waits for the server to be ready."""


def _context() -> Any:
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    if "torch" in sys.modules or _SERVER is not None:
        return _server()
    return multiprocessing.get_context("fork")


def run_instance(
    onnx: PathLike,
    vnnlib: PathLike,
    timeout: float | None,
    *,
    start: float | None = None,
    context: Any = None,
    threads: int | None = None,
) -> Outcome:
    """Decide one instance within `timeout` wall-clock seconds counted from `start` (default: now);
    `threads` sets the child's torch threads (default: torch's own)."""
    start = time.monotonic() if start is None else start
    ctx = context if context is not None else _context()
    end = start + timeout if timeout is not None else float("inf")
    receiver, sender = ctx.Pipe(duplex=False)
    child_end = end - CHILD_MARGIN if timeout is not None else float("inf")
    # absolute: a forkserver child has the server's working folder, not this process's
    paths = (str(Path(onnx).absolute()), str(Path(vnnlib).absolute()))
    process = ctx.Process(target=_child, args=(sender, *paths, child_end, threads), daemon=True)
    process.start()
    sender.close()
    prepared: float | None = None
    message: tuple[str, Any] | None = None
    try:
        while True:
            wait = end - KILL_MARGIN - time.monotonic()
            if wait <= 0 or not receiver.poll(None if wait == float("inf") else wait):
                break
            try:
                kind, payload = receiver.recv()
            except EOFError:  # the child died without a word (killed, out of memory)
                process.join(1)
                message = ("error", f"the verifier process ended without an answer (exit code {process.exitcode})")
                break
            if kind == "prepared":
                prepared = time.monotonic() - start
                continue
            message = (kind, payload)
            break
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
        receiver.close()
    elapsed = time.monotonic() - start
    prepare_seconds = prepared if prepared is not None else elapsed
    run_seconds = max(0.0, elapsed - prepare_seconds)
    if message is None:
        return Outcome("timeout", prepare_seconds, run_seconds, message="stopped at the time limit")
    kind, payload = message
    if kind == "done":
        return Outcome(
            payload["result"],
            prepare_seconds,
            run_seconds,
            payload["stage"],
            payload["x"],
            payload["y"],
            payload["notes"],
        )
    return Outcome("error", prepare_seconds, run_seconds, message=str(payload), bad_input=kind == "bad_input")


def write_outcome(path: PathLike, outcome: Outcome) -> Path:
    """The VNN-COMP result file of an outcome."""
    return write_result_file(path, outcome.result, outcome.x, outcome.y)


def results_folder(out_csv: PathLike) -> Path:
    """The folder of an instance list's result files: the results CSV's path without its suffix."""
    out = Path(out_csv)
    return out.with_suffix("") if out.suffix else out.with_name(out.name + "_results")


def result_path(folder: Path, instance: Instance) -> Path:
    """Where `run_instances` writes an instance's result file: FOLDER/CATEGORY/ONNX_VNNLIB.result."""

    def stem(name: str) -> str:
        base = Path(name).name
        for suffix in (".gz", ".onnx", ".vnnlib"):
            base = base.removesuffix(suffix)
        return base

    return folder / instance.category / f"{stem(instance.onnx_name)}_{stem(instance.vnnlib_name)}.result"


def run_instances(
    instances: Sequence[Instance],
    out_csv: PathLike,
    *,
    timeout_cap: float | None = None,
    echo: Callable[[str], None] | None = None,
    workers: int | None = None,
    executor: Any = None,
) -> list[InstanceResult]:
    """Run every instance; the results CSV, in the instances' order, is rewritten after each next row
    is done, the result files go to the folder named like the CSV without its suffix. A row whose input
    is bad is `error`, the run goes on. `workers` instances run at once in local children; `executor`
    (compute.py's Dask executor) runs each as a task on its workers instead (see the module docstring);
    by default one instance at a time."""
    workers = workers or 1
    out = Path(out_csv)
    folder = results_folder(out)
    limits = [_limit(instance, timeout_cap) for instance in instances]
    if executor is not None:
        outcomes = _on_dask(instances, limits, executor)
    elif workers > 1:
        outcomes = _side_by_side(instances, limits, workers)
    else:
        context = _server() if "forkserver" in multiprocessing.get_all_start_methods() else None
        pairs = zip(instances, limits, strict=True)
        outcomes = (run_instance(i.onnx, i.vnnlib, limit, context=context) for i, limit in pairs)
    results: list[InstanceResult] = []
    for number, (instance, outcome) in enumerate(zip(instances, outcomes, strict=True), 1):
        write_outcome(result_path(folder, instance), outcome)
        row = InstanceResult(
            instance.category,
            instance.onnx_name,
            instance.vnnlib_name,
            outcome.prepare_seconds,
            outcome.result,
            outcome.run_seconds,
            instance.truth,
            outcome.stage,
        )
        results.append(row)
        write_results_csv(out, results)
        if echo is not None:
            decided = f" by {outcome.stage}" if outcome.stage else ""
            why = f" ({outcome.message})" if outcome.result == "error" else ""
            truth = f" [truth {instance.truth}]" if instance.truth else ""
            echo(
                f"{number}/{len(instances)} {instance.category} {instance.onnx_name} {instance.vnnlib_name}: "
                f"{outcome.result}{decided}{why}{truth}  prepare {outcome.prepare_seconds:.2f} s, "
                f"run {outcome.run_seconds:.2f} s"
            )
        if outcome.result == "error" and echo is None:
            print(f"warning: {instance.onnx_name} {instance.vnnlib_name}: {outcome.message}", file=sys.stderr)
    return results


@contextmanager
def instance_workers(workers: int | None, scheduler: str | None) -> Iterator[tuple[int, Any]]:
    """(instances at once, Dask executor or None) for `run_instances`, from `--workers N` (N local
    children at once) and `--scheduler ADDRESS` (tasks on that Dask scheduler's workers, N of them
    waited for). Bad values are a one-line error blaming the option; the scheduler is connected to
    before the block starts, so one that cannot be reached changes nothing."""
    from uverify.compute import compute_from_options, open_executor

    if workers is None and scheduler is None:
        yield 1, None
        return
    compute = compute_from_options(workers, scheduler)
    if compute.address is None:
        yield compute.workers or 1, None
        return
    with open_executor(compute) as executor:
        yield executor.workers, executor


def _limit(instance: Instance, timeout_cap: float | None) -> float | None:
    timeout = instance.timeout if timeout_cap is None else min(instance.timeout, timeout_cap)
    return None if timeout == float("inf") else timeout


def _side_by_side(instances: Sequence[Instance], limits: list[float | None], workers: int) -> Iterator[Outcome]:
    """`workers` instances at a time, each in its own child under its own clock (which starts when its
    thread starts it); the outcomes in the instances' order."""
    context = _server() if "forkserver" in multiprocessing.get_all_start_methods() else None
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="vnncomp")
    try:
        futures = [
            pool.submit(run_instance, i.onnx, i.vnnlib, limit, context=context, threads=threads)
            for i, limit in zip(instances, limits, strict=True)
        ]
        for future in futures:
            yield future.result()
    finally:
        # on an error or Ctrl-C: no new instance starts; a running one ends by its own clock
        pool.shutdown(wait=False, cancel_futures=True)


def _on_dask(instances: Sequence[Instance], limits: list[float | None], executor: Any) -> Iterator[Outcome]:
    """Every instance a task on the executor's workers, its files shipped by value (each distinct file
    scattered once); the outcomes in the instances' order."""
    from uverify.compute import ship_files

    shipped: dict[str, Any] = {}

    def file(path: Path) -> Any:
        key = str(Path(path).resolve())
        if key not in shipped:
            shipped[key] = executor.share(ship_files(Path(path).parent, [Path(path)]))
        return shipped[key]

    futures = [
        executor.submit(_instance_task, file(i.onnx), file(i.vnnlib), limit)
        for i, limit in zip(instances, limits, strict=True)
    ]
    for future in futures:
        yield executor.gather([future])[0]


def _instance_task(network: Any, prop: Any, limit: float | None) -> Outcome:
    """One instance on a Dask worker: its files written there once (compute.local_copy), then decided
    in a child of the worker under a clock that starts once the worker's forkserver is up (its first
    task starts it). The worker's own torch threads (one per task slot on a scheduler's workers) are
    the child's."""
    import torch

    from uverify.compute import local_copy

    with _may_have_children():
        # the worker's server (the verifier imported once) is ready before the clock, as run_instances's is
        context = _server() if "forkserver" in multiprocessing.get_all_start_methods() else None
        start = time.monotonic()
        onnx = local_copy(network) / network.files[0][0]
        vnnlib = local_copy(prop) / prop.files[0][0]
        return run_instance(onnx, vnnlib, limit, start=start, context=context, threads=torch.get_num_threads())


@contextmanager
def _may_have_children() -> Iterator[None]:
    """A nanny's Dask worker is a daemonic process, and multiprocessing refuses children to those; the
    instance's child is killed and joined by `run_instance` whatever happens, which is what the flag
    guards, so it is lifted while the instance runs."""
    current = multiprocessing.current_process()
    daemonic = current.daemon
    if daemonic:
        current.daemon = False
    try:
        yield
    finally:
        if daemonic:
            current.daemon = True


def with_truth(instances: Sequence[Instance], truth: dict[tuple[str, str], str]) -> list[Instance]:
    """The instances with a ground truth from a separate file, matched by file names (a row's own
    ground-truth column wins)."""
    return [
        replace(i, truth=i.truth or truth.get((Path(i.onnx_name).name, Path(i.vnnlib_name).name))) for i in instances
    ]
