"""The check's report: a versioned JSON document (pydantic, so `compare` and `gate` read it back
validated) and the table printed on stdout.

Accuracies are fractions of all checked samples. Per the seed's tables, Gap = clean accuracy - robust
accuracy; we report it for the PGD (empirical) and the certified robust accuracy.

With complete verification (`verify.complete`), branch and bound runs on the samples the incomplete pass
left unknown: verdicts and accuracies then count its answers too (certified ≤ exact ≤ PGD, equal when
every sample is decided), and each epsilon gains a `complete` block (the incomplete figures, what BaB
decided, its stop reasons and time) and each sample row a `complete` entry per epsilon. Without it
neither key is written, so such reports are byte for byte what they were.

With an external solver (`verify.external`, vnn/external.py), the samples still unknown go to it: each
epsilon gains an `external` block (the solver's name, its answers, what they decided) and each sample
row an `external` entry per epsilon; its `unsat` counts as verified, its `sat` as falsified only once
onnxruntime replays the assignment. Absent without a solver, like `complete`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, model_serializer

from uverify.errors import UverifyError
from uverify.files import atomic_write_json

SCHEMA = "uverify.report/1"
Verdict = Literal["verified", "falsified", "unknown", "misclassified"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _DropsUnsetComplete(_Model):
    """A model whose optional `complete` and `external` fields are left out of the dump when None."""

    @model_serializer(mode="wrap")
    def _drop_complete(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        for key in ("complete", "external"):
            if isinstance(data, dict) and data.get(key, 0) is None:
                del data[key]
        return data


class Counts(_Model):
    verified: int
    falsified: int
    unknown: int
    misclassified: int
    rejected_counterexamples: int = Field(description="PGD points onnxruntime did not confirm")


class Timings(_Model):
    bounds: float
    attack: float
    referee: float = Field(description="onnxruntime: clean predictions and counterexample checks")


StopReason = Literal["verified", "falsified", "timeout", "memory", "exhausted"]


class CompleteResult(_Model):
    """Branch and bound at one epsilon, on the samples the incomplete pass left unknown."""

    mode: str = Field(description="input or relu splitting (auto's choice), or 'skipped'")
    timeout_s: float = Field(description="the budget per sample")
    attempted: int = Field(description="samples the incomplete pass left unknown")
    verified: int = Field(description="of those, verified by branch and bound")
    falsified: int = Field(description="of those, falsified (counterexample replayed by onnxruntime)")
    undecided: int
    stop_reasons: dict[str, int] = Field(description="verified, falsified, timeout, memory, exhausted: how many")
    seconds: float
    exact_accuracy: float | None = Field(description="the robust accuracy itself, when every sample is decided")
    incomplete_certified_accuracy: float
    incomplete_pgd_accuracy: float
    skipped: str | None = Field(None, description="why branch and bound did not run (the verdicts stay incomplete)")


class SampleComplete(_Model):
    status: StopReason
    seconds: float
    domains: int


ExternalStatus = Literal["sat", "unsat", "unknown", "timeout", "error"]


class ExternalResult(_Model):
    """The external solver at one epsilon, on the samples uverify's own stages left unknown."""

    solver: str = Field(description="the solver's answer to --name")
    command: str
    timeout_s: float = Field(description="the budget per sample")
    attempted: int = Field(description="samples left unknown before the solver ran")
    verified: int = Field(description="of those, unsat by the solver: recorded as verified")
    falsified: int = Field(description="of those, sat with an assignment onnxruntime replayed")
    undecided: int
    answers: dict[str, int] = Field(description="sat, unsat, unknown, timeout, error: how many")
    errors: list[str] = Field(description="the first distinct reasons for `error` (a failed replay is one)")
    seconds: float
    before_certified_accuracy: float
    before_pgd_accuracy: float


class SampleExternal(_Model):
    status: ExternalStatus
    seconds: float
    message: str | None = None


class EpsilonResult(_DropsUnsetComplete):
    epsilon: float
    clean_accuracy: float
    certified_accuracy: float
    pgd_accuracy: float
    gap_pgd: float = Field(description="clean - PGD robust accuracy")
    gap_certified: float = Field(description="clean - certified robust accuracy")
    counts: Counts
    seconds: Timings
    complete: CompleteResult | None = None
    external: ExternalResult | None = None


class SampleRow(_DropsUnsetComplete):
    id: int
    label: int
    prediction: int
    verdicts: list[Verdict] = Field(description="one per epsilon, in the order of `results`")
    margin_lower_bounds: list[float | None] = Field(description="min_j lower bound of z_y - z_j, per epsilon")
    complete: list[SampleComplete | None] | None = Field(
        None, description="per epsilon, branch and bound on this sample (None where it did not run)"
    )
    external: list[SampleExternal | None] | None = Field(
        None, description="per epsilon, the external solver on this sample (None where it did not run)"
    )


class ModelInfo(_Model):
    path: str
    sha256: str
    metadata: dict[str, Any]


class Report(_Model):
    schema_: Literal["uverify.report/1"] = Field("uverify.report/1", alias="schema")
    spec_name: str
    spec_sha256: str
    spec: dict[str, Any]
    model: ModelInfo
    samples_source: str
    assumed: list[str] = Field(
        default_factory=list, description="settings nobody chose (no spec, no recorded domain): the defaults used"
    )
    norm: Literal["inf", "2", "1"]
    method: str = Field(description="the bound method: IBP, CROWN-IBP, CROWN or alpha-CROWN")
    attack: dict[str, Any]
    versions: dict[str, str]
    seconds: float
    results: list[EpsilonResult]
    samples: list[SampleRow]

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    def result_at(self, epsilon: float) -> EpsilonResult:
        for result in self.results:
            if abs(result.epsilon - epsilon) <= 1e-12 * max(1.0, abs(epsilon)):
                return result
        have = ", ".join(f"{r.epsilon:g}" for r in self.results)
        raise UverifyError(f"report has no results at epsilon {epsilon:g} (it has {have})")


def save_report(report: Report, path: str | Path) -> Path:
    return atomic_write_json(path, report.model_dump(mode="json", by_alias=True))


def load_report(path: str | Path) -> Report:
    """Read a report back, validated; a wrong or old file is a one-line `UverifyError`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UverifyError(f"report {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise UverifyError(f"report {path}: not UTF-8 text, so not a {SCHEMA} report") from None
    try:
        return Report.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise UverifyError(f"report {path}: not a {SCHEMA} report ({where}: {first['msg']})") from None


def render_table(report: Report) -> str:
    """The plain summary a user reads first: one row per epsilon."""
    head = (
        f"{report.spec_name}: {len(report.samples)} samples from {report.samples_source}, "
        f"L{'∞' if report.norm == 'inf' else report.norm} ball, bounds {report.method}, "
        f"PGD {report.attack.get('steps')} steps x {report.attack.get('restarts')} restarts"
    )
    cols = ["epsilon", "clean", "certified", "PGD robust", "gap (PGD)", "verified", "falsified", "unknown", "time s"]
    rows = [
        [
            f"{r.epsilon:g}",
            f"{r.clean_accuracy:.4f}",
            f"{r.certified_accuracy:.4f}",
            f"{r.pgd_accuracy:.4f}",
            f"{r.gap_pgd:.4f}",
            str(r.counts.verified),
            str(r.counts.falsified),
            str(r.counts.unknown),
            f"{r.seconds.bounds + r.seconds.attack + r.seconds.referee:.1f}",
        ]
        for r in report.results
    ]
    complete = [r.complete for r in report.results]
    if any(c is not None for c in complete):
        cols += ["exact", "BaB verified", "BaB falsified", "BaB s"]
        for row, c in zip(rows, complete, strict=True):
            if c is None:
                row += ["-", "-", "-", "-"]
            else:
                exact = "-" if c.exact_accuracy is None else f"{c.exact_accuracy:.4f}"
                row += [exact, str(c.verified), str(c.falsified), f"{c.seconds:.1f}"]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(cell.rjust(w) for cell, w in zip(cells, widths, strict=True))  # noqa: E731
    out = [head, line(cols), line(["-" * w for w in widths])] + [line(row) for row in rows]
    for r, c in zip(report.results, complete, strict=True):
        if c is None:
            continue
        if c.skipped:
            out.append(f"branch and bound at epsilon {r.epsilon:g}: not run ({c.skipped}); verdicts are incomplete")
            continue
        reasons = ", ".join(f"{k} {v}" for k, v in c.stop_reasons.items() if v) or "nothing to decide"
        out.append(
            f"branch and bound at epsilon {r.epsilon:g} ({c.mode} splitting, {c.timeout_s:g} s a sample): "
            f"{c.attempted} unknown before; stop reasons: {reasons}; certified {c.incomplete_certified_accuracy:.4f} "
            f"-> {r.certified_accuracy:.4f}, PGD robust {c.incomplete_pgd_accuracy:.4f} -> {r.pgd_accuracy:.4f}"
        )
    for r in report.results:
        e = r.external
        if e is None:
            continue
        answers = ", ".join(f"{k} {v}" for k, v in e.answers.items() if v) or "nothing to decide"
        out.append(
            f"external solver {e.solver} at epsilon {r.epsilon:g} ({e.timeout_s:g} s a sample): {e.attempted} unknown "
            f"before; answers: {answers}; verified {e.verified}, falsified {e.falsified} (replayed by onnxruntime); "
            f"certified {e.before_certified_accuracy:.4f} -> {r.certified_accuracy:.4f}"
        )
        out += [f"external solver error: {message}" for message in e.errors]
    out += [f"assumed: {note}" for note in report.assumed]
    rejected = sum(r.counts.rejected_counterexamples for r in report.results)
    if rejected:
        out.append(f"note: {rejected} PGD point(s) were not confirmed by onnxruntime and count as unknown")
    return "\n".join(out)
