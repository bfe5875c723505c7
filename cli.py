"""The `uverify` command: parse, call one library function, print, map errors to exit codes.

Heavy imports (torch, onnx) happen inside the commands so that `uverify --help` answers at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from uverify import __version__
from uverify.errors import ExitStatus, UverifyError, one_line
from uverify.kinds import BoundMethod, GateMetric, Norm, UnlearningMethod, values
from uverify.specs import shipped_specs
from uverify.vnn.cli import vnncomp


class BadInput(click.ClickException):
    """A `UverifyError` as click shows it: `error: <one line>` and exit code 2, no traceback."""

    exit_code = ExitStatus.BAD_INPUT

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _usage_line(exc: click.UsageError) -> BadInput:
    """click's usage error (several lines: usage, hint, error) as the one-line form of every other error."""
    where = exc.ctx.command_path if exc.ctx is not None else "uverify"
    return BadInput(f"{where}: {one_line(exc.format_message())} (see {where} --help)")


class _Group(click.Group):
    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _usage_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _usage_line(exc) from None
        except UverifyError as exc:
            raise BadInput(one_line(exc)) from None


@click.group("uverify", cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="uverify")
def cli() -> None:
    """Is the unlearned model still robust?

    Train M, unlearn a deletion request to get M', export both to ONNX and check the L_p-ball property
    certified (CROWN) and empirical (PGD).

    \b
    Example:
      uverify train --spec mixture --out runs/mixture --adversarial
    """


def _spec_option(f: Any) -> Any:
    return click.option(
        "--spec",
        "spec_ref",
        required=True,
        metavar="SPEC",
        help=f"YAML spec file, or a shipped spec: {', '.join(shipped_specs())}.",
    )(f)


_METHODS = click.Choice(values(UnlearningMethod))


def _compute_options(f: Any) -> Any:
    """`--workers N` and `--scheduler ADDRESS`: run the command's independent tasks on Dask."""
    f = click.option(
        "--scheduler",
        metavar="ADDRESS",
        help="A running Dask scheduler (tcp://HOST:PORT) whose workers run the tasks. Default: the spec's compute.",
    )(f)
    return click.option(
        "--workers",
        type=int,
        metavar="N",
        help="Run the independent tasks on N Dask workers: a local cluster on 127.0.0.1 (no --scheduler), "
        "or wait for N workers of --scheduler.",
    )(f)


def _deprecated_method(new: str, choice: click.Choice, multiple: bool = False) -> Any:
    """The old `--method` spelling, hidden: it meant the unlearning method on train/unlearn/study and the
    bound method on check. Kept for one release with a warning; `new` is the option that replaces it."""

    def warn(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value:
            click.echo(f"warning: --method is deprecated (it meant two things); use {new}", err=True)
        return value

    return click.option("--method", "old_method", type=choice, hidden=True, multiple=multiple, callback=warn)


def _either(new: Any, old: Any, name: str) -> Any:
    if new and old and new != old:
        raise UverifyError(f"{name} and the deprecated --method disagree ({new} vs {old})")
    return new or old


def _positive_samples(value: str | None) -> tuple[int | None, Path | None]:
    """`--samples N` (a count of the spec's samples) or `--samples FILE.npz`; a number is never a file name."""
    if value is None:
        return None, None
    text = value.strip()
    if text.lstrip("+-").isdigit():
        return int(text), None  # validated as data.samples, so `--samples -5` fails as the schema says
    return None, Path(value)


@cli.command()
@_spec_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run directory to write.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it is already a run (says what it replaces).")
@click.option("--adversarial", is_flag=True, help="PGD adversarial training (spec's train.adversarial, or defaults).")
@click.option(
    "--unlearning", type=_METHODS, help="Unlearning method to train for. Default: the spec's unlearning.method."
)
@_deprecated_method("--unlearning", _METHODS)
@click.option("--data", "data_path", type=click.Path(path_type=Path), help="Override the spec's data.path.")
@_compute_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(
    spec_ref: str,
    out: Path,
    overwrite: bool,
    adversarial: bool,
    unlearning: str | None,
    old_method: str | None,
    data_path: Path | None,
    workers: int | None,
    scheduler: str | None,
    quiet: bool,
) -> None:
    """Train M for later unlearning and export it to ONNX (checked by onnxruntime).

    SISA trains the sharded, sliced ensemble with its checkpoints; Amnesiac trains one model and
    records every batch's update. The run directory holds model.onnx (vote.json for a majority vote),
    run.json, spec.json and train_log.json. OUT must be new or an empty folder; an existing run is
    replaced only with --overwrite, and a folder of other files never. With --workers or --scheduler,
    SISA's shards train in parallel on Dask (the same bytes as serially).

    \b
    Example:
      uverify train --spec specs/mixture.yaml --unlearning sisa --out runs/mixture --adversarial
    """
    from uverify.compute import compute_from_options
    from uverify.pipeline import train_run
    from uverify.specs.load import load_spec

    method = _either(unlearning, old_method, "--unlearning")
    overrides: dict[str, Any] = {"unlearning.method": method} if method else {}
    if data_path:
        overrides["data.path"] = str(data_path)
    flags = {"unlearning.method": "--unlearning", "data.path": "--data"}
    spec = load_spec(spec_ref, overrides or None, flags)
    compute = compute_from_options(workers, scheduler, spec.compute)
    run = train_run(spec, out, adversarial=adversarial, progress=not quiet, overwrite=overwrite, compute=compute)
    if run.replaced:
        click.echo(f"replaced {out}: {run.replaced}")
    click.echo(_describe(spec.name, run))


@cli.command()
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="A run of `uverify train`.",
)
@click.option(
    "--unlearning", type=_METHODS, help="The run's method (checked: a SISA run cannot be unlearned by Amnesiac)."
)
@_deprecated_method("--unlearning", _METHODS)
@click.option(
    "--delete",
    "ids_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File of training-set sample ids to delete, one per line.",
)
@click.option("--delete-fraction", type=float, help="Delete this seeded fraction of the training set instead.")
@click.option("--seed", type=int, default=None, help="Seed of --delete-fraction. Default: the spec's delete.seed.")
@click.option("--baseline", is_flag=True, help="Also retrain from scratch without the ids and compare (slow).")
@click.option(
    "--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), help="Also write the metrics here."
)
@_compute_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
def unlearn(
    run_dir: Path,
    unlearning: str | None,
    old_method: str | None,
    ids_file: Path | None,
    delete_fraction: float | None,
    seed: int | None,
    baseline: bool,
    json_out: Path | None,
    workers: int | None,
    scheduler: str | None,
    quiet: bool,
) -> None:
    """Delete training samples from a run: M' replaces M in the run, all or nothing.

    Without --delete or --delete-fraction the spec's unlearning.delete request is used. The same
    request twice is a no-op; every deletion is appended to the run's deletions.json and its
    metrics (accuracy on test / retained / forgotten, membership inference, time) go to unlearn.json.
    With --workers or --scheduler, SISA's touched shards retrain in parallel on Dask.

    \b
    Example:
      uverify unlearn --run runs/mixture --unlearning sisa --delete-fraction 0.01 --seed 0
    """
    from uverify.compute import compute_from_options
    from uverify.pipeline import unlearn_run
    from uverify.unlearning.metrics import render_unlearning

    compute = compute_from_options(workers, scheduler)
    result = unlearn_run(
        run_dir,
        ids_file=ids_file,
        fraction=delete_fraction,
        seed=seed,
        from_spec=True,
        method=_either(unlearning, old_method, "--unlearning"),
        baseline=baseline,
        metrics_out=json_out,
        progress=not quiet,
        compute=compute,
    )
    if result.noop:
        click.echo(f"nothing to do: all {result.requested} requested ids are already deleted from {result.run}")
        return
    click.echo(render_unlearning(result.entry))
    click.echo(f"model: {result.model_path}  log: {result.log_path}")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def demo(out: Path, quiet: bool) -> None:
    """The study on the embedded default (mixture): SISA and Amnesiac, standard and adversarial
    training, each checked before and after deleting 1% of the training set; ends with the RQ1-RQ4
    tables and the paths of the plots. The same as `uverify study --spec mixture --out runs/demo`.

    \b
    Example:
      uverify demo --out runs/demo
    """
    from uverify.specs.load import load_spec
    from uverify.study import render_study_summary
    from uverify.study import study as run_study

    spec = load_spec("mixture")
    sisa = spec.unlearning.sisa
    click.echo(
        f"mixture: {spec.data.classes} classes, {spec.data.dims} dims, {spec.data.n_samples} samples; "
        f"SISA {sisa.shards} shards x {sisa.slices} slices ({sisa.aggregation}), Amnesiac "
        f"{spec.unlearning.amnesiac.repair_epochs} repair epoch(s); {spec.verify.method} bounds and PGD"
    )
    result = run_study(spec, out, progress=not quiet, echo=click.echo)
    click.echo(render_study_summary(result, spec))
    click.echo(f"demo finished in {result.seconds:.1f} s")


def _check_run(
    run_dir: Path,
    overrides: dict[str, Any],
    flags: dict[str, str],
    reuse: bool,
    out: Path | None,
    quiet: bool,
    cross_check: bool,
    complete: bool,
    timeout: float | None,
) -> None:
    """`check --run`: the run's spec with the flags over it, certificates of unchanged shards reused."""
    from uverify.rundir import open_run
    from uverify.specs.load import load_spec
    from uverify.verifier.check import with_complete
    from uverify.verifier.incremental import check_run_with_reuse
    from uverify.verifier.report import render_table

    run = open_run(run_dir)  # a folder that is not a run is refused before anything else
    chosen = None
    if overrides or complete or timeout is not None:
        chosen = with_complete(load_spec(run.dir.spec_file, overrides, flags), complete, timeout)
    report, _ = check_run_with_reuse(
        run_dir, reuse=reuse, out=out, progress=not quiet, cross_check=cross_check, spec=chosen,
        notes=lambda line: click.echo(line, err=True),
    )  # fmt: skip
    click.echo(render_table(report))
    if out:
        click.echo(f"report: {out}  counterexamples: {out.with_suffix('.counterexamples.npz')}")


@cli.command()
@click.option(
    "--spec",
    "spec_ref",
    metavar="SPEC",
    help=f"YAML spec file, or a shipped spec: {', '.join(shipped_specs())}. Optional with --samples FILE.npz.",
)
@click.option("--model", "model_path", type=click.Path(path_type=Path), help="The ONNX classifier (or give --run).")
@click.option(
    "--run",
    "run_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Check this run's current model with its spec, reusing the certificates of unchanged SISA shards.",
)
@click.option("--no-reuse", is_flag=True, help="With --run: bound every shard again (a full check).")
@click.option("--bounds", type=click.Choice(values(BoundMethod)), help="Bound method. Default: the spec's, or CROWN.")
@_deprecated_method("--bounds", click.Choice(values(BoundMethod)))
@click.option("--norm", type=click.Choice(values(Norm)), help="Norm of the ball.")
@click.option("--epsilon", type=float, multiple=True, help="Ball radius; repeat for a sweep. Default: the spec's.")
@click.option(
    "--samples",
    "samples_arg",
    metavar="N|FILE.npz",
    help="How many samples of the spec's data set, or an .npz with arrays x, y (and ids).",
)
@click.option("--data", "data_path", type=click.Path(path_type=Path), help="Override the spec's data.path.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the JSON report here (and the counterexamples beside it).",
)
@click.option("--cross-check", is_flag=True, help="Also attack certified samples (a soundness audit; slower).")
@click.option(
    "--complete", is_flag=True, help="Branch and bound on every sample left unknown (the spec's verify.complete)."
)
@click.option("--timeout", type=float, metavar="S", help="Seconds of branch and bound per sample and epsilon.")
@click.option(
    "--external-solver",
    metavar="CMD",
    help="Hand every sample left unknown to this VNN-LIB 2.0 solver command (the spec's verify.external).",
)
@click.option(
    "--export-vnnlib",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Also write every (sample, epsilon) property as VNN-LIB, with instances.csv and the model, to DIR.",
)
@_compute_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
def check(
    spec_ref: str | None,
    model_path: Path | None,
    run_dir: Path | None,
    no_reuse: bool,
    bounds: str | None,
    old_method: str | None,
    norm: str | None,
    epsilon: tuple[float, ...],
    samples_arg: str | None,
    data_path: Path | None,
    out: Path | None,
    cross_check: bool,
    complete: bool,
    timeout: float | None,
    external_solver: str | None,
    export_vnnlib: Path | None,
    workers: int | None,
    scheduler: str | None,
    quiet: bool,
) -> None:
    """Check the L_p-ball property of an ONNX model: certified (bounds) and empirical (PGD).

    Without --spec, give the samples (--samples FILE.npz) and --epsilon: the other settings are the
    defaults, the input domain is the one the model records (if any), and the report says so.
    Exit code 0 when the check ran, whatever the robustness (`uverify gate` decides pass/fail).

    --external-solver runs `CMD verify QUERY.vnnlib --network N=MODEL.onnx --timeout S` on each sample
    left unknown: its unsat counts as verified, its sat once onnxruntime replays the assignment.
    --export-vnnlib writes DIR/instances.csv for `uverify vnncomp --instances` or another verifier.
    With --workers or --scheduler (or the spec's compute section), the sample batches and branch and
    bound's samples run in parallel on Dask; the report is the serial one.

    \b
    Examples:
      uverify check --spec mixture --model runs/mixture/model.onnx --epsilon 0.01 --epsilon 0.02 --out report.json
      uverify check --model my_classifier.onnx --samples my_samples.npz --epsilon 0.05
      uverify check --spec mixture --model m.onnx --external-solver "uverify-solver" --export-vnnlib bench/
    """
    from uverify.compute import compute_from_options
    from uverify.specs.load import check_spec_from_flags, load_spec
    from uverify.verifier.check import check_and_save
    from uverify.verifier.report import render_table

    compute = compute_from_options(workers, scheduler) if workers is not None or scheduler is not None else None
    count, npz = _positive_samples(samples_arg)
    overrides: dict[str, Any] = {}
    method = _either(bounds, old_method, "--bounds")
    if method:
        overrides["verify.method"] = method
    if norm:
        overrides["property.norm"] = norm
    if epsilon:
        overrides["property.epsilon"] = list(epsilon)
    flags = {"verify.method": "--bounds", "property.norm": "--norm", "property.epsilon": "--epsilon"}
    if run_dir is not None:
        given = {"--spec": spec_ref, "--model": model_path, "--samples": samples_arg, "--data": data_path,
                 "--external-solver": external_solver, "--export-vnnlib": export_vnnlib}  # fmt: skip
        clash = [flag for flag, value in given.items() if value is not None]
        if clash:
            raise UverifyError(f"--run checks the run's model on the run's spec and samples; drop {', '.join(clash)}")
        if compute is not None:
            raise UverifyError("--run reuses certificates in this process; --workers and --scheduler go with --model")
        _check_run(run_dir, overrides, flags, not no_reuse, out, quiet, cross_check, complete, timeout)
        return
    if no_reuse:
        raise UverifyError("--no-reuse goes with --run (certificates are reused only within a run)")
    if model_path is None:
        raise UverifyError("give the model to check: --model M.onnx, or --run RUN_DIR")
    if external_solver is not None:  # blamed only when given: a spec's own verify.external errors are the file's
        overrides["verify.external.command"] = external_solver
        flags["verify.external.command"] = "--external-solver"
    if spec_ref is None:
        if npz is None:
            raise UverifyError("without --spec, give the samples to check as --samples FILE.npz (arrays x, y)")
        if not epsilon:
            raise UverifyError("without --spec, give the ball radius as --epsilon E (repeat for a sweep)")
        if data_path:
            raise UverifyError("--data overrides a spec's data.path; without --spec there is none")
        spec: Any = check_spec_from_flags(model_path.stem or "model", overrides, flags)
    else:
        if data_path:
            overrides["data.path"] = str(data_path)
        if count is not None:
            overrides["data.samples"] = count
        spec = load_spec(spec_ref, overrides, {**flags, "data.path": "--data", "data.samples": "--samples"})
    external, export = _vnnlib_options(spec, model_path, export_vnnlib)
    report = check_and_save(
        model_path, spec, npz, out, progress=not quiet, cross_check=cross_check, complete=complete, timeout=timeout,
        external=external, export=export, compute=compute,
    )  # fmt: skip
    click.echo(render_table(report))
    if out:
        click.echo(f"report: {out}  counterexamples: {out.with_suffix('.counterexamples.npz')}")
    if export_vnnlib:
        click.echo(f"VNN-LIB: {export_vnnlib / 'instances.csv'} (uverify vnncomp --instances ...)")


def _vnnlib_options(spec: Any, model_path: Path, export_dir: Path | None) -> tuple[Any, Any]:
    """The external-solver driver of the spec's verify.external, and the --export-vnnlib writer."""
    external = None
    if spec.verify.external is not None:
        from uverify.vnn.external import solver_for

        external = solver_for(spec.verify.external, model_path)
    if export_dir is None:
        return external, None
    from uverify.vnn.writer import check_benchmark_folder, write_benchmark

    check_benchmark_folder(export_dir)
    settings = spec.verify.external or spec.verify.complete
    timeout = settings.timeout_s if settings is not None else 60.0

    def export(properties: Any) -> None:
        write_benchmark(export_dir, model_path, properties, timeout)

    return external, export


@cli.command()
@click.option(
    "--spec",
    "spec_refs",
    required=True,
    multiple=True,
    metavar="SPEC",
    help=f"YAML spec file, or a shipped spec: {', '.join(shipped_specs())}. Repeat for one row per data set.",
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Study directory.")
@click.option(
    "--unlearning", "methods", type=_METHODS, multiple=True, help="Limit the grid to these methods. Default: both."
)
@_deprecated_method("--unlearning", _METHODS, multiple=True)
@click.option(
    "--data", "data_path", type=click.Path(path_type=Path), help="Override the spec's data.path (one --spec only)."
)
@_compute_options
@click.option("--quiet", is_flag=True, help="No progress bar.")
def study(
    spec_refs: tuple[str, ...],
    out: Path,
    methods: tuple[str, ...],
    old_method: tuple[str, ...],
    data_path: Path | None,
    workers: int | None,
    scheduler: str | None,
    quiet: bool,
) -> None:
    """The seed's study: {SISA, Amnesiac} x {standard, adversarial} x {before, after deletion}.

    Trains, checks M, unlearns the spec's deletion request, checks M', then writes the seed's tables at
    the headline sigma (one row per --spec; study.headline_epsilon, default the sweep's middle value),
    certified R-ACC and the deletion's deltas, the per-epsilon RQ1-RQ4 tables (tables.md, tables.json),
    plots (plots/*.png) and report.html, one self-contained page. A rerun reuses the finished steps.
    With --workers or --scheduler, the grid's cells run in parallel on Dask (the same results).

    \b
    Examples:
      uverify study --spec specs/mixture.yaml --out runs/study
      uverify study --spec mixture --spec digits --out runs/two
      uverify study --spec mixture --out runs/study --workers 2
    """
    from uverify.compute import compute_from_options
    from uverify.specs.load import load_spec
    from uverify.study import METHODS, render_study_summary
    from uverify.study import study as run_study

    if data_path and len(spec_refs) > 1:
        raise UverifyError("--data overrides one spec's data.path; with several --spec, set data.path in each")
    overrides = {"data.path": str(data_path)} if data_path else None
    specs = [load_spec(ref, overrides, {"data.path": "--data"}) for ref in spec_refs]
    chosen = tuple(dict.fromkeys(methods + old_method)) or METHODS
    compute = compute_from_options(workers, scheduler) if workers is not None or scheduler is not None else None
    result = run_study(specs, out, methods=chosen, progress=not quiet, echo=click.echo, compute=compute)
    click.echo(render_study_summary(result))
    click.echo(f"study finished in {result.seconds:.1f} s")


@cli.command()
@click.argument("before", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("after", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "json"]), default="table", show_default=True)
def compare(before: Path, after: Path, fmt: str) -> None:
    """Compare two check reports (M before deletion, M' after): per epsilon ACC, certified and PGD
    robust accuracy and Gap with deltas, and the samples that lost or gained certification or robustness.

    \b
    Example:
      uverify compare runs/x/report_before.json runs/x/report_after.json --format markdown
    """
    from uverify.verifier.compare import compare as run_compare
    from uverify.verifier.compare import render_comparison
    from uverify.verifier.report import load_report

    comparison = run_compare(load_report(before), load_report(after), str(before), str(after))
    click.echo(render_comparison(comparison, fmt))


@cli.command()
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Report of M.")
@click.option("--candidate", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Report of M'.")
@click.option(
    "--metric",
    type=click.Choice(values(GateMetric)),
    help="Default: the spec's gate.metric.",
)
@click.option("--max-drop", type=float, help="Largest allowed drop, a fraction. Default: the spec's gate.max_drop.")
@click.option(
    "--spec",
    "spec_ref",
    metavar="SPEC",
    help="Take the gate defaults from this spec instead of the one the baseline report embeds.",
)
@click.option("--junit", type=click.Path(dir_okay=False, path_type=Path), help="Also write JUnit XML here.")
def gate(
    baseline: Path,
    candidate: Path,
    metric: str | None,
    max_drop: float | None,
    spec_ref: str | None,
    junit: Path | None,
) -> None:
    """Fail (exit code 1) when the candidate's robustness dropped by more than allowed at any epsilon.

    Exit codes: 0 pass, 1 regression, 2 bad input. Defaults come from the spec's `gate:` section.

    \b
    Example:
      uverify gate --baseline before.json --candidate after.json --metric certified_accuracy --max-drop 0.02
    """
    from uverify.verifier.compare import gate_reports

    result = gate_reports(baseline, candidate, metric=metric, max_drop=max_drop, spec_ref=spec_ref, junit=junit)
    click.echo(result.summary())
    if junit:
        click.echo(f"junit: {junit}")
    if not result.passed:
        raise SystemExit(ExitStatus.GATE_FAILED)


def _describe(name: str, run: Any) -> str:
    accuracy = "n/a" if run.test_accuracy is None else f"{run.test_accuracy:.4f}"
    return (
        f"{run.training:>11} {run.method} {name}: clean test accuracy {accuracy} (onnxruntime), "
        f"train {run.train_accuracy:.4f}, export max|diff| {run.export_max_abs_diff:.1e}, "
        f"{run.seconds:.1f} s → {run.model_path}"
    )


cli.add_command(vnncomp)


def main() -> None:
    """The console script. It ends the process with `os._exit` once the command has finished and every
    exit handler has run: the interpreter's own teardown of torch and auto_LiRPA adds about a second to
    every command and does nothing a finished command needs (every file it wrote is closed; files.py
    writes are fsynced and renamed into place before the command returns)."""
    import atexit
    import os
    import sys

    try:
        cli.main(prog_name="uverify")
        code: int = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    atexit._run_exitfuncs()  # what a normal exit would run: tempfile clean-up, multiprocessing finalisers
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`uverify ... | head`): nothing more to say
            code = code or 1
    os._exit(code)
