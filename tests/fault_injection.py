"""SIGKILL a real uverify command at a chosen file-system operation, and compare run directories.

A kill point is the n-th call, in the command's process, of an operation that changes the file system
(`os.replace`, `os.rename`, `os.mkdir`, `os.unlink`, `os.rmdir`, `os.fsync`, `shutil.rmtree`, and the
atomic folder exchange): the process kills itself with SIGKILL just before it. Counting operations rather
than sleeping a random time puts every kill where it can hurt (between two writes) and makes each point
reproducible; the points are drawn by a seeded generator from all the operations an uninterrupted run makes.

The commands run in processes forked from uverify's forkserver (`compute.forkserver_context`, which
has imported torch and uverify once), so a kill point costs the command's work, not torch's import (a
SIGKILL of such a process is as abrupt as of any other).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from uverify.compute import forkserver_context

# what differs between two uninterrupted runs of one command (timings, tool versions), and a study's
# record of which steps a rerun reused (a resumed study says so; its results are the same)
TIMING_KEYS = frozenset({"seconds", "time", "versions", "speedup_vs_retraining", "reused"})


def _is_timing(key: str) -> bool:
    return key in TIMING_KEYS or key.endswith("_seconds")


def _child(args: list[str], cwd: str, kill_at: int, count_file: str) -> None:
    os.chdir(cwd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    from uverify import files

    calls = [0]

    def counted(fn: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*a, **k)

        return wrapper

    real_replace = os.replace  # to record the count itself, uncounted
    for name in ("replace", "rename", "mkdir", "unlink", "rmdir", "fsync"):
        setattr(os, name, counted(getattr(os, name)))
    shutil.rmtree = counted(shutil.rmtree)
    files._exchange = counted(files._exchange)
    from uverify.cli import cli

    code = 0
    try:
        cli.main(args, prog_name="uverify", standalone_mode=False)
    except SystemExit as exc:
        code = int(exc.code or 0)
    except BaseException:
        code = 3
    Path(count_file + ".tmp").write_text(str(calls[0]))
    real_replace(count_file + ".tmp", count_file)
    sys.stdout.flush()
    os._exit(code)


def run(args: list[str], cwd: Path, kill_at: int = 0) -> tuple[int, int | None]:
    """Run `uverify ARGS` in a fresh process, killed before its `kill_at`-th operation (0: never).
    Returns the exit code (-9 when killed) and, when it ran to the end, how many operations it made."""
    count_file = cwd / f".ops.{os.getpid()}"
    count_file.unlink(missing_ok=True)
    process = forkserver_context().Process(target=_child, args=(args, str(cwd), kill_at, str(count_file)))
    process.start()
    process.join()
    ops = int(count_file.read_text()) if count_file.is_file() else None
    count_file.unlink(missing_ok=True)
    return int(process.exitcode if process.exitcode is not None else -1), ops


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, byte for byte (lock files aside: they outlive their commands)."""
    if not folder.exists():
        return {}
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def normalised(snap: dict[str, bytes]) -> dict[str, Any]:
    """A snapshot with the JSON files' timings and tool versions dropped: what two uninterrupted runs of
    the same command share exactly."""
    out: dict[str, Any] = {}
    for name, data in snap.items():
        if name.endswith(".json"):
            out[name] = _drop_timings(json.loads(data))
        elif name.endswith(".md"):
            out[name] = _markdown_without_timings(data.decode("utf-8"))
        elif name.endswith(".html"):
            out[name] = _html_without_timings(data.decode("utf-8"))
        else:
            out[name] = data
    return out


def _drop_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_timings(v) for k, v in obj.items() if not _is_timing(k)}
    if isinstance(obj, list):
        return [_drop_timings(v) for v in obj]
    return obj


def _markdown_without_timings(text: str) -> str:
    """A rendered page's timing columns (a header cell that is a timing key) blanked, row by row."""
    out, timing = [], set[int]()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            timing = set()
            out.append(line)
            continue
        cells = line.strip().strip("|").split("|")
        if i + 1 < len(lines) and lines[i + 1].startswith("|") and set(lines[i + 1]) <= set("|-: "):
            timing = {k for k, c in enumerate(cells) if _is_timing(c.strip())}
        out.append("|".join("" if k in timing else c for k, c in enumerate(cells)))
    return "\n".join(out)


def _html_without_timings(text: str) -> str:
    """report.html with its generation time and its tables' timing columns blanked."""
    text = re.sub(r'<p class="meta">[^<]*</p>', "", text)

    def table(match: re.Match[str]) -> str:
        body = match.group(0)
        header = re.findall(r"<th>(.*?)</th>", body)
        timing = {k for k, h in enumerate(header) if _is_timing(h.strip())}

        def row(tr: re.Match[str]) -> str:
            cells = re.findall(r"<td[^>]*>.*?</td>", tr.group(1))
            return "<tr>" + "".join("" if k in timing else c for k, c in enumerate(cells)) + "</tr>"

        return re.sub(r"<tr>(.*?)</tr>", row, body)

    return re.sub(r"<table.*?</table>", table, text, flags=re.S)


def leftovers(parent: Path) -> list[str]:
    """Staging folders or temporary files that a finished command should have cleared away."""
    return sorted(
        str(p.relative_to(parent))
        for p in parent.rglob("*")
        if p.name.endswith((".staging", ".tmp")) or ".old-" in p.name
    )
