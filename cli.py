"""The `uverify` command: parse, call one library function, print, map errors to exit codes.

Heavy imports (torch, onnx) happen inside the commands so that `uverify --help` answers at once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from uverify import __version__
from uverify.errors import ExitStatus, UverifyError


class BadInput(click.ClickException):
    """A `UverifyError` as click shows it: `error: <one line>` and exit code 2, no traceback."""

    exit_code = ExitStatus.BAD_INPUT

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except UverifyError as exc:
            raise BadInput(str(exc).replace("\n", " ")) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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
        help="YAML spec file, or the name of a shipped spec (mixture, digits, loan).",
    )(f)


def _load(spec_ref: str, data_path: Path | None) -> Any:
    from uverify.specs import load_spec

    return load_spec(spec_ref, {"data.path": str(data_path)} if data_path else None)


@cli.command()
@_spec_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run directory to write.")
@click.option("--adversarial", is_flag=True, help="PGD adversarial training (spec's train.adversarial, or defaults).")
@click.option("--data", "data_path", type=click.Path(path_type=Path), help="Override the spec's data.path.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def train(spec_ref: str, out: Path, adversarial: bool, data_path: Path | None, quiet: bool) -> None:
    """Train the spec's model and write model.onnx (checked by onnxruntime) and train_log.json.

    \b
    Example:
      uverify train --spec specs/mixture.yaml --out runs/mixture --adversarial
    """
    from uverify.pipeline import train_run

    spec = _load(spec_ref, data_path)
    run = train_run(spec, out, adversarial=adversarial, progress=not quiet)
    click.echo(_describe(spec.name, run))


@cli.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/demo"), show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def demo(out: Path, quiet: bool) -> None:
    """Train a standard and an adversarial model on the embedded default (mixture) and export both.

    \b
    Example:
      uverify demo --out runs/demo
    """
    from uverify.datasets import load
    from uverify.pipeline import train_run
    from uverify.specs import load_spec

    started = time.perf_counter()
    spec = load_spec("mixture")
    splits = load(spec.data)
    click.echo(
        f"mixture: {spec.data.classes} classes, {spec.data.dims} dims, "
        f"{len(splits.train)} train / {len(splits.test)} test samples"
    )
    for adversarial in (False, True):
        name = "adversarial" if adversarial else "standard"
        run = train_run(spec, out / name, adversarial=adversarial, splits=splits, progress=not quiet)
        click.echo(_describe(spec.name, run))
    click.echo(f"demo finished in {time.perf_counter() - started:.1f} s")


def _describe(name: str, run: Any) -> str:
    return (
        f"{run.training:>11} {name}: clean test accuracy {run.test_accuracy:.4f} (onnxruntime), "
        f"train {run.train_accuracy:.4f}, export max|diff| {run.export_max_abs_diff:.1e}, "
        f"{run.seconds:.1f} s -> {run.out / 'model.onnx'}"
    )


def main() -> None:
    cli(prog_name="uverify")
