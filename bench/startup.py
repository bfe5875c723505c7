"""Start-up cost of `uverify check` and `uverify unlearn`: wall time minus the work the command reports.

Runs a small check and a small SISA deletion as real subprocesses, for this tree and for an earlier
revision (`--against`, default the commit before the start-up work), interleaved so that both see the
same machine load, and prints per command the median wall time, the reported work (`seconds` in the
check report / the deletion log entry) and the overhead between them, with the overhead ratio
before/after. The earlier revision runs from a `git worktree`, imported ahead of the editable install
through PYTHONPATH, with this tree's virtual environment.

    .venv/bin/python bench/startup.py [--against REV] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "c280f76"  # the last commit before the start-up work (sklearn out of every command's imports)
SPEC = """\
name: startup
data: {dataset: mixture, classes: 3, dims: 4, n_samples: 300, separation: 5.0, samples: 20}
model: {arch: mlp, hidden: [16]}
train: {epochs: 3, batch_size: 32, lr: 0.02, seed: 0}
unlearning: {method: sisa, sisa: {shards: 2, slices: 1}}
property: {norm: inf, epsilon: [0.05]}
attack: {steps: 10, restarts: 1}
"""


def _uverify(args: list[str], cwd: Path, pythonpath: Path | None) -> float:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    started = time.perf_counter()
    command = [str(Path(sys.executable).with_name("uverify")), *args]
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def _tree(rev: str, work: Path) -> Path:
    """A folder holding `uverify` → a worktree of `rev`, to put first on PYTHONPATH."""
    checkout = work / f"tree-{rev}"
    add = ["git", "worktree", "add", "--detach", str(checkout), rev]
    subprocess.run(add, cwd=ROOT, check=True, capture_output=True)
    shim = work / f"path-{rev}"
    shim.mkdir()
    (shim / "uverify").symlink_to(checkout)
    return shim


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", default=BEFORE, help="earlier revision to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="uverify-startup-"))
    trees: dict[str, Path | None] = {}
    try:
        trees = {f"before ({args.against})": _tree(args.against, work), "after (this tree)": None}
        (work / "s.yaml").write_text(SPEC)
        _uverify(["train", "--spec", "s.yaml", "--out", "run", "--quiet"], work, None)
        figures: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for _ in range(args.repeats):
            for label, path in trees.items():
                wall = _uverify(
                    ["check", "--spec", "s.yaml", "--model", "run/model.onnx", "--out", "r.json", "--quiet"], work, path
                )
                work_s = json.loads((work / "r.json").read_text())["seconds"]
                figures.setdefault(("check", label), []).append((wall, work_s))
                shutil.rmtree(work / "copy", ignore_errors=True)
                shutil.copytree(work / "run", work / "copy")
                unlearn = ["unlearn", "--run", "copy", "--delete-fraction", "0.01", "--seed", "0", "--quiet"]
                wall = _uverify(unlearn, work, path)
                work_s = json.loads((work / "copy" / "deletions.json").read_text())[-1]["seconds"]
                figures.setdefault(("unlearn", label), []).append((wall, work_s))
        import_s = statistics.median(_uverify(["--version"], work, None) for _ in range(args.repeats))
        print(f"median of {args.repeats} interleaved runs; `uverify --version` takes {import_s:.2f} s")
        print(f"{'command':8} {'tree':24} {'wall s':>7} {'work s':>7} {'overhead s':>10}")
        for command in ("check", "unlearn"):
            overhead = {}
            for label in trees:
                rows = figures[(command, label)]
                wall, work_s = statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
                overhead[label] = statistics.median(r[0] - r[1] for r in rows)
                print(f"{command:8} {label:24} {wall:7.2f} {work_s:7.2f} {overhead[label]:10.2f}")
            before, after = overhead.values()
            print(f"{command:8} overhead before/after: {before / after:.2f}x (target: overhead <= 2.5 s)")
    finally:
        for path in trees.values():
            if path is not None:
                subprocess.run(["git", "worktree", "remove", "--force", str((path / "uverify").resolve())], cwd=ROOT)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
