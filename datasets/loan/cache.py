"""The parsed table cached as an .npz named by the csv's sha256, so the 2.26M-row file is parsed once.

The cache lives in $UVERIFY_CACHE_DIR (else $XDG_CACHE_HOME/uverify, else ~/.cache/uverify), under loan/;
later loads with any subsample, split or clip read it (`data.cache: false` turns it off). Its arrays are
plain numbers and unicode strings (the metadata as one JSON string), so reading it never unpickles
anything. A damaged entry is parsed again and replaced; an unwritable cache folder only costs the speed.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from uverify.datasets.loan.parsing import Parsed
from uverify.errors import UverifyError
from uverify.files import atomic_write_npz, cache_dir, read_npz, sha256_file

CACHE_VERSION = 1  # bump when parsing changes: older caches are then ignored
_KEYS = ("meta", "ids", "y", "raw")
# What a damaged or foreign entry raises beyond read_npz's UverifyError: bad JSON or arrays in the wrong
# places (ValueError, KeyError, TypeError), a corrupt compressed member (zlib.error).
_DAMAGED = (UverifyError, ValueError, KeyError, TypeError, zlib.error)


def read_cached(path: Path, parse: Callable[[Path], Parsed]) -> Parsed:
    """`parse(path)` once per file content: the result is kept as an .npz named by the file's sha256,
    so the 2.26M-row csv is parsed once and later loads (any subsample, split or clip) read the cache.
    A damaged cache is parsed again and replaced; an unwritable cache folder only costs the speed."""
    digest = sha256_file(path)
    cached = cache_dir() / "loan" / f"{digest}.v{CACHE_VERSION}.npz"
    if cached.is_file():
        try:
            return _from_arrays(read_npz(cached, f"the loan cache {cached}", _KEYS))
        except _DAMAGED:
            pass  # parsed again below, and the entry replaced
    parsed = parse(path)
    with contextlib.suppress(UverifyError):  # a read-only home: the data loads, only uncached
        atomic_write_npz(cached, _to_arrays(parsed))
    return parsed


def _to_arrays(parsed: Parsed) -> dict[str, np.ndarray]:
    meta = {
        "source": parsed.source,
        "numeric": list(parsed.numeric),
        "categorical": list(parsed.codes),
        "missing_means_never": list(parsed.missing_means_never),
        "class_names": list(parsed.class_names),
        "target": parsed.target,
        "ids_are": parsed.ids_are,
        "derived": parsed.derived,
    }
    arrays: dict[str, np.ndarray] = {
        "meta": np.array(json.dumps(meta)),
        "ids": parsed.ids,
        "y": parsed.y,
        "raw": parsed.raw,
    }
    for i, column in enumerate(parsed.codes):
        arrays[f"codes_{i}"] = parsed.codes[column]
        arrays[f"vocab_{i}"] = parsed.vocab[column].astype(str)  # unicode, so no pickle is needed
    return arrays


def _from_arrays(data: dict[str, np.ndarray]) -> Parsed:
    meta = json.loads(str(data["meta"]))
    columns = meta["categorical"]
    return Parsed(
        meta["source"],
        data["ids"],
        data["y"],
        data["raw"],
        tuple(meta["numeric"]),
        {c: data[f"codes_{i}"] for i, c in enumerate(columns)},
        {c: data[f"vocab_{i}"] for i, c in enumerate(columns)},
        tuple(meta["missing_means_never"]),
        tuple(meta["class_names"]),
        meta["target"],
        meta["ids_are"],
        meta["derived"],
    )
