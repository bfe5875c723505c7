"""The child side of `runner.py`: read the query, load the network, decide, send plain data back.

Imported by the child only (it pulls in torch, auto_LiRPA and onnxruntime), or preloaded by the runner's
forkserver."""

from __future__ import annotations

import time
from multiprocessing.connection import Connection

from uverify.errors import UverifyError, one_line
from uverify.vnn.decide import Deadline, decide
from uverify.vnn.network import load_network
from uverify.vnn.reader import read_vnnlib

__all__ = ["work"]


def work(conn: Connection, onnx: str, vnnlib: str, end: float) -> None:
    """Messages: ("prepared", seconds), then ("done", verdict as a dict), ("bad_input", line) or
    ("error", line). Never raises: the parent must always hear why."""
    try:
        started = time.monotonic()
        query = read_vnnlib(vnnlib)
        network = load_network(onnx, query)
        conn.send(("prepared", time.monotonic() - started))
        verdict = decide(network, query, Deadline.until(end))
        cex = verdict.counterexample
        payload = {
            "result": verdict.result.value,
            "stage": verdict.stage,
            "x": None if cex is None else cex.x,
            "y": None if cex is None else cex.y,
            "notes": "; ".join(verdict.notes),
        }
        conn.send(("done", payload))
    except UverifyError as exc:
        conn.send(("bad_input", one_line(exc)))
    except Exception as exc:  # a bug or a library failure: the instance's answer is `error`
        conn.send(("error", one_line(exc, with_type=True)))
    finally:
        conn.close()
