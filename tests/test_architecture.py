"""The import graph between uverify's top-level modules and folders has no cycle (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from collections import defaultdict
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = {".venv", "tests", "bench", "uverify.egg-info", "examples", "runs"}


def _module_of(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return parts[0] if parts[0] != "__init__" else ""


def _imported(path: Path) -> set[str]:
    """Top-level uverify units that `path` imports, relative or absolute, eager or lazy."""
    out: set[str] = set()
    depth = len(path.relative_to(ROOT).parts) - 1  # how many folders below the package root
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = list(path.relative_to(ROOT).parts[:-1])[: max(depth - (node.level - 1), 0)]
                target = [*parts, *(node.module.split(".") if node.module else [])]
                names = [target[0]] if target else [alias.name for alias in node.names]
            elif node.module and node.module.split(".")[0] == "uverify":
                rest = node.module.split(".")[1:]
                names = rest[:1] or [alias.name for alias in node.names]
            else:
                continue
            out.update(names)
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("uverify."))
    return out


def test_no_import_cycle_between_top_level_units() -> None:
    units = {p.stem if p.parent == ROOT else p.relative_to(ROOT).parts[0] for p in ROOT.glob("*.py")}
    units |= {p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").is_file() and p.name not in SKIP}
    units.discard("__init__")
    graph: dict[str, set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or _module_of(path) not in units:
            continue
        unit = _module_of(path)
        graph[unit] |= {name for name in _imported(path) if name in units and name != unit}
    assert {"cli", "pipeline", "rundir", "verifier", "unlearning"} <= set(graph)
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert order.index("errors") < order.index("rundir") < order.index("pipeline") < order.index("cli")
