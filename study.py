"""The seed's study on one or more specs: {SISA, Amnesiac} x {standard, adversarial} x {before, after deletion}.

    RQ1  standard training, before deletion        RQ3  standard training, after deletion
    RQ2  adversarial training, before deletion     RQ4  adversarial training, after deletion

Each (method, training) cell is one run directory `<out>/<method>-<training>/` (with several specs,
`<out>/<spec name>/<method>-<training>/`): train M, check it (`report_before.json`), delete the spec's
request (`unlearning.delete`), check M' (`report_after.json`). The answer is the seed's two tables at
the headline sigma (`study.headline_epsilon`; one row per data set: ACC, R-ACC, Gap for SISA and
Amnesiac, st_models and at_models), the columns the seed did not have (certified R-ACC by CROWN; what
the deletion changed), the per-epsilon detail, plots, and `report.html`, the one page to open.

Resumable: a rerun keeps every finished step whose inputs are unchanged and redoes the rest. A run is
kept when its data, model, training and unlearning sections equal the spec's; a report when it was
made from the same spec on the same model file. Before the deletion, a copy of M goes to `<run>/M/`, so
changing only the property, the bounds or the attack re-checks M and M' without retraining. The
spec's `study` section only presents the results: the cells carry its default, so a new headline
re-renders the tables and re-checks nothing.

Parallel: with a `compute` section (or `--workers`/`--scheduler`) the cells are the tasks: each runs
whole (train, check, unlearn, check) on a worker, its progress lines echoed here in grid order when it
is done. On Dask a SISA cell's shards, and each check's sample batches and branch-and-bound samples,
are tasks of their own on the same cluster (`compute.sub_executor`: the cell waits for them outside
its worker's thread pool), so a study uses more workers than it has cells and one slow cell (SISA's
adversarial ensemble under `--complete`) is not a serial critical path; in a process pool they stay
serial inside the cell (a pool's workers cannot submit to it). A cell writes its own run directory, so
on a cluster `out` must be on a file system that every worker mounts at the same path; a worker that
does not see it says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from tqdm import tqdm

from uverify import __version__
from uverify.compute import SERIAL, Executor, open_executor, sub_executor
from uverify.datasets import Domain, Splits, load
from uverify.datasets.base import class_counts, format_class_balance
from uverify.errors import UverifyError
from uverify.files import (
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    ensure_writable_dir,
    remove_stale_temp_files,
    sha256_file,
)
from uverify.kinds import Training, UnlearningMethod
from uverify.pipeline import train_run, unlearn_run
from uverify.rundir import DeleteRequest, Run, RunDir, When, is_run, keep_m, locked, open_run
from uverify.specs.schema import ComputeSpec, Spec, StudySpec, spec_sha256
from uverify.study_report import Figure, Page, Section, Table, section_markdown, table_markdown, write_html
from uverify.verifier.check import check
from uverify.verifier.report import EpsilonResult, Report, load_report, save_report
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
PATTERN_RATIO = 3.0  # the seed's finding, as the issue states it: standard gap >= 3x the adversarial gap ...
PATTERN_ACCURACY = 0.05  # ... with the adversarial model's clean accuracy within 5 points of the standard one's


@dataclass(frozen=True)
class CellResult:
    method: UnlearningMethod
    training: Training
    run: Path
    before: Report
    after: Report
    deletion: dict[str, Any]  # the deletion log entry
    reused: list[str]  # the steps a rerun kept
    dataset: str  # the spec's name: the row of the seed's tables

    def report(self, when: When) -> Report:
        return self.before if when == "before" else self.after


@dataclass(frozen=True)
class PatternCheck:
    """The seed's finding for one data set, method and moment: adversarial training shrinks the gap."""

    dataset: str
    method: UnlearningMethod
    when: When
    epsilon: float
    acc_standard: float
    acc_adversarial: float
    gap_standard: float
    gap_adversarial: float

    @property
    def ratio(self) -> float:
        if self.gap_adversarial > 0:
            return self.gap_standard / self.gap_adversarial
        return math.inf if self.gap_standard > 0 else math.nan

    @property
    def holds(self) -> bool:
        """Standard gap >= 3x the adversarial one (and not both zero), clean accuracies within 5 points."""
        return (
            self.gap_standard > 0
            and self.gap_standard >= PATTERN_RATIO * self.gap_adversarial
            and abs(self.acc_adversarial - self.acc_standard) <= PATTERN_ACCURACY
        )

    @property
    def ratio_text(self) -> str:
        return "no gap" if math.isnan(self.ratio) else "∞" if math.isinf(self.ratio) else f"{self.ratio:.1f}x"

    def describe(self) -> str:
        ratio = self.ratio_text
        return (
            f"{self.dataset} {self.method.display_name} {self.when}: gap {_pct(self.gap_standard)} standard vs "
            f"{_pct(self.gap_adversarial)} adversarial ({ratio}), ACC {_pct(self.acc_standard)} vs "
            f"{_pct(self.acc_adversarial)} at σ={self.epsilon:g}: {'holds' if self.holds else 'does not hold'}"
        )


@dataclass(frozen=True)
class StudyResult:
    out: Path
    cells: list[CellResult]
    tables_markdown: Path
    tables_json: Path
    plots: list[Path]
    seconds: float
    specs: list[Spec]
    report_html: Path
    headline: dict[str, float]  # data set -> its headline sigma
    pattern: list[PatternCheck]


def cell_spec(spec: Spec, method: UnlearningMethod) -> Spec:
    """The spec a cell's run is made from: the method set, the study's own and the compute sections
    left at their defaults (they never change a result)."""
    unlearning = spec.unlearning.model_copy(update={"method": method})
    return spec.model_copy(update={"unlearning": unlearning, "study": StudySpec(), "compute": ComputeSpec()})


def study(
    specs: Spec | Sequence[Spec],
    out: str | Path,
    *,
    methods: tuple[str, ...] = METHODS,
    progress: bool = True,
    echo: Callable[[str], None] = print,
    compute: ComputeSpec | None = None,
) -> StudyResult:
    """Run (or resume) the whole grid on each spec, one row per data set, and write the tables, plots
    and report.html into `out` (locked meanwhile). `compute` (default: the specs' common section) is
    where the cells run."""
    started = time.perf_counter()
    out = Path(out)
    chosen = [specs] if isinstance(specs, Spec) else list(specs)
    if not chosen:
        raise UverifyError("a study needs at least one spec")
    names = [s.name for s in chosen]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UverifyError(f"the study's specs need distinct names (one row each); named twice: {', '.join(twice)}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UverifyError(f"study methods must be among {', '.join(METHODS)}; got {', '.join(methods) or 'none'}")
    if compute is None:
        sections = {s.compute for s in chosen}
        if len(sections) > 1:
            raise UverifyError("the study's specs have different compute sections; give --workers or --scheduler")
        compute = chosen[0].compute
    with open_executor(compute) as executor:  # before anything is written: an unreachable scheduler changes nothing
        ensure_writable_dir(out)
        with locked(out):
            remove_stale_temp_files(out)  # a study killed between writing a table and renaming it
            return _study(chosen, out, methods, progress, echo, started, executor)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """`study.threads` for the block: small models run as fast on one thread, and a second one that
    waits for a busy core (2 cores shared with other work) can make a study several times slower."""
    if threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _study(
    specs: list[Spec],
    out: Path,
    methods: tuple[str, ...],
    progress: bool,
    echo: Callable[[str], None],
    started: float,
    executor: Executor,
) -> StudyResult:
    cells: list[CellResult] = []
    # one bar over the whole grid (cells done / total, ETA) above the inner ones; none off a terminal
    grid = tqdm(
        total=len(specs) * len(methods) * len(TRAININGS), desc="study", unit="cell",
        disable=None if progress else True, position=0,
    )  # fmt: skip
    try:
        if executor.kind == "serial":
            for spec in specs:
                folder = out / spec.name if len(specs) > 1 else out
                label = f"{spec.name}: " if len(specs) > 1 else ""
                with torch_threads(spec.study.threads):
                    cells += _dataset_cells(spec, folder, methods, progress, echo, label, grid.update)
        else:
            out.mkdir(parents=True, exist_ok=True)  # so that a worker can tell whether it sees the folder
            tasks = list(_cell_tasks(specs, out, methods, echo))
            results = executor.map(_cell_task, _shared(executor, [args for args, _ in tasks]))
            for (_, run), (cell, lines) in zip(tasks, results, strict=True):
                for line in lines:
                    echo(line)
                cells.append(replace(cell, run=run))  # the run as this process names it (maybe relative)
                grid.update()
    finally:
        grid.close()
    headline = {spec.name: spec.headline_epsilon() for spec in specs}
    pattern = seed_pattern(cells, headline)
    tables = study_tables(cells)
    md = atomic_write_bytes(out / "tables.md", render_tables_markdown(specs, cells).encode("utf-8"))
    js = atomic_write_json(out / "tables.json", tables)
    plots = plots_for(cells, headline, out / "plots", norm=specs[0].property.norm)
    report_html = write_html(out / "report.html", report_page(specs, cells, plots))
    seconds = time.perf_counter() - started
    atomic_write_json(
        out / "study.json",
        {
            "spec_name": ", ".join(s.name for s in specs),
            "datasets": [
                {"name": s.name, "spec_sha256": spec_sha256(s), "headline_epsilon": headline[s.name]} for s in specs
            ],
            "cells": [
                {
                    "dataset": c.dataset,
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
            "headline": headline_numbers(cells, headline),
            "pattern": [
                {
                    "dataset": p.dataset,
                    "method": p.method,
                    "when": p.when,
                    "epsilon": p.epsilon,
                    "gap_standard": p.gap_standard,
                    "gap_adversarial": p.gap_adversarial,
                    "acc_standard": p.acc_standard,
                    "acc_adversarial": p.acc_adversarial,
                    "holds": p.holds,
                }
                for p in pattern
            ],
            "tables": str(md),
            "report_html": str(report_html),
            "plots": [str(p) for p in plots],
            "seconds": seconds,
        },
    )
    return StudyResult(out, cells, md, js, plots, seconds, specs, report_html, headline, pattern)


def _dataset_cells(
    spec: Spec,
    folder: Path,
    methods: tuple[str, ...],
    progress: bool,
    echo: Callable[[str], None],
    label: str,
    cell_done: Callable[[], object],
) -> list[CellResult]:
    splits, samples, domain = _prepare(spec, echo)
    cells = []
    for method in methods:
        for training in TRAININGS:
            cell = _Cell(cell_spec(spec, UnlearningMethod(method)), spec.name, label, training, folder)
            cells.append(_run_locked(cell, splits, samples, domain, progress, echo))
            cell_done()
    return cells


def _prepare(spec: Spec, echo: Callable[[str], None]) -> tuple[Splits, Samples, Domain]:
    """A data set's splits and the samples its checks use; says how many and how balanced."""
    splits = load(spec.data)
    train, test = splits.train, splits.test
    counts = {"train": class_counts(train.y, train.class_names), "test": class_counts(test.y, train.class_names)}
    echo(f"{spec.name}: {len(train)} train / {len(test)} test samples, {train.num_classes} classes")
    echo(format_class_balance({"class_counts": counts}))
    samples, domain = samples_from_spec(spec, splits=splits)
    return splits, samples, domain


def _cell_tasks(
    specs: list[Spec], out: Path, methods: tuple[str, ...], echo: Callable[[str], None]
) -> Iterator[tuple[tuple[Any, ...], Path]]:
    """The grid's cells, in the serial grid's order, as (the arguments of `_cell_task`, the cell's run
    directory as named here): each with its data set's splits and samples (loaded here once per data
    set, shipped to the worker) and its folders made absolute (a worker's working directory is not
    this one)."""
    for spec in specs:
        folder = out / spec.name if len(specs) > 1 else out
        label = f"{spec.name}: " if len(specs) > 1 else ""
        with torch_threads(spec.study.threads):
            splits, samples, domain = _prepare(spec, echo)
        for method in methods:
            for training in TRAININGS:
                cell = _Cell(cell_spec(spec, UnlearningMethod(method)), spec.name, label, training, folder.absolute())
                run = _Cell(cell.spec, spec.name, label, training, folder).run_dir
                yield (cell, splits, samples, domain, spec.study.threads, out.absolute()), run


def _shared(executor: Executor, tasks: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The cells' arguments with each data set's splits, samples and domain (the same objects for every
    cell of a data set) shared once (`Executor.share`: on Dask sent to the cluster once, not per cell)."""
    shared: dict[int, Any] = {}

    def share(value: Any) -> Any:
        if id(value) not in shared:
            shared[id(value)] = executor.share(value)
        return shared[id(value)]

    return [
        (cell, share(splits), share(samples), share(domain), *rest) for cell, splits, samples, domain, *rest in tasks
    ]


def _cell_task(
    cell: _Cell, splits: Splits, samples: Samples, domain: Domain, threads: int | None, out: Path
) -> tuple[CellResult, list[str]]:
    """One cell on a worker: its result and the progress lines it would have echoed."""
    if not out.is_dir():
        import socket

        raise UverifyError(
            f"study folder {out} is not visible on the worker at {socket.gethostname()}: a study on a cluster "
            "needs its --out on a file system every worker mounts at the same path"
        )
    lines: list[str] = []
    with torch_threads(threads), sub_executor() as shards:
        return _run_locked(cell, splits, samples, domain, False, lines.append, shards), lines


@dataclass(frozen=True)
class _Cell:
    spec: Spec  # the cell's spec (its method set)
    dataset: str
    label: str  # what its progress lines start with: the data set's name when the study has several
    training: Training
    folder: Path  # the folder that holds the cell's run directory

    @property
    def run_dir(self) -> Path:
        return self.folder / f"{self.spec.unlearning.method}-{self.training}"


def _run_locked(
    cell: _Cell,
    splits: Splits,
    samples: Samples,
    domain: Domain,
    progress: bool,
    echo: Callable[[str], None],
    shards: Executor = SERIAL,
) -> CellResult:
    """One cell, its run directory locked from start to end (a `uverify unlearn` on it meanwhile is refused)."""
    with locked(cell.run_dir):
        return _run_cell(cell, splits, samples, domain, progress, echo, shards)


def _run_cell(
    cell: _Cell,
    splits: Splits,
    samples: Samples,
    domain: Domain,
    progress: bool,
    echo: Callable[[str], None],
    shards: Executor,
) -> CellResult:
    """train -> keep a copy of M -> check M -> unlearn -> check M', each step skipped when its result
    is already there and still valid; the copy of M lets a changed property or attack re-check M
    without retraining. SISA's shards train on `shards`, and both checks' sample batches and branch-
    and-bound samples run there too."""
    spec, training, run_dir = cell.spec, cell.training, cell.run_dir
    method = spec.unlearning.method
    name = f"{cell.label}{method.display_name} {training}"
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
        train_run(
            spec, run_dir, adversarial=adversarial, overwrite=True, splits=splits, progress=progress, compute=shards
        )
        run = open_run(run_dir)
    else:
        reused.append("train")
    m_path = run.kept_m_path if run.kept_m_path.is_file() else keep_m(run)
    before_path, after_path = run.dir.report_file("before"), run.dir.report_file("after")
    before = _valid_report(before_path, digest, m_path)
    if before is None:
        echo(f"[{name}] checking M")
        before = check(m_path, spec, samples, domain, progress=progress, executor=shards)
        save_report(before, before_path)
    else:
        reused.append("check M")
    if run.info.deleted == 0:
        echo(f"[{name}] unlearning ({DeleteRequest.from_spec(spec.unlearning.delete).describe()})")
        unlearn_run(run_dir, from_spec=True, splits=splits, progress=progress, compute=shards)
        run = open_run(run_dir)
    else:
        reused.append("unlearn")
    after = _valid_report(after_path, digest, run.model_path)
    if after is None:
        echo(f"[{name}] checking M'")
        after = check(run.model_path, spec, samples, domain, progress=progress, executor=shards)
        save_report(after, after_path)
    else:
        reused.append("check M'")
    log = run.log()
    return CellResult(method, training, run_dir, before, after, log[-1] if log else {}, reused, cell.dataset)


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


# ----------------------------------------------------------------------------------------- numbers
def _methods(cells: list[CellResult]) -> list[UnlearningMethod]:
    return [m for m in METHODS if any(c.method == m for c in cells)]


def _datasets(cells: list[CellResult]) -> list[str]:
    return list(dict.fromkeys(c.dataset for c in cells))


def _grid(cells: list[CellResult]) -> dict[tuple[str, str, str], CellResult]:
    return {(c.dataset, c.method, c.training): c for c in cells}


def study_tables(cells: list[CellResult]) -> dict[str, Any]:
    """The per-epsilon detail: {"pgd"|"certified": {"RQ1".."RQ4": [row per data set and epsilon]}} with
    ACC, R-ACC, Gap per method."""
    grid = _grid(cells)
    methods = _methods(cells)
    out: dict[str, Any] = {}
    for kind, (racc, gap, _) in ROBUSTNESS.items():
        out[kind] = {}
        for question, (training, when) in QUESTIONS.items():
            rows = []
            for dataset in _datasets(cells):
                first = grid[(dataset, methods[0], training)]
                for eps in [r.epsilon for r in first.before.results]:
                    row: dict[str, Any] = {"dataset": dataset, "epsilon": eps}
                    for method in methods:
                        result = grid[(dataset, method, training)].report(when).result_at(eps)
                        row[method] = {
                            "acc": result.clean_accuracy,
                            "r_acc": getattr(result, racc),
                            "gap": getattr(result, gap),
                        }
                    rows.append(row)
            out[kind][question] = rows
    return out


def _numbers(result: EpsilonResult) -> dict[str, float]:
    return {
        "acc": result.clean_accuracy,
        "r_acc": result.pgd_accuracy,
        "gap": result.gap_pgd,
        "certified": result.certified_accuracy,
        "gap_certified": result.gap_certified,
    }


def headline_numbers(cells: list[CellResult], headline: dict[str, float]) -> dict[str, Any]:
    """{data set: {"epsilon": sigma, method: {training: {when: ACC, R-ACC (PGD), Gap, certified ...}}}}."""
    out: dict[str, Any] = {}
    for dataset in _datasets(cells):
        eps = headline[dataset]
        row: dict[str, Any] = {"epsilon": eps}
        for c in (c for c in cells if c.dataset == dataset):
            row.setdefault(c.method, {})[c.training] = {
                when: _numbers(c.report(when).result_at(eps)) for when in ("before", "after")
            }
        out[dataset] = row
    return out


def seed_pattern(cells: list[CellResult], headline: dict[str, float]) -> list[PatternCheck]:
    """The seed's finding, checked per data set, method and moment (before and after the deletion) at
    the headline sigma: only where the grid has both trainings."""
    grid = _grid(cells)
    checks = []
    for dataset in _datasets(cells):
        eps = headline[dataset]
        for method in _methods(cells):
            std, adv = grid.get((dataset, method, Training.STANDARD)), grid.get((dataset, method, Training.ADVERSARIAL))
            if std is None or adv is None:
                continue
            for when in ("before", "after"):
                s, a = std.report(when).result_at(eps), adv.report(when).result_at(eps)
                checks.append(
                    PatternCheck(dataset, method, when, eps, s.clean_accuracy, a.clean_accuracy, s.gap_pgd, a.gap_pgd)
                )
    return checks


# ------------------------------------------------------------------------------------------ tables
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _moved(before: float | None, after: float | None, digits: int = 2) -> str:
    """`before → after (±points)`, the change a deletion made."""
    pct = _pct if digits == 2 else (lambda v: "-" if v is None else f"{100 * v:.{digits}f}%")
    if before is None or after is None:
        return f"{pct(before)} → {pct(after)}"
    return f"{pct(before)} → {pct(after)} ({100 * (after - before):+.{digits}f})"


_NORM = {"inf": "L∞", "2": "L2", "1": "L1"}
_TRAINING_LABEL = {Training.STANDARD: "st_model (standard)", Training.ADVERSARIAL: "at_model (adversarial)"}


def headline_tables(cells: list[CellResult], headline: dict[str, float]) -> list[Table]:
    """The seed's two tables (st_models, at_models; before deletion) and the same after the deletion:
    one row per data set at its headline sigma, PGD robust accuracy as R-ACC."""
    grid, methods = _grid(cells), _methods(cells)
    header = ["Dataset", *[f"{m.display_name} {col}" for m in methods for col in ("ACC", "R-ACC", "Gap")]]
    titles = {
        "RQ1": "Standard-trained models (st_model), before the deletion (RQ1)",
        "RQ2": "Adversarially trained models (at_model), before the deletion (RQ2)",
        "RQ3": "Standard-trained models (st_model), after the deletion (RQ3)",
        "RQ4": "Adversarially trained models (at_model), after the deletion (RQ4)",
    }
    tables = []
    for question, (training, when) in QUESTIONS.items():
        rows = []
        for dataset in _datasets(cells):
            eps = headline[dataset]
            row = [f"{dataset} (σ={eps:g})"]
            for m in methods:
                r = grid[(dataset, m, training)].report(when).result_at(eps)
                row += [_pct(r.clean_accuracy), _pct(r.pgd_accuracy), _pct(r.gap_pgd)]
            rows.append(row)
        tables.append(Table(titles[question], header, rows, id=question.lower()))
    return tables


def beyond_tables(cells: list[CellResult], headline: dict[str, float]) -> list[Table]:
    """What the seed did not have: certified R-ACC beside PGD's, and what the deletion changed."""
    grid, methods = _grid(cells), _methods(cells)
    certified_rows, moved_rows = [], []
    # the exact column only where branch and bound ran (verify.complete): never an empty column
    exact = any(c.before.result_at(headline[c.dataset]).complete is not None for c in cells)
    for dataset in _datasets(cells):
        eps = headline[dataset]
        for training in TRAININGS:
            if not all((dataset, m, training) in grid for m in methods):
                continue
            label = [f"{dataset} (σ={eps:g})", _TRAINING_LABEL[training]]
            certified = list(label)
            for m in methods:
                cell = grid[(dataset, m, training)]
                b, a = cell.before.result_at(eps), cell.after.result_at(eps)
                certified += [_pct(b.pgd_accuracy), _pct(b.certified_accuracy), _pct(b.gap_certified)]
                if exact:
                    certified.append(_exact(b))
                moved_rows.append(
                    [
                        *label,
                        m.display_name,
                        _moved(b.clean_accuracy, a.clean_accuracy),
                        _moved(b.pgd_accuracy, a.pgd_accuracy),
                        _moved(b.gap_pgd, a.gap_pgd),
                        _moved(b.certified_accuracy, a.certified_accuracy),
                    ]
                )
            certified_rows.append(certified)
    names = [m.display_name for m in methods]
    return [
        Table(
            "Certified robust accuracy (bounds) beside PGD's, before the deletion",
            [
                "Dataset",
                "Training",
                *[
                    f"{n} {c}"
                    for n in names
                    for c in (
                        "R-ACC (PGD)",
                        "R-ACC (certified)",
                        "Gap (certified)",
                        *(["R-ACC (exact)"] if exact else []),
                    )
                ],
            ],
            certified_rows,
            note="certified ≤ PGD ≤ clean for every sample set: the true robust accuracy lies between the two."
            + (
                " R-ACC (exact): branch and bound decided every sample; where some stayed undecided it is the "
                "band certified–PGD that remains."
                if exact
                else ""
            ),
            numeric_from=2,
            id="certified",
        ),
        Table(
            "Before → after the deletion (change in points)",
            ["Dataset", "Training", "Method", "ACC", "R-ACC", "Gap", "certified R-ACC"],
            moved_rows,
            numeric_from=3,
            id="deltas",
        ),
    ]


def _exact(result: EpsilonResult) -> str:
    """The true robust accuracy where branch and bound decided every sample, else the band left."""
    if result.complete is None:
        return "-"
    if result.complete.exact_accuracy is not None:
        return _pct(result.complete.exact_accuracy)
    return f"{_pct(result.certified_accuracy)}–{_pct(result.pgd_accuracy)}"


def deletion_table(cells: list[CellResult]) -> Table:
    """How well each deletion worked: accuracies of M and M' on test / retained / forgotten, the
    membership-inference AUC on the forgotten samples (0.5 is chance), its size and time."""
    rows = []
    for c in cells:
        metrics = c.deletion.get("metrics", {})
        acc = metrics.get("accuracy", {})
        auc = metrics.get("membership_inference_auc", {})

        def pair(split: str, acc: dict[str, Any] = acc) -> str:
            return _moved(acc.get("M", {}).get(split), acc.get("M_prime", {}).get(split), digits=1)

        before_auc, after_auc = auc.get("M"), auc.get("M_prime")
        seconds = metrics.get("seconds", {}).get("unlearn")
        rows.append(
            [
                c.dataset,
                c.method.display_name,
                str(c.training),
                str(len(c.deletion.get("ids", []))),
                "-" if seconds is None else f"{seconds:.2f}",
                pair("test"),
                pair("retained"),
                pair("forgotten"),
                f"{_auc(before_auc)} → {_auc(after_auc)}",
            ]
        )
    return Table(
        "The deletions: M → M′",
        ["Dataset", "Method", "Training", "deleted", "seconds", "test ACC", "retained ACC", "forgotten ACC", "MIA AUC"],
        rows,
        note="MIA AUC: a loss-threshold membership-inference attack, forgotten vs test samples; 0.5 is chance.",
        numeric_from=3,
        id="deletion",
    )


def _auc(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def detail_tables(cells: list[CellResult]) -> dict[str, list[Table]]:
    """The per-epsilon RQ1-RQ4 tables, once with PGD R-ACC and once with certified R-ACC."""
    tables = study_tables(cells)
    methods = _methods(cells)
    header = ["Dataset", *[f"{m.display_name} {col}" for m in methods for col in ("ACC", "R-ACC", "Gap")]]
    out: dict[str, list[Table]] = {}
    columns = [(m, k) for m in methods for k in ("acc", "r_acc", "gap")]
    for kind in ROBUSTNESS:
        out[kind] = []
        for question, rows in tables[kind].items():
            body = [
                [f"{row['dataset']} (σ={row['epsilon']:g})", *[_pct(row[m][k]) for m, k in columns]] for row in rows
            ]
            out[kind].append(
                Table(f"{question}: {_QUESTION_TEXT[question]}", header, body, id=f"{kind}-{question.lower()}")
            )
    return out


_QUESTION_TEXT = {
    "RQ1": "How robust is the standard-trained model before the deletion?",
    "RQ2": "How robust is the adversarially trained model before the deletion?",
    "RQ3": "How robust is the standard-trained model after the deletion?",
    "RQ4": "How robust is the adversarially trained model after the deletion?",
}


def _setting(spec: Spec) -> str:
    delete = spec.unlearning.delete
    request = f"ids {delete.ids}" if delete.ids else f"{delete.fraction:g} of the training set"
    return (
        f"{spec.name}: {_NORM[spec.property.norm]} ball, {spec.data.samples} {spec.data.split} samples, "
        f"σ sweep {', '.join(f'{e:g}' for e in spec.property.epsilon)} (headline {spec.headline_epsilon():g}); "
        f"deletion: {request}; bounds {spec.verify.method}; PGD {spec.attack.steps} steps x "
        f"{spec.attack.restarts} restarts."
    )


def findings(pattern: list[PatternCheck]) -> list[str]:
    """One line per data set and method: the seed's finding, held or not, before and after deletion."""
    lines = []
    for dataset in dict.fromkeys(p.dataset for p in pattern):
        for method in dict.fromkeys(p.method for p in pattern if p.dataset == dataset):
            parts = [p for p in pattern if p.dataset == dataset and p.method == method]
            text = "; ".join(
                f"{p.when}: Gap {_pct(p.gap_standard)} standard vs {_pct(p.gap_adversarial)} adversarial "
                f"({p.ratio_text}), ACC {_pct(p.acc_standard)} vs "
                f"{_pct(p.acc_adversarial)}"
                for p in parts
            )
            verdict = "holds" if all(p.holds for p in parts) else "does not hold"
            lines.append(
                f"{dataset}, {method.display_name} at σ={parts[0].epsilon:g}: {text} — the seed's finding {verdict}."
            )
    return lines


def render_tables_markdown(specs: Sequence[Spec], cells: list[CellResult]) -> str:
    headline = {s.name: s.headline_epsilon() for s in specs}
    seed = headline_tables(cells, headline)
    lines = [
        f"# Robustness before and after deletion: {', '.join(s.name for s in specs)}",
        "",
        *[_setting(s) for s in specs],
        "",
        "ACC: clean accuracy; R-ACC: PGD robust accuracy (the seed's); Gap = ACC - R-ACC; "
        "σ: the headline radius (`study.headline_epsilon`).",
        "",
        section_markdown(Section("The seed's tables at the headline σ", seed[:2])),
    ]
    lines += [f"- {line}" for line in findings(seed_pattern(cells, headline))] + [""]
    lines.append(section_markdown(Section("After the deletion, in the seed's layout", seed[2:])))
    lines.append(section_markdown(Section("Beyond the seed", [*beyond_tables(cells, headline), deletion_table(cells)])))
    for kind, tables in detail_tables(cells).items():
        lines.append(section_markdown(Section(f"Per-σ detail, R-ACC: {ROBUSTNESS[kind][2]} robust accuracy", tables)))
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------- plots
_STYLE = {
    ("standard", "before"): ("tab:blue", "o", "standard, before"),
    ("standard", "after"): ("tab:cyan", "s", "standard, after"),
    ("adversarial", "before"): ("tab:red", "o", "adversarial, before"),
    ("adversarial", "after"): ("tab:orange", "s", "adversarial, after"),
}
PLOT_TITLES = {
    "accuracy": "clean accuracy",
    "robust_accuracy": "robust accuracy",
}


def plot_names(cells: list[CellResult]) -> list[str]:
    return [f"{m}_{k}.png" for m in _methods(cells) for k in PLOT_TITLES] + ["certified_vs_empirical.png"]


_NOT_PLOTTED: Any = {"seconds": True, "complete": {"seconds"}}  # timings: a rerun's differ, its plots do not


def plots_for(cells: list[CellResult], headline: dict[str, float], folder: Path, *, norm: str = "inf") -> list[Path]:
    """The plots, drawn again only when what they show changed (drawing them is most of a rerun's time):
    `plots/inputs.sha256` records the hash of every number they plot, the headline and the norm."""
    state = {
        "version": __version__,
        "norm": norm,
        "headline": headline,
        "cells": [
            [
                c.dataset,
                c.method,
                c.training,
                [r.model_dump(mode="json", exclude=_NOT_PLOTTED) for r in (*c.before.results, *c.after.results)],
            ]
            for c in cells
        ],
    }
    digest = hashlib.sha256(json.dumps(state, sort_keys=True).encode("utf-8")).hexdigest()
    record = folder / "inputs.sha256"
    paths = [folder / name for name in plot_names(cells)]
    if record.is_file() and record.read_text(encoding="utf-8").strip() == digest and all(p.is_file() for p in paths):
        return paths
    record.unlink(missing_ok=True)  # a run killed while drawing must not leave a record that claims the new plots
    written = plot_study(cells, headline, folder, norm=norm)
    atomic_write_bytes(record, (digest + "\n").encode("utf-8"))
    return written


def plot_study(cells: list[CellResult], headline: dict[str, float], folder: Path, *, norm: str = "inf") -> list[Path]:
    """The seed's four charts (per method: accuracy and robust accuracy against sigma, standard and
    adversarial, before and after the deletion) and certified against empirical robust accuracy; one
    panel per data set, the headline sigma marked; PNG files, written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    datasets = _datasets(cells)
    xlabel = f"σ: {_NORM[norm]} radius of the ball (input units)"
    written = []
    for method in _methods(cells):
        for metric, title in PLOT_TITLES.items():
            fig, axes = plt.subplots(1, len(datasets), figsize=(6.4 * len(datasets), 4.4), squeeze=False)
            for ax, dataset in zip(axes[0], datasets, strict=True):
                for cell in (c for c in cells if c.method == method and c.dataset == dataset):
                    for when in ("before", "after"):
                        report = cell.report(when)
                        color, marker, label = _STYLE[(cell.training, when)]
                        eps = [r.epsilon for r in report.results]
                        if metric == "accuracy":
                            ax.plot(eps, [100 * r.clean_accuracy for r in report.results], color=color,
                                    marker=marker, label=label)  # fmt: skip
                        else:
                            ax.plot(eps, [100 * r.pgd_accuracy for r in report.results], color=color,
                                    marker=marker, label=f"{label} (PGD)")  # fmt: skip
                            ax.plot(eps, [100 * r.certified_accuracy for r in report.results], color=color,
                                    marker=marker, linestyle="--", label=f"{label} (certified)")  # fmt: skip
                _mark_headline(ax, headline[dataset])
                ax.set(xlabel=xlabel, ylabel=f"{title} (%)", ylim=(0, 102))
                ax.set_title(f"{method.display_name} {title}: {dataset}")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=7, loc="best")
            fig.tight_layout()
            written.append(_save(fig, folder / f"{method}_{metric}.png"))
            plt.close(fig)
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.6 * len(datasets), 5.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for cell in (c for c in cells if c.dataset == dataset):
            for when in ("before", "after"):
                report = cell.report(when)
                color, marker, label = _STYLE[(cell.training, when)]
                marker = marker if cell.method == "sisa" else "^"
                pgd = [100 * r.pgd_accuracy for r in report.results]
                certified = [100 * r.certified_accuracy for r in report.results]
                ax.scatter(pgd, certified, color=color, marker=marker, label=f"{cell.method.display_name} {label}")
                at = report.result_at(headline[dataset])
                ax.scatter([100 * at.pgd_accuracy], [100 * at.certified_accuracy], s=160, facecolors="none",
                           edgecolors="black", linewidths=1.2)  # fmt: skip
        ax.scatter(
            [], [], s=160, facecolors="none", edgecolors="black", label=f"ringed: headline σ={headline[dataset]:g}"
        )
        ax.plot([0, 100], [0, 100], color="gray", linewidth=1, label="certified = PGD")
        ax.set(xlabel="PGD robust accuracy (%)", ylabel="certified robust accuracy (%)", xlim=(0, 102), ylim=(0, 102))
        ax.set_title(f"Certified vs empirical robust accuracy: {dataset}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    written.append(_save(fig, folder / "certified_vs_empirical.png"))
    plt.close(fig)
    return written


def _mark_headline(ax: Any, sigma: float) -> None:
    ax.axvline(sigma, color="black", linestyle=":", linewidth=1.2, label=f"headline σ = {sigma:g}")


def _save(fig: Any, path: Path) -> Path:
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


# -------------------------------------------------------------------------------------------- page
_FIGURE_TEXT = {
    "accuracy": "Clean accuracy of the {method} models against σ (the same samples at every σ): standard and "
    "adversarial training, before and after the deletion.",
    "robust_accuracy": "Robust accuracy of the {method} models against σ: PGD (solid; an upper bound on the true "
    "robust accuracy) and certified by the bounds (dashed; a lower bound).",
}


def report_page(specs: Sequence[Spec], cells: list[CellResult], plots: list[Path]) -> Page:
    """Everything report.html shows, in reading order."""
    headline = {s.name: s.headline_epsilon() for s in specs}
    seed = headline_tables(cells, headline)
    figures = []
    for path in plots:
        if path.stem == "certified_vs_empirical":
            title = "Certified vs empirical robust accuracy"
            caption = (
                "One point per model and σ; the ringed points are at the headline σ. The distance below the "
                "diagonal is what PGD could not break but the bounds could not prove."
            )
        else:
            method, metric = path.stem.split("_", 1)
            name = UnlearningMethod(method).display_name
            title = f"{name} {PLOT_TITLES[metric]}"
            caption = _FIGURE_TEXT[metric].format(method=name) + " The dotted line marks the headline σ."
        figures.append(Figure(title, path, caption, id=f"plot-{path.stem}", wide=len(specs) > 1))
    versions = dict(cells[0].before.versions) if cells else {}
    import matplotlib

    versions |= {"numpy": np.__version__, "matplotlib": matplotlib.__version__, "platform": platform.platform()}
    sections = [
        Section("The seed's tables at the headline σ", seed[:2], id="seed-tables"),
        Section("After the deletion, in the seed's layout", seed[2:], id="after-tables"),
        Section("Beyond the seed", beyond_tables(cells, headline), id="beyond"),
        Section("The deletions", [deletion_table(cells)], id="deletions"),
    ]
    for kind, tables in detail_tables(cells).items():
        sections.append(
            Section(f"Per-σ detail, R-ACC: {ROBUSTNESS[kind][2]} robust accuracy", tables, id=f"detail-{kind}")
        )
    return Page(
        title=f"uverify study: {', '.join(s.name for s in specs)}",
        intro=[
            "Is the unlearned model still robust? Each data set's models are trained with SISA and Amnesiac "
            "unlearning, standard and adversarially, checked, then checked again after the deletion.",
            *[_setting(s) for s in specs],
            "ACC: clean accuracy; R-ACC: PGD robust accuracy (the seed's); Gap = ACC − R-ACC.",
        ],
        findings=findings(seed_pattern(cells, headline)),
        sections=sections,
        figures=figures,
        specs={s.name: yaml.safe_dump(s.model_dump(mode="json"), sort_keys=False) for s in specs},
        versions=versions,
        generated=f"uverify {__version__}, {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
    )


def render_study_summary(result: StudyResult, spec: Spec | None = None) -> str:
    """What the study prints at the end: the seed's tables at the headline sigma (before and after the
    deletion), the finding, and where everything is. `spec` is unused (the result carries its specs);
    it stays for the callers written when a study had one."""
    lines = [table_markdown(t) for t in headline_tables(result.cells, result.headline)]
    lines += [f"- {line}" for line in findings(result.pattern)]
    lines += [
        "",
        "tables: " + str(result.tables_markdown) + ", " + str(result.tables_json),
        "report: " + str(result.report_html),
        "plots: " + ", ".join(str(p) for p in result.plots),
    ]
    return "\n".join(lines)


__all__ = [
    "CellResult",
    "PatternCheck",
    "StudyResult",
    "cell_spec",
    "headline_numbers",
    "plot_study",
    "plots_for",
    "render_tables_markdown",
    "report_page",
    "seed_pattern",
    "study",
    "study_tables",
    "torch_threads",
]
