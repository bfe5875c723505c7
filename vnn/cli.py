"""`uverify vnncomp`: one VNN-COMP instance, or a benchmark folder's instance list.

Kept light at import (click only): the runner, and with it torch, loads when the command runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from uverify.errors import UverifyError

__all__ = ["vnncomp"]


@click.command("vnncomp")
@click.argument("network", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.argument("prop", metavar="PROP.vnnlib", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--instances",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run every row of this instance list (onnx,vnnlib,timeout; or a CSV with a header).",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder the list's paths are relative to. Default: the list's folder.",
)
@click.option("--timeout", type=float, help="Wall-clock seconds, load included; with --instances, a cap on each row's.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The result file (one instance; default: print it), or the results CSV (--instances; default results.csv).",
)
@click.option(
    "--ground-truth",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A CSV with onnx, vnnlib and a truth column, for the score (a truth column in the list also works).",
)
@click.option("--workers", type=int, metavar="N", help="With --instances: N instances at once, on this machine.")
@click.option(
    "--scheduler",
    metavar="ADDRESS",
    help="With --instances: run them on this Dask scheduler's workers (tcp://HOST:PORT); with --workers, wait "
    "for N of them.",
)
def vnncomp(
    network: Path | None,
    prop: Path | None,
    instances: Path | None,
    root: Path | None,
    timeout: float | None,
    out: Path | None,
    ground_truth: Path | None,
    workers: int | None,
    scheduler: str | None,
) -> None:
    """Verify VNN-COMP instances: ONNX network + VNN-LIB property (1.0 or 2.0, gzipped allowed).

    One instance writes VNN-COMP's result file: `sat` (then the counterexample, replayed by
    onnxruntime), `unsat`, `unknown`, `timeout` or `error`. With --instances, every row runs under its
    own timeout; the results CSV has VNN-COMP's columns (category, onnx, vnnlib, prepare s, result,
    run s), the result files go to the folder beside it named like it, and with a ground truth the
    VNN-COMP score is printed per category (+10 correct, -150 wrong). Exit code 0 whatever the
    verdicts; 2 for bad input.

    With --instances and --workers N, N instances run at once, each in its own process under its own
    clock (keep N at or below the cores); with --scheduler, each instance is a Dask task on that
    scheduler's workers, its files shipped to them. The results CSV keeps the list's order.

    \b
    Examples:
      uverify vnncomp net.onnx prop.vnnlib --timeout 120 --out result.txt
      uverify vnncomp --instances benchmarks/acasxu/instances.csv --out acasxu.csv
    """
    start = time.monotonic()
    if timeout is not None and not timeout > 0:
        raise UverifyError(f"--timeout must be positive, got {timeout}")
    if instances is not None:
        if network is not None or prop is not None:
            raise UverifyError("give either NETWORK PROP.vnnlib or --instances, not both")
        _run_list(instances, root, timeout, out or Path("results.csv"), ground_truth, workers, scheduler)
        return
    if network is None or prop is None:
        raise UverifyError("give NETWORK.onnx PROP.vnnlib, or --instances LIST.csv")
    if workers is not None or scheduler is not None:
        raise UverifyError("--workers and --scheduler run an instance list in parallel; give --instances")
    if root is not None or ground_truth is not None:
        raise UverifyError("--root and --ground-truth go with --instances")
    _run_one(network, prop, timeout, out, start)


def _run_one(network: Path, prop: Path, timeout: float | None, out: Path | None, start: float) -> None:
    from uverify.vnn.results import format_counterexample
    from uverify.vnn.runner import run_instance, write_outcome

    outcome = run_instance(network, prop, timeout, start=start)
    if outcome.bad_input:
        if out is not None:
            write_outcome(out, outcome)  # a harness still finds a result file: `error`
        raise UverifyError(outcome.message)
    if out is not None:
        write_outcome(out, outcome)
        stage = f" by {outcome.stage}" if outcome.stage else ""
        times = f"prepare {outcome.prepare_seconds:.2f} s, run {outcome.run_seconds:.2f} s"
        click.echo(f"{outcome.result}{stage} ({times}) → {out}")
    else:
        text = outcome.result + "\n"
        if outcome.x is not None and outcome.y is not None:
            text += format_counterexample(outcome.x, outcome.y)
        click.echo(text, nl=False)
    if outcome.result == "error":
        click.echo(f"error: {outcome.message}", err=True)


def _run_list(
    instances: Path,
    root: Path | None,
    timeout: float | None,
    out: Path,
    ground_truth: Path | None,
    workers: int | None,
    scheduler: str | None,
) -> None:
    from uverify.vnn.results import read_ground_truth, read_instances, render_score
    from uverify.vnn.runner import instance_workers, results_folder, run_instances, with_truth

    rows = read_instances(instances, root)
    if ground_truth is not None:
        rows = with_truth(rows, read_ground_truth(ground_truth))
    with instance_workers(workers, scheduler) as (at_once, executor):
        results = run_instances(rows, out, timeout_cap=timeout, echo=click.echo, workers=at_once, executor=executor)
    click.echo(render_score(results))
    click.echo(f"results: {out}  result files: {results_folder(out)}")
