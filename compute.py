"""The one executor seam: where independent tasks (SISA shards, the study's cells) run.

Three executors share a `concurrent.futures`-style interface (`submit` returns a future, `map` yields
results in task order): `serial` (the default and the reference: each task runs in this process, as
uverify always did), `processes` (a local process pool) and `dask` (Dask distributed: a `LocalCluster`
bound to 127.0.0.1 with no dashboard, or a running scheduler at `compute.address`).

A task is a module-level function and its arguments: it carries its own seed and data and returns its
result, so nothing depends on which worker runs it or in which order tasks finish, and the serial,
process and Dask runs of the same spec write the same bytes. Workers set torch's thread count so that
N workers on N cores do not oversubscribe them (torch's CPU kernels give the same bits at any thread
count for these models; the determinism tests check it).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import multiprocessing
import multiprocessing.forkserver
import os
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, CancelledError, Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError

from uverify.errors import SpecError, UverifyError, one_line
from uverify.specs.messages import locate
from uverify.specs.schema import ComputeSpec

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)

CONNECT_TIMEOUT_S = 10.0  # a scheduler that does not answer within this is reported, not waited for
WORKERS_TIMEOUT_S = 60.0  # how long a scheduler may take to have the workers asked for
FLAGS = {"compute.workers": "--workers", "compute.address": "--scheduler"}


class TaskFuture(Protocol[R_co]):
    """What a submitted task gives back: concurrent.futures.Future and distributed.Future both fit."""

    def result(self, timeout: float | None = None) -> R_co: ...


class Executor(Protocol):
    """Runs independent tasks; `workers` is how many run at once."""

    kind: str
    workers: int

    def submit(self, fn: Callable[..., R], /, *args: Any) -> TaskFuture[R]: ...

    def map(self, fn: Callable[..., R], tasks: Iterable[Sequence[Any]]) -> Iterator[R]: ...

    def gather(self, futures: Sequence[TaskFuture[R]]) -> list[R]:
        """The futures' results in their order; a lost worker or pool is a one-line UverifyError."""
        ...

    def share(self, value: Any) -> Any:
        """`value` as an argument for many tasks: on Dask sent to the cluster once (not once per task),
        elsewhere the value itself."""
        ...


class SerialExecutor:
    """Each task runs in this process when submitted: the reference every other executor must match."""

    kind = "serial"
    workers = 1

    def submit(self, fn: Callable[..., R], /, *args: Any) -> TaskFuture[R]:
        future: Future[R] = Future()
        try:
            future.set_result(fn(*args))
        except Exception as exc:  # KeyboardInterrupt and SystemExit propagate at once, as before
            future.set_exception(exc)
        return future

    def map(self, fn: Callable[..., R], tasks: Iterable[Sequence[Any]]) -> Iterator[R]:
        """Lazily, one task per result asked for: exactly the loop uverify ran before the executors."""
        for args in tasks:
            yield fn(*args)

    def gather(self, futures: Sequence[TaskFuture[R]]) -> list[R]:
        return [future.result() for future in futures]

    def share(self, value: Any) -> Any:
        return value


SERIAL = SerialExecutor()


class _Parallel:
    """`map` over `submit` for the parallel executors: every task is submitted first, then the
    results are read in task order (completion order never shows)."""

    kind: str
    workers: int

    def submit(self, fn: Callable[..., R], /, *args: Any) -> TaskFuture[R]:
        raise NotImplementedError

    def map(self, fn: Callable[..., R], tasks: Iterable[Sequence[Any]]) -> Iterator[R]:
        futures = [self.submit(fn, *args) for args in tasks]
        return self._results(futures)

    def gather(self, futures: Sequence[TaskFuture[R]]) -> list[R]:
        return list(self._results(futures))

    def share(self, value: Any) -> Any:
        return value  # a process pool pickles every task's arguments anyway

    def _results(self, futures: Sequence[TaskFuture[R]]) -> Iterator[R]:
        for future in futures:
            try:
                yield future.result()
            except (BrokenExecutor, CancelledError) as exc:
                raise UverifyError(
                    f"{self.kind} executor: a worker process died ({one_line(exc, with_type=True)})"
                ) from None
            except Exception as exc:
                if type(exc).__name__ == "KilledWorker":  # distributed's: a task's workers died too often
                    raise UverifyError(f"dask: {one_line(exc)}") from None
                raise


def threads_per_worker(workers: int) -> int:
    """torch threads for each of `workers` tasks sharing this machine's cores."""
    return max(1, (os.cpu_count() or 1) // workers)


# imported by every worker before its first task: torch, torch._dynamo (the first optimiser step of a
# process imports it, seconds), SISA's shard task, the study and check tasks' modules (a study's cell
# task imports the verifier on its first unpickling) and a VNN-COMP instance's child (vnn/runner.py);
# the forkserver imports them once for all the workers it forks
PRELOAD = (
    "torch",
    "torch._dynamo",
    "uverify.unlearning.sisa",
    "uverify.pipeline",
    "uverify.study",
    "uverify.vnn.worker",
)


def forkserver_context(*extra: str) -> multiprocessing.context.BaseContext:
    """The forkserver context, its server running with PRELOAD (and `extra`) imported.

    Every local worker (a pool's, a LocalCluster's) forks from that server: a fresh Python process
    that has imported torch once and run nothing, so forking it is safe, where forking this process
    (which has run torch's threads) is not. A worker then starts in milliseconds instead of seconds of
    Python start-up and torch import each (spawn). The server lives as long as this process, so a
    second pool or cluster in one process (a benchmark, the test suite) starts warm. Its preload is
    fixed when it first starts: the first caller's list holds for the process.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*extra, *PRELOAD])
    multiprocessing.forkserver.ensure_running()
    return context


def _worker_setup(threads: int, cwd: str | None = None, environ: dict[str, str] | None = None) -> None:
    """Run once in each worker process: torch's thread count and the PRELOAD imports (already there in
    a forked worker), and, in a local pool's worker, the parent's working folder and environment as
    they are now (a forked worker has the forkserver's, from when it started)."""
    if cwd is not None:
        os.chdir(cwd)
    if environ is not None:
        os.environ.clear()
        os.environ.update(environ)
    for name in PRELOAD:
        importlib.import_module(name)
    import torch

    torch.set_num_threads(threads)


def _with_threads(threads: int, fn: Callable[..., R], *args: Any) -> R:
    """A task on a Dask worker: the thread count again (a worker the nanny restarted has not run the setup)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return fn(*args)


class ProcessExecutor(_Parallel):
    """A local pool of `workers` processes forked from the forkserver (`forkserver_context`)."""

    kind = "processes"

    def __init__(self, workers: int, threads: int | None = None) -> None:
        self.workers = workers
        threads = threads or threads_per_worker(workers)
        self.pool = ProcessPoolExecutor(
            workers,
            mp_context=forkserver_context(),
            initializer=_worker_setup,
            initargs=(threads, os.getcwd(), dict(os.environ)),
        )

    def submit(self, fn: Callable[..., R], /, *args: Any) -> TaskFuture[R]:
        return self.pool.submit(fn, *args)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor(_Parallel):
    """Tasks on a Dask distributed client; a worker lost mid-task has its task rerun by the scheduler
    on another worker (the task is pure, so the result is the same)."""

    kind = "dask"
    priority = 0  # among tasks waiting for a slot, Dask runs the higher priority first

    def __init__(self, client: Any, workers: int, threads: int) -> None:
        self.client = client
        self.workers = workers
        self.threads = threads

    def submit(self, fn: Callable[..., R], /, *args: Any) -> TaskFuture[R]:
        # keyed by the task's own name (not the wrapper's), as the scheduler's logs and dashboard show it
        key = f"{getattr(fn, '__name__', 'task')}-{uuid.uuid4().hex}"
        future: TaskFuture[R] = self.client.submit(
            _with_threads, self.threads, fn, *args, key=key, pure=False, priority=self.priority
        )
        return future

    def share(self, value: Any) -> Any:
        """Scattered to every worker once; the tasks then carry its key, not its bytes (Dask resolves it)."""
        return self.client.scatter(value, broadcast=True, hash=False)


class _SubTasks(DaskExecutor):
    """A Dask task's own sub-tasks (a study cell's SISA shards) on the task's cluster. While it waits
    for them the task leaves its worker's thread pool (`secede`), so that a waiting task never holds
    the slot its sub-tasks need (with every slot held by a waiting cell, nothing would run), and it
    rejoins before going on, which waits for a free slot (no more tasks run than there are slots).
    The sub-tasks go before every waiting top-level task (another study cell): a slot a waiting task
    freed runs its own sub-tasks, not a new cell that would hold the slot while the first waits to rejoin."""

    priority = 1

    def map(self, fn: Callable[..., R], tasks: Iterable[Sequence[Any]]) -> Iterator[R]:
        return iter(self.gather([self.submit(fn, *args) for args in tasks]))

    def gather(self, futures: Sequence[TaskFuture[R]]) -> list[R]:
        from distributed import rejoin, secede

        secede()
        try:
            return list(self._results(futures))
        finally:
            rejoin()


@contextmanager
def sub_executor() -> Iterator[Executor]:
    """Where a task's own independent work runs: on the task's Dask cluster when the task runs on a
    Dask worker (with one torch thread each, as the worker's tasks), else serially (a process pool's
    workers cannot submit to their pool)."""
    try:
        from distributed import get_client, get_worker

        get_worker()
    except (ImportError, ValueError):
        yield SERIAL
        return
    client = get_client()
    workers = len(client.scheduler_info(n_workers=-1).get("workers", {})) or 1
    yield _SubTasks(client, workers, _worker_threads())


def _worker_threads() -> int:
    import torch

    return torch.get_num_threads()


def installed_version() -> str:
    """uverify's installed version, as a worker reports its own (package metadata, importable anywhere)."""
    return importlib.metadata.version("uverify")


def _check_workers(client: Any, address: str) -> None:
    """Every worker runs the same uverify: a task pickled here names functions the worker must import."""
    mine = installed_version()
    theirs = client.run(importlib.metadata.version, "uverify", on_error="return")
    for worker, version in sorted(theirs.items()):
        if isinstance(version, BaseException):
            raise UverifyError(
                f"dask worker {worker} of {address} cannot import uverify ({one_line(version, with_type=True)}); "
                f"install uverify {mine} there"
            )
        if version != mine:
            raise UverifyError(f"dask worker {worker} of {address} runs uverify {version}, this process {mine}")


def local_cluster(workers: int) -> Any:
    """A Dask LocalCluster of `workers` single-threaded worker processes, bound to 127.0.0.1 only
    (nothing outside this machine can reach it), no dashboard. Its workers fork from the forkserver
    (`forkserver_context`, Dask's own setting); a worker its nanny restarts later is spawned, as by
    default."""
    import dask
    from distributed import LocalCluster

    forkserver_context("distributed")
    with dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"}):
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            scheduler_port=0,
            dashboard_address=None,  # none; the scheduler's health/metrics server on loopback, any port
            scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.CRITICAL,  # its teardown chatter; task errors come back as futures
        )


def _connect(compute: ComputeSpec) -> tuple[Any, Any, int]:
    """(client, the LocalCluster it owns or None, workers) for a dask compute section."""
    from distributed import Client

    if compute.address is None:
        workers = compute.workers or (os.cpu_count() or 1)
        try:
            cluster = local_cluster(workers)
        except Exception as exc:
            raise UverifyError(f"dask: cannot start a local cluster ({one_line(exc, with_type=True)})") from None
        try:
            client = Client(cluster, set_as_default=False)
        except BaseException:
            cluster.close()
            raise
        return client, cluster, workers
    try:
        client = Client(compute.address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise UverifyError(
            f"dask scheduler {compute.address}: cannot connect within {CONNECT_TIMEOUT_S:g} s ({one_line(exc)})"
        ) from None
    try:
        wanted = compute.workers or 1
        try:
            client.wait_for_workers(wanted, timeout=WORKERS_TIMEOUT_S)
        except (OSError, TimeoutError):
            have = len(client.scheduler_info(n_workers=-1).get("workers", {}))
            raise UverifyError(
                f"dask scheduler {compute.address}: {have} worker(s) after {WORKERS_TIMEOUT_S:g} s, {wanted} wanted"
            ) from None
        _check_workers(client, compute.address)
    except BaseException:
        client.close()
        raise
    return client, None, max(wanted, len(client.scheduler_info(n_workers=-1).get("workers", {})))


@contextmanager
def open_executor(compute: ComputeSpec | Executor | None) -> Iterator[Executor]:
    """The executor a compute section asks for, open for the block and shut down after it, also on an
    error or Ctrl-C (a LocalCluster's processes end with it). Connecting happens before the block, so a
    scheduler that cannot be reached fails before anything is written. An executor already open (a
    study cell's `sub_executor`) is used as it is and left open."""
    if compute is not None and not isinstance(compute, ComputeSpec):
        yield compute
        return
    yield from _opened(compute or ComputeSpec())


def _opened(compute: ComputeSpec) -> Iterator[Executor]:
    if compute.executor == "serial":
        yield SERIAL
        return
    if compute.executor == "processes":
        pool = ProcessExecutor(compute.workers or (os.cpu_count() or 1), compute.threads)
        try:
            yield pool
        finally:
            pool.close()
        return
    client, cluster, workers = _connect(compute)
    try:
        # a remote worker's cores are its own: one thread per task slot (start workers with --nthreads 1)
        threads = compute.threads or (threads_per_worker(workers) if cluster is not None else 1)
        client.run(_worker_setup, threads)
        yield DaskExecutor(client, workers, threads)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def compute_from_options(workers: int | None, scheduler: str | None, base: ComputeSpec | None = None) -> ComputeSpec:
    """The compute section the command-line options ask for (`--workers N`, `--scheduler ADDRESS`:
    both mean Dask), or `base` (the spec's) when neither is given; errors blame the option."""
    if workers is None and scheduler is None:
        return base or ComputeSpec()
    raw: dict[str, Any] = {"executor": "dask", "workers": workers, "address": scheduler}
    try:
        return ComputeSpec.model_validate(raw)
    except ValidationError as exc:
        parts = []
        for err in exc.errors():
            where, problem = locate({**err, "loc": ("compute", *err["loc"])})
            parts.append(f"{FLAGS.get(where, where)}: {problem}")
        raise SpecError("; ".join(parts)) from None


def without_compute(spec: Any) -> Any:
    """The spec with the compute section at its default: what a run records (where it ran is not part
    of what it is, and a recorded address would be dialled by a later command on another machine)."""
    return spec.model_copy(update={"compute": ComputeSpec()})


__all__ = [
    "SERIAL",
    "DaskExecutor",
    "Executor",
    "ProcessExecutor",
    "SerialExecutor",
    "TaskFuture",
    "compute_from_options",
    "installed_version",
    "open_executor",
    "sub_executor",
    "threads_per_worker",
    "without_compute",
]


# ------------------------------------------------------------------ files shipped to workers, cached there
@dataclass(frozen=True)
class ShippedFiles:
    """Files sent to the workers by value (a cluster's workers need not see this machine's paths): each
    file's path relative to a root and its bytes, with one sha256 over both that names them on a worker."""

    digest: str
    files: tuple[tuple[str, bytes], ...]


def ship_files(root: Path, files: Sequence[Path]) -> ShippedFiles:
    """`files` (inside `root`) read now, once, for every task that needs them."""
    h = hashlib.sha256()
    read = []
    for file in files:
        name = file.relative_to(root).as_posix()
        data = file.read_bytes()
        h.update(f"{name}\0{len(data)}\0".encode())
        h.update(data)
        read.append((name, data))
    return ShippedFiles(h.hexdigest(), tuple(read))


_LOCAL_COPIES: dict[str, tempfile.TemporaryDirectory[str]] = {}


def local_copy(shipped: ShippedFiles) -> Path:
    """The folder where this process keeps `shipped`'s files, written on the first call (the folder is
    removed when the process exits)."""
    folder = _LOCAL_COPIES.get(shipped.digest)
    if folder is None:
        folder = tempfile.TemporaryDirectory(prefix=f"uverify-shipped-{shipped.digest[:12]}-")
        for name, data in shipped.files:
            target = Path(folder.name) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        _LOCAL_COPIES[shipped.digest] = folder
    return Path(folder.name)


WORKER_CACHE_SIZE = 4  # loaded models kept per worker process (the most recently used)
_WORKER_CACHE: OrderedDict[str, Any] = OrderedDict()


def worker_cached(key: str, build: Callable[[], R]) -> R:
    """`build()` once per process and `key` (a sha256 of what it is built from): a worker loads and
    traces a model once for all the tasks of a check, not once per task."""
    if key in _WORKER_CACHE:
        _WORKER_CACHE.move_to_end(key)
        value: R = _WORKER_CACHE[key]
        return value
    value = build()
    _WORKER_CACHE[key] = value
    while len(_WORKER_CACHE) > WORKER_CACHE_SIZE:
        _WORKER_CACHE.popitem(last=False)
    return value


__all__ += ["ShippedFiles", "local_copy", "ship_files", "worker_cached"]
