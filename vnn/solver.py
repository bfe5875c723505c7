"""`uverify-solver`: uverify behind the VNN-LIB 2.0 standard's solver command line (chapter 5), so any
tool that drives solvers that way can drive uverify.

    uverify-solver --name | --version
    uverify-solver verify QUERY.vnnlib --network NAME=MODEL.onnx [--timeout S]
    uverify-solver supports --<capability>

`verify` prints `sat`, `unsat`, `unknown` or `timed-out` on the first line of stdout, and after `sat`
the assignment in the standard's command-line format (each declared variable's name, type and
dimensions, then its values one per line, row-major; inputs, then outputs), the point onnxruntime
replayed. Everything else goes to stderr. The standard's error conditions (5.3.2), each one line on
stderr and exit code 2: a `--network` mapping naming too few or too many networks; element types that
differ from the model's; element types uverify cannot analyse soundly — it answers only for `real`
(its bounds are float32 arithmetic without outward rounding), so a query must declare `real` to accept
real-arithmetic semantics. Bad input of any other kind (a query that does not parse, a network that
does not fit it) is an error in the same form. A VNN-LIB 1.0 file is accepted too, with one `--network`
of any name (it declares none).

`supports` answers every mandatory capability from what the code does: `--onnx-operators` lists exactly
the ops the importer converts (`verifier.onnx_import.supported_ops`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from uverify import __version__
from uverify.errors import ExitStatus, UverifyError, one_line

__all__ = ["CAPABILITIES", "NAME", "capability_answer", "main", "solver"]

NAME = "uverify (CROWN and alpha-CROWN bounds through auto_LiRPA, PGD, branch and bound, onnxruntime replay)"
OPSET_RANGE = ("8", "18")  # the importer's converters follow each op's changes up to opset 18
CAPABILITIES: dict[str, str] = {
    "onnx-opset-versions": "\n".join(OPSET_RANGE),
    "onnx-element-types": "real",
    "onnx-operators": "",  # filled from the importer when asked
    "vnnlib-versions": "2.0\n2.0",
    "hidden-node-theories": "NH",
    "multiple-input-output-theories": "SIO",
    "multiple-network-theories": "SNET",
    "multiple-node-comparison-theories": "SNC",
    # input constraints must be bounds; output constraints may be any linear ones (beyond OUTC, short of LIN)
    "arithmetic-complexity-theories": "BND\nOUTC",
    "optimised-disjunctive-reasoning": "false",  # the query becomes its disjunctive normal form
    "serialise-assignments": "false",
    "unsat-proofs": "false",
}
_RESULT_WORDS = {"timeout": "timed-out"}


class SolverError(UverifyError):
    """One of the standard's error conditions, or bad input: one line on stderr, exit code 2."""


def capability_answer(name: str) -> str:
    if name == "onnx-operators":
        from uverify.verifier.onnx_import import supported_ops

        return "\n".join(supported_ops())
    return CAPABILITIES[name]


class _Solver(click.Group):
    """Errors as one line on stderr with exit code 2, never a traceback; usage errors too."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"uverify-solver: {one_line(exc.format_message())}", err=True)
            sys.exit(ExitStatus.BAD_INPUT)
        except UverifyError as exc:
            click.echo(f"uverify-solver: {one_line(exc)}", err=True)
            sys.exit(ExitStatus.BAD_INPUT)
        except click.Abort:
            click.echo("uverify-solver: aborted", err=True)
            sys.exit(ExitStatus.BAD_INPUT)


@click.group(
    "uverify-solver", cls=_Solver, invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]}
)
@click.option("--name", "show_name", is_flag=True, help="Print the solver's full name.")
@click.option("--version", "show_version", is_flag=True, help="Print the solver's version.")
@click.pass_context
def solver(ctx: click.Context, show_name: bool, show_version: bool) -> None:
    """uverify as a VNN-LIB 2.0 solver (the standard's chapter 5)."""
    if show_name and show_version:
        raise SolverError("--name and --version are one global option each; give one")
    if ctx.invoked_subcommand is not None and (show_name or show_version):
        raise SolverError(f"--name and --version cannot be combined with the {ctx.invoked_subcommand} command")
    if show_name:
        click.echo(NAME)
    elif show_version:
        click.echo(__version__)
    elif ctx.invoked_subcommand is None:
        raise SolverError("give --name, --version, or a command: verify, supports")


def _capability_option(name: str) -> Any:
    return click.option(f"--{name}", "asked", flag_value=name, help=CAPABILITIES[name].replace("\n", ", ") or "the ops")


@solver.command()
@click.pass_context
def supports(ctx: click.Context, asked: str | None) -> None:
    """Report one capability: --onnx-operators, --vnnlib-versions, ... (see --help)."""
    if asked is None:
        raise SolverError(f"supports needs one capability: {', '.join('--' + c for c in CAPABILITIES)}")
    click.echo(capability_answer(asked))


for _name in reversed(list(CAPABILITIES)):
    supports = _capability_option(_name)(supports)
solver.add_command(supports)


def _mapping(pairs: tuple[str, ...]) -> dict[str, Path]:
    networks: dict[str, Path] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise SolverError(f"--network {pair!r}: expected NAME=MODEL.onnx")
        if name in networks:
            raise SolverError(f"--network maps {name!r} twice")
        networks[name] = Path(path)
    return networks


def _onnx_element_type(path: Path) -> str:
    """The standard's name of the model input's element type (real is never a model's type)."""
    import onnx

    from uverify.verifier.onnx_import import load_onnx

    model = load_onnx(path)
    initializers = {i.name for i in model.graph.initializer}
    (value,) = [i for i in model.graph.input if i.name not in initializers][:1] or [None]
    if value is None:
        raise SolverError(f"{path} has no input")
    kind = onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)
    return {"FLOAT": "float32", "DOUBLE": "float64", "FLOAT16": "float16"}.get(kind, kind.lower())


@solver.command()
@click.argument("query", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--network", "networks", multiple=True, metavar="NAME=MODEL.onnx", help="The model of a declared network."
)
@click.option("--timeout", type=float, metavar="SECONDS", help="Wall-clock seconds, loading included.")
@click.option(
    "--serialise-assignments", type=click.Path(path_type=Path), help="Not supported: the assignment goes to stdout."
)
def verify(query: Path, networks: tuple[str, ...], timeout: float | None, serialise_assignments: Path | None) -> None:
    """Decide a VNN-LIB query over its network (one --network per declared network)."""
    start = time.monotonic()
    from uverify.vnn.reader import read_vnnlib
    from uverify.vnn.runner import run_instance

    if timeout is not None and not timeout >= 0:
        raise SolverError(f"--timeout must be zero or more seconds, got {timeout}")
    if serialise_assignments is not None:
        click.echo(
            "uverify-solver: warning: --serialise-assignments is not supported; the assignment goes to stdout", err=True
        )
    parsed = read_vnnlib(query)
    mapping = _mapping(networks)
    if parsed.version == "1.0":
        if len(mapping) != 1:
            raise SolverError(f"a VNN-LIB 1.0 query has one network: give one --network, not {len(mapping)}")
        model = next(iter(mapping.values()))
    else:
        missing = [parsed.network] if parsed.network not in mapping else []
        extra = sorted(set(mapping) - {parsed.network})
        if missing:
            raise SolverError(f"network {parsed.network!r} of {query} has no --network {parsed.network}=MODEL.onnx")
        if extra:
            raise SolverError(f"--network names {', '.join(map(repr, extra))}, which {query} does not declare")
        model = mapping[parsed.network]
    declared = {parsed.input.element_type, parsed.output.element_type}
    if declared != {"real"}:
        actual = _onnx_element_type(model)
        wrong = sorted(t for t in declared - {"real"} if t != actual)
        if wrong:
            raise SolverError(f"{query} declares {', '.join(wrong)} but {model.name} computes in {actual}")
        raise SolverError(
            f"uverify cannot give a sound analysis over {', '.join(sorted(declared - {'real'}))} (its bounds are "
            "float32 arithmetic without outward rounding); declare the variables real to accept real semantics"
        )
    outcome = run_instance(model, query, timeout, start=start)
    if outcome.result == "error":
        raise SolverError(outcome.message)
    lines = [_RESULT_WORDS.get(outcome.result, outcome.result)]
    if outcome.result == "sat" and outcome.x is not None and outcome.y is not None:
        for decl, values in ((parsed.input, outcome.x), (parsed.output, outcome.y)):
            lines.append(f"{decl.name} {decl.element_type} [{','.join(map(str, decl.shape))}]")
            lines += [repr(float(v)) for v in values.ravel()]
    click.echo("\n".join(lines))


def main() -> None:
    solver(prog_name="uverify-solver")
