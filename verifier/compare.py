"""`uverify compare`: two check reports side by side (M before deletion, M' after), per epsilon and per
sample, and `uverify gate`: the CI decision on a robustness regression.

Both reports must check the same property (norm) on the same samples (matched by id). `compare` shows
the epsilons both reports have; `gate` refuses a candidate that lacks an epsilon the baseline checked.
A sample "lost certification" when it was verified before and is not after, and "lost robustness" when
no counterexample was known before (verified or unknown) and one is after (falsified or misclassified).
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from uverify.errors import UverifyError
from uverify.files import atomic_write_bytes, ensure_writable_dir
from uverify.kinds import GateMetric, values
from uverify.specs.load import load_spec
from uverify.specs.schema import GateSpec
from uverify.verifier.report import EpsilonResult, Report, load_report

METRICS = ("clean_accuracy", "certified_accuracy", "pgd_accuracy", "gap_pgd", "gap_certified")
ROBUST = ("verified", "unknown")


@dataclass(frozen=True)
class EpsilonDelta:
    epsilon: float
    before: dict[str, float]
    after: dict[str, float]
    delta: dict[str, float]  # after - before, per metric
    lost_certification: list[int] = field(default_factory=list)
    gained_certification: list[int] = field(default_factory=list)
    lost_robustness: list[int] = field(default_factory=list)
    gained_robustness: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Comparison:
    before: str
    after: str
    norm: str
    samples: int  # checked in both reports
    rows: list[EpsilonDelta]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _values(result: EpsilonResult) -> dict[str, float]:
    return {m: float(getattr(result, m)) for m in METRICS}


def _matching_epsilons(before: Report, after: Report) -> list[tuple[EpsilonResult, EpsilonResult]]:
    pairs = []
    for result in before.results:
        match = [r for r in after.results if math.isclose(r.epsilon, result.epsilon, rel_tol=1e-12, abs_tol=0)]
        if match:
            pairs.append((result, match[0]))
    if not pairs:
        have = ", ".join(f"{r.epsilon:g}" for r in before.results)
        other = ", ".join(f"{r.epsilon:g}" for r in after.results)
        raise UverifyError(f"the reports share no epsilon (before: {have}; after: {other})")
    return pairs


def _same_samples(before: Report, after: Report) -> None:
    """Accuracies are fractions of the checked samples: comparable only over the same samples (of the
    same data set: ids repeat across data sets, so that is asked first)."""
    data_before, data_after = _data_set(before), _data_set(after)
    if data_before and data_after and data_before != data_after:
        raise UverifyError(f"the reports checked different data sets ({data_before} and {data_after}): not comparable")
    ids_before, ids_after = {row.id for row in before.samples}, {row.id for row in after.samples}
    if ids_before != ids_after:
        only_b, only_a = sorted(ids_before - ids_after), sorted(ids_after - ids_before)
        raise UverifyError(
            f"the reports checked different samples ({len(only_b)} ids only in the first, e.g. {only_b[:3]}; "
            f"{len(only_a)} only in the second, e.g. {only_a[:3]}): check both with the same spec data section"
        )


def _data_set(report: Report) -> str | None:
    """The data set a report's samples came from, as its spec names it (none for a user's .npz)."""
    data = report.spec.get("data")
    return str(data.get("dataset")) if isinstance(data, dict) and data.get("dataset") else None


def compare(before: Report, after: Report, before_name: str = "before", after_name: str = "after") -> Comparison:
    if before.norm != after.norm:
        raise UverifyError(f"the reports check different norms (L{before.norm} and L{after.norm}): not comparable")
    _same_samples(before, after)
    index_before = {row.id: row for row in before.samples}
    index_after = {row.id: row for row in after.samples}
    shared = sorted(set(index_before) & set(index_after))
    rows = []
    for result_b, result_a in _matching_epsilons(before, after):
        kb = before.results.index(result_b)
        ka = after.results.index(result_a)
        lost_c, gained_c, lost_r, gained_r = [], [], [], []
        for sample_id in shared:
            vb, va = index_before[sample_id].verdicts[kb], index_after[sample_id].verdicts[ka]
            if vb == "verified" and va != "verified":
                lost_c.append(sample_id)
            if va == "verified" and vb != "verified":
                gained_c.append(sample_id)
            if vb in ROBUST and va not in ROBUST:
                lost_r.append(sample_id)
            if va in ROBUST and vb not in ROBUST:
                gained_r.append(sample_id)
        values_b, values_a = _values(result_b), _values(result_a)
        rows.append(
            EpsilonDelta(
                result_b.epsilon,
                values_b,
                values_a,
                {m: values_a[m] - values_b[m] for m in METRICS},
                lost_c,
                gained_c,
                lost_r,
                gained_r,
            )
        )
    return Comparison(before_name, after_name, before.norm, len(shared), rows)


_LABELS = {
    "clean_accuracy": "ACC",
    "certified_accuracy": "certified R-ACC",
    "pgd_accuracy": "PGD R-ACC",
    "gap_pgd": "Gap (PGD)",
    "gap_certified": "Gap (certified)",
}


def _ids(ids: list[int], limit: int = 10) -> str:
    if not ids:
        return "-"
    shown = ", ".join(map(str, ids[:limit]))
    return shown + (f" (+{len(ids) - limit})" if len(ids) > limit else "")


def render_comparison(comparison: Comparison, fmt: Literal["table", "markdown", "json"] = "table") -> str:
    if fmt == "json":
        return json.dumps(comparison.to_json(), indent=2)
    header = ["epsilon", *[_LABELS[m] for m in METRICS]]
    body = []
    for row in comparison.rows:
        cells = [f"{row.epsilon:g}"]
        for m in METRICS:
            cells.append(f"{row.before[m]:.4f} → {row.after[m]:.4f} ({row.delta[m]:+.4f})")
        body.append(cells)
    changes = [
        [
            f"{row.epsilon:g}",
            f"{len(row.lost_certification)}: {_ids(row.lost_certification)}",
            f"{len(row.gained_certification)}: {_ids(row.gained_certification)}",
            f"{len(row.lost_robustness)}: {_ids(row.lost_robustness)}",
            f"{len(row.gained_robustness)}: {_ids(row.gained_robustness)}",
        ]
        for row in comparison.rows
    ]
    change_header = ["epsilon", "lost certification", "gained certification", "lost robustness", "gained robustness"]
    title = f"{comparison.before} → {comparison.after}: L{comparison.norm} ball, {comparison.samples} samples"
    legend = "each cell: how many samples, then their ids (the first 10; '-' for none)"
    if fmt == "markdown":
        return "\n".join(
            [
                f"**{title}**",
                "",
                _markdown(header, body),
                "",
                f"Samples that changed ({legend}):",
                "",
                _markdown(change_header, changes),
            ]
        )
    return "\n".join(
        [title, _plain(header, body), "", f"samples that changed ({legend}):", _plain(change_header, changes)]
    )


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _plain(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(c) for c in column) for column in zip(header, *rows, strict=True)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- gate
@dataclass(frozen=True)
class GateCheck:
    epsilon: float
    baseline: float
    candidate: float
    drop: float
    passed: bool


@dataclass(frozen=True)
class GateResult:
    metric: str
    max_drop: float
    checks: list[GateCheck]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def summary(self) -> str:
        lines = [
            f"gate {'PASSED' if self.passed else 'FAILED'}: {self.metric} may drop by at most {self.max_drop:g}",
        ]
        for c in self.checks:
            verdict = "ok" if c.passed else "REGRESSION"
            lines.append(
                f"  epsilon {c.epsilon:g}: {c.baseline:.4f} → {c.candidate:.4f} (drop {c.drop:+.4f})  {verdict}"
            )
        return "\n".join(lines)


def gate(baseline: Report, candidate: Report, metric: GateMetric | str, max_drop: float) -> GateResult:
    """Pass when, at every epsilon both reports have, `metric` drops by no more than `max_drop`.

    A drop equal to max_drop passes; the comparison allows 1e-9 for float round-off of fractions."""
    if metric not in values(GateMetric):
        raise UverifyError(f"gate metric must be one of {', '.join(values(GateMetric))}, not {metric!r}")
    if not 0.0 <= max_drop <= 1.0:
        raise UverifyError(f"--max-drop must lie in [0, 1], got {max_drop:g}")
    if baseline.norm != candidate.norm:
        raise UverifyError(f"the reports check different norms (L{baseline.norm} and L{candidate.norm})")
    _same_samples(baseline, candidate)
    pairs = _matching_epsilons(baseline, candidate)
    missing = [r.epsilon for r in baseline.results if all(r is not b for b, _ in pairs)]
    if missing:  # a regression there would go unseen
        raise UverifyError(
            f"the candidate report has no results at epsilon {', '.join(f'{e:g}' for e in missing)}, which the "
            "baseline checked: check it over the same epsilons"
        )
    checks = []
    for result_b, result_c in pairs:
        b, c = float(getattr(result_b, metric)), float(getattr(result_c, metric))
        checks.append(GateCheck(result_b.epsilon, b, c, b - c, b - c <= max_drop + 1e-9))
    return GateResult(metric, max_drop, checks)


def gate_reports(
    baseline: Path,
    candidate: Path,
    *,
    metric: str | None = None,
    max_drop: float | None = None,
    spec_ref: str | None = None,
    junit: Path | None = None,
) -> GateResult:
    """`uverify gate`: the two reports read back, the gate run with the given metric and allowed drop
    (else the `gate:` section of `spec_ref`, else of the spec the baseline report embeds), and the JUnit
    file written when asked."""
    if junit is not None:
        ensure_writable_dir(junit.parent)
    base, cand = load_report(baseline), load_report(candidate)
    if spec_ref is not None:
        defaults = load_spec(spec_ref).gate
    else:
        try:
            defaults = GateSpec.model_validate(base.spec.get("gate", {}))
        except ValueError:
            raise UverifyError(f"report {baseline}: its spec's gate section is not valid") from None
    result = gate(
        base, cand, GateMetric(metric or defaults.metric), defaults.max_drop if max_drop is None else max_drop
    )
    if junit is not None:
        write_junit(result, junit, str(baseline), str(candidate))
    return result


def write_junit(result: GateResult, path: str | Path, baseline: str, candidate: str) -> Path:
    """JUnit XML: one test case per epsilon, a <failure> for each regression, so CI systems list them."""
    failures = sum(not c.passed for c in result.checks)
    suite = ET.Element(
        "testsuite",
        name="uverify gate",
        tests=str(len(result.checks)),
        failures=str(failures),
        errors="0",
        skipped="0",
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (("metric", result.metric), ("max_drop", f"{result.max_drop:g}"), ("baseline", baseline),
                        ("candidate", candidate)):  # fmt: skip
        ET.SubElement(props, "property", name=name, value=value)
    for c in result.checks:
        case = ET.SubElement(
            suite, "testcase", classname=f"uverify.gate.{result.metric}", name=f"epsilon={c.epsilon:g}", time="0"
        )
        message = f"{result.metric} {c.baseline:.4f} → {c.candidate:.4f}: drop {c.drop:.4f} (max {result.max_drop:g})"
        if c.passed:
            ET.SubElement(case, "system-out").text = message
        else:
            ET.SubElement(case, "failure", message=message, type="RobustnessRegression").text = message
    suites = ET.Element("testsuites", tests=str(len(result.checks)), failures=str(failures))
    suites.append(suite)
    ET.indent(suites)
    return atomic_write_bytes(path, ET.tostring(suites, encoding="utf-8", xml_declaration=True) + b"\n")


__all__ = [
    "Comparison",
    "EpsilonDelta",
    "GateCheck",
    "GateResult",
    "compare",
    "gate",
    "render_comparison",
    "write_junit",
]
