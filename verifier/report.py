"""The check's report: a versioned JSON document (pydantic, so `compare` and `gate` read it back
validated) and the table printed on stdout.

Accuracies are fractions of all checked samples. Per the seed's tables, Gap = clean accuracy - robust
accuracy; we report it for the PGD (empirical) and the certified robust accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from uverify.errors import UverifyError
from uverify.files import atomic_write_json

SCHEMA = "uverify.report/1"
Verdict = Literal["verified", "falsified", "unknown", "misclassified"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class EpsilonResult(_Model):
    epsilon: float
    clean_accuracy: float
    certified_accuracy: float
    pgd_accuracy: float
    gap_pgd: float = Field(description="clean - PGD robust accuracy")
    gap_certified: float = Field(description="clean - certified robust accuracy")
    counts: Counts
    seconds: Timings


class SampleRow(_Model):
    id: int
    label: int
    prediction: int
    verdicts: list[Verdict] = Field(description="one per epsilon, in the order of `results`")
    margin_lower_bounds: list[float | None] = Field(description="min_j lower bound of z_y - z_j, per epsilon")


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
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(cell.rjust(w) for cell, w in zip(cells, widths, strict=True))  # noqa: E731
    out = [head, line(cols), line(["-" * w for w in widths])] + [line(row) for row in rows]
    out += [f"assumed: {note}" for note in report.assumed]
    rejected = sum(r.counts.rejected_counterexamples for r in report.results)
    if rejected:
        out.append(f"note: {rejected} PGD point(s) were not confirmed by onnxruntime and count as unknown")
    return "\n".join(out)
