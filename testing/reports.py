"""What two runs of one check must share exactly: a report without what legitimately differs.

Serial, process-pool and Dask checks of one spec give the same report but for its timings, tool
versions and the model's path; the tests and `bench/parallel.py` compare reports through `timeless`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["timeless"]

LEFT_OUT = ("seconds", "versions", "time", "path")


def timeless(value: Any) -> Any:
    """A report (as JSON data) without its timings, tool versions and the model's path."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if k not in LEFT_OUT and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value
