"""The seed's study on any spec: {SISA, Amnesiac} x {standard, adversarial} x {before, after deletion}.

    RQ1  standard training, before deletion        RQ3  standard training, after deletion
    RQ2  adversarial training, before deletion     RQ4  adversarial training, after deletion

Each (method, training) cell is one run directory `<out>/<method>-<training>/`: train M, check it
(`report_before.json`), delete the spec's request (`unlearning.delete`), check M' (`report_after.json`).
The answer is the seed's ACC / R-ACC / Gap tables, once with PGD robust accuracy (the seed's) and once
with certified robust accuracy (CROWN, which the seed did not have), as markdown and JSON, plus plots.

Resumable: a rerun keeps every finished step whose inputs are unchanged and redoes the rest. A run is
kept when its data, model, training and unlearning sections equal the spec's; a report when it was
made from the same spec on the same model file. Before the deletion, a copy of M goes to `<run>/M/`, so
changing only the property, the bounds or the attack re-checks M and M' without retraining.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from uverify.datasets import Domain, Splits, load
from uverify.datasets.base import class_counts, format_class_balance
from uverify.errors import UverifyError
from uverify.files import atomic_write, atomic_write_bytes, atomic_write_json, ensure_writable_dir, sha256_file
from uverify.kinds import Training, UnlearningMethod
from uverify.pipeline import train_run, unlearn_run
from uverify.rundir import DeleteRequest, Run, RunDir, When, is_run, keep_m, locked, open_run
from uverify.specs.schema import Spec, spec_sha256
from uverify.verifier.check import check
from uverify.verifier.report import Report, load_report, save_report
from uverify.verifier.samples import Samples, samples_from_spec

METHODS = tuple(UnlearningMethod)
TRAININGS = tuple(Training)
QUESTIONS: dict[str, tuple[Training, When]] = {
    "RQ1": (Training.STANDARD, "before"),
    "RQ2": (Training.ADVERSARIAL, "before"),
    "RQ3": (Training.STANDARD, "after"),
    "RQ4": (Training.ADVERSARIAL, "after"),
}
ROBUSTNESS = {
    "pgd": ("pgd_accuracy", "gap_pgd", "PGD"),
    "certified": ("certified_accuracy", "gap_certified", "certified"),
}


@dataclass(frozen=True)
class CellResult:
    method: UnlearningMethod
    training: Training
    run: Path
    before: Report
    after: Report
    deletion: dict[str, Any]  # the deletion log entry
    reused: list[str]  # the steps a rerun kept


@dataclass(frozen=True)
class StudyResult:
    out: Path
    cells: list[CellResult]
    tables_markdown: Path
    tables_json: Path
    plots: list[Path]
    seconds: float


def cell_spec(spec: Spec, method: UnlearningMethod) -> Spec:
    unlearning = spec.unlearning.model_copy(update={"method": method})
    return spec.model_copy(update={"unlearning": unlearning})


def study(
    spec: Spec,
    out: str | Path,
    *,
    methods: tuple[str, ...] = METHODS,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> StudyResult:
    """Run (or resume) the whole grid and write the tables and plots into `out` (locked meanwhile)."""
    started = time.perf_counter()
    out = Path(out)
    ensure_writable_dir(out)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UverifyError(f"study methods must be among {', '.join(METHODS)}; got {', '.join(methods) or 'none'}")
    with locked(out):
        return _study(spec, out, methods, progress, echo, started)


def _study(
    spec: Spec, out: Path, methods: tuple[str, ...], progress: bool, echo: Callable[[str], None], started: float
) -> StudyResult:
    splits = load(spec.data)
    train, test = splits.train, splits.test
    counts = {"train": class_counts(train.y, train.class_names), "test": class_counts(test.y, train.class_names)}
    echo(f"{spec.name}: {len(train)} train / {len(test)} test samples, {train.num_classes} classes")
    echo(format_class_balance({"class_counts": counts}))
    samples, domain = samples_from_spec(spec, splits=splits)
    cells = []
    for method in methods:
        for training in TRAININGS:
            cells.append(
                _cell(cell_spec(spec, UnlearningMethod(method)), training, out, splits, samples, domain, progress, echo)
            )
    tables = study_tables(spec.name, cells)
    md = atomic_write_bytes(out / "tables.md", render_tables_markdown(spec, tables).encode("utf-8"))
    js = atomic_write_json(out / "tables.json", tables)
    plots = plot_study(spec.name, cells, out / "plots")
    seconds = time.perf_counter() - started
    atomic_write_json(
        out / "study.json",
        {
            "spec_name": spec.name,
            "spec_sha256": spec_sha256(spec),
            "cells": [
                {
                    "method": c.method,
                    "training": c.training,
                    "run": str(c.run),
                    "report_before": str(RunDir(c.run).report_file("before")),
                    "report_after": str(RunDir(c.run).report_file("after")),
                    "deleted": len(c.deletion.get("ids", [])),
                    "unlearning_seconds": c.deletion.get("metrics", {}).get("seconds", {}).get("unlearn"),
                    "unlearning_accuracy": c.deletion.get("metrics", {}).get("accuracy"),
                    "membership_inference_auc": c.deletion.get("metrics", {}).get("membership_inference_auc"),
                    "reused": c.reused,
                }
                for c in cells
            ],
            "tables": str(md),
            "plots": [str(p) for p in plots],
            "seconds": seconds,
        },
    )
    return StudyResult(out, cells, md, js, plots, seconds)


def _cell(
    spec: Spec,
    training: Training,
    out: Path,
    splits: Splits,
    samples: Samples,
    domain: Domain,
    progress: bool,
    echo: Callable[[str], None],
) -> CellResult:
    """One cell, its run directory locked from start to end (a `uverify unlearn` on it meanwhile is refused)."""
    with locked(out / f"{spec.unlearning.method}-{training}"):
        return _run_cell(spec, training, out, splits, samples, domain, progress, echo)


def _run_cell(
    spec: Spec,
    training: Training,
    out: Path,
    splits: Splits,
    samples: Samples,
    domain: Domain,
    progress: bool,
    echo: Callable[[str], None],
) -> CellResult:
    """train -> keep a copy of M -> check M -> unlearn -> check M', each step skipped when its result
    is already there and still valid; the copy of M lets a changed property or attack re-check M
    without retraining."""
    method = spec.unlearning.method
    run_dir = out / f"{method}-{training}"
    name = f"{method.display_name} {training}"
    digest = spec_sha256(spec)
    reused = []

    run = _trained_run(run_dir, spec, training)
    if run is not None and not run.kept_m_path.is_file():
        run = None if run.info.deleted > 0 else run  # M is gone and no copy was kept: train again
    if run is not None and run.info.deleted > 0 and not _deleted_as_requested(run, spec, splits):
        run = None  # deletions made outside the study (or another request): M' is not this study's
    if run is None:
        echo(f"[{name}] training")
        adversarial = training is Training.ADVERSARIAL
        train_run(spec, run_dir, adversarial=adversarial, overwrite=True, splits=splits, progress=progress)
        run = open_run(run_dir)
    else:
        reused.append("train")
    m_path = run.kept_m_path if run.kept_m_path.is_file() else keep_m(run)
    before_path, after_path = run.dir.report_file("before"), run.dir.report_file("after")
    before = _valid_report(before_path, digest, m_path)
    if before is None:
        echo(f"[{name}] checking M")
        before = check(m_path, spec, samples, domain, progress=progress)
        save_report(before, before_path)
    else:
        reused.append("check M")
    if run.info.deleted == 0:
        echo(f"[{name}] unlearning ({DeleteRequest.from_spec(spec.unlearning.delete).describe()})")
        unlearn_run(run_dir, from_spec=True, splits=splits, progress=progress)
        run = open_run(run_dir)
    else:
        reused.append("unlearn")
    after = _valid_report(after_path, digest, run.model_path)
    if after is None:
        echo(f"[{name}] checking M'")
        after = check(run.model_path, spec, samples, domain, progress=progress)
        save_report(after, after_path)
    else:
        reused.append("check M'")
    log = run.log()
    return CellResult(method, training, run_dir, before, after, log[-1] if log else {}, reused)


def _deleted_as_requested(run: Run, spec: Spec, splits: Splits) -> bool:
    requested = DeleteRequest.from_spec(spec.unlearning.delete).resolve(splits.train.ids, f"run {run.path}")
    return bool(np.array_equal(run.deleted_ids(), requested))


def _trained_run(run_dir: Path, spec: Spec, training: Training) -> Run | None:
    """The cell's run if it was trained with this spec's data, model, training and unlearning sections
    (the property, bounds and attack may differ: they only need new checks), else None."""
    if not is_run(run_dir):
        return None
    try:
        run = open_run(run_dir)
    except UverifyError:
        return None
    same = all(getattr(run.spec, key) == getattr(spec, key) for key in ("data", "model", "train", "unlearning"))
    return run if same and run.info.training == training else None


def _valid_report(path: Path, digest: str, model: Path) -> Report | None:
    """A report made from this spec on exactly that model file, else None."""
    if not path.is_file():
        return None
    try:
        report = load_report(path)
    except UverifyError:
        return None
    if report.spec_sha256 != digest:
        return None
    if not model.is_file() or report.model.sha256 != sha256_file(model):
        return None
    return report


# ------------------------------------------------------------------------------------------ tables
def study_tables(dataset: str, cells: list[CellResult]) -> dict[str, Any]:
    """{"pgd"|"certified": {"RQ1".."RQ4": [row per epsilon]}} with ACC, R-ACC, Gap per method."""
    by_key = {(c.method, c.training): c for c in cells}
    methods = [m for m in METHODS if any(c.method == m for c in cells)]
    epsilons = [r.epsilon for r in cells[0].before.results]
    out: dict[str, Any] = {}
    for kind, (racc, gap, _) in ROBUSTNESS.items():
        out[kind] = {}
        for question, (training, when) in QUESTIONS.items():
            rows = []
            for eps in epsilons:
                row: dict[str, Any] = {"dataset": dataset, "epsilon": eps}
                for method in methods:
                    cell = by_key[(method, training)]
                    result = (cell.before if when == "before" else cell.after).result_at(eps)
                    row[method] = {
                        "acc": result.clean_accuracy,
                        "r_acc": getattr(result, racc),
                        "gap": getattr(result, gap),
                    }
                rows.append(row)
            out[kind][question] = rows
    return out


_QUESTION_TEXT = {
    "RQ1": "How robust is the standard-trained model **before** the deletion?",
    "RQ2": "How robust is the adversarially trained model **before** the deletion?",
    "RQ3": "How robust is the standard-trained model **after** the deletion?",
    "RQ4": "How robust is the adversarially trained model **after** the deletion?",
}


def render_tables_markdown(spec: Spec, tables: dict[str, Any]) -> str:
    norm = {"inf": "L∞", "2": "L2", "1": "L1"}[spec.property.norm]
    lines = [
        f"# {spec.name}: robustness before and after deletion",
        "",
        f"{norm} ball, {spec.data.samples} {spec.data.split} samples; deletion: "
        + (
            f"ids {spec.unlearning.delete.ids}"
            if spec.unlearning.delete.ids
            else f"{spec.unlearning.delete.fraction:g}"
        )
        + f" of the training set; bounds {spec.verify.method}; PGD {spec.attack.steps} steps x "
        f"{spec.attack.restarts} restarts. Gap = ACC - R-ACC.",
    ]
    for kind, (_, _, label) in ROBUSTNESS.items():
        lines += ["", f"## R-ACC: {label} robust accuracy", ""]
        for question, rows in tables[kind].items():
            methods = [m for m in METHODS if m in rows[0]]
            lines += [f"### {question}: {_QUESTION_TEXT[question]}", ""]
            header = ["Dataset", *[f"{m.display_name} {col}" for m in methods for col in ("ACC", "R-ACC", "Gap")]]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join(["---", *["---:" for _ in header[1:]]]) + "|")
            for row in rows:
                cells = [f"{row['dataset']} (ε={row['epsilon']:g})"]
                for m in methods:
                    cells += [f"{100 * row[m][k]:.2f}%" for k in ("acc", "r_acc", "gap")]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------- plots
_STYLE = {
    ("standard", "before"): ("tab:blue", "o", "standard, before"),
    ("standard", "after"): ("tab:cyan", "s", "standard, after"),
    ("adversarial", "before"): ("tab:red", "o", "adversarial, before"),
    ("adversarial", "after"): ("tab:orange", "s", "adversarial, after"),
}


def plot_study(dataset: str, cells: list[CellResult], folder: Path) -> list[Path]:
    """The seed's four charts (per method: accuracy, robust accuracy against epsilon, before and after
    deletion) and certified against empirical robust accuracy; PNG files, written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    written = []
    for method in [m for m in METHODS if any(c.method == m for c in cells)]:
        for metric, title in (("accuracy", "accuracy"), ("robust_accuracy", "robust accuracy")):
            fig, ax = plt.subplots(figsize=(6, 4))
            for cell in (c for c in cells if c.method == method):
                for when, report in (("before", cell.before), ("after", cell.after)):
                    color, marker, label = _STYLE[(cell.training, when)]
                    eps = [r.epsilon for r in report.results]
                    if metric == "accuracy":
                        ax.plot(eps, [r.clean_accuracy for r in report.results], color=color, marker=marker,
                                label=label)  # fmt: skip
                    else:
                        ax.plot(eps, [r.pgd_accuracy for r in report.results], color=color, marker=marker,
                                label=f"{label} (PGD)")  # fmt: skip
                        ax.plot(eps, [r.certified_accuracy for r in report.results], color=color, marker=marker,
                                linestyle="--", label=f"{label} (certified)")  # fmt: skip
            ax.set(xlabel="epsilon", ylabel=title, ylim=(0, 1.02), title=f"{method.display_name} {title}: {dataset}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            written.append(_save(fig, folder / f"{method}_{metric}.png"))
            plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    for cell in cells:
        for when, report in (("before", cell.before), ("after", cell.after)):
            color, marker, label = _STYLE[(cell.training, when)]
            ax.scatter(
                [r.pgd_accuracy for r in report.results],
                [r.certified_accuracy for r in report.results],
                color=color,
                marker=marker if cell.method == "sisa" else "^",
                label=f"{cell.method.display_name} {label}",
            )
    ax.plot([0, 1], [0, 1], color="gray", linewidth=1, label="certified = PGD")
    ax.set(xlabel="PGD robust accuracy", ylabel="certified robust accuracy", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.set_title(f"certified vs empirical: {dataset}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    written.append(_save(fig, folder / "certified_vs_empirical.png"))
    plt.close(fig)
    return written


def _save(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"))


def render_study_summary(result: StudyResult, spec: Spec) -> str:
    tables = json.loads(result.tables_json.read_text(encoding="utf-8"))
    return "\n".join(
        [
            render_tables_markdown(spec, tables),
            "tables: " + str(result.tables_markdown) + ", " + str(result.tables_json),
            "plots: " + ", ".join(str(p) for p in result.plots),
        ]
    )


__all__ = ["CellResult", "StudyResult", "cell_spec", "plot_study", "render_tables_markdown", "study", "study_tables"]
