"""The 151-column accepted-loans export (accepted_2007_to_2018Q4.csv), parsed chunk by chunk.

Only the REQUIRED columns are read, CHUNK_ROWS rows at a time; an optional one-line prospectus preamble
is skipped, rows whose status has no outcome yet (and the summary rows at the end) are dropped without
renumbering the others, and pandas', gzip's and decoding errors become one-line DataErrors.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from uverify.datasets.loan.columns import (
    CATEGORICAL,
    CLASS_NAMES,
    CREDIT_HISTORY,
    DATE_SOURCES,
    FILE_NAME,
    MISSING_MEANS_NEVER,
    NUMERIC,
    NUMERIC_FEATURES,
    PREAMBLE_PREFIX,
    REQUIRED,
    SOURCE,
    TARGET,
    TARGET_COLUMN,
)
from uverify.datasets.loan.parsing import (
    PARSERS,
    READ_ERRORS,
    Codes,
    Gzip,
    Parsed,
    compression,
    month_index,
    per_value,
    unreadable,
)
from uverify.errors import DataError

CHUNK_ROWS = 200_000  # the file is read in chunks so its 2.26M rows of strings never sit in memory


def read_labelled(path: Path) -> Parsed:
    """The labelled rows of the 151-column file: ids, y, raw numeric features (float64, NaN = missing)
    and categorical codes, parsed chunk by chunk."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (expected {FILE_NAME}, {SOURCE})")
    try:
        packed = compression(path)
        skip = _skip_preamble(path, packed)
        _check_header(path, packed, skip)
    except READ_ERRORS as err:
        raise unreadable(path, err) from None
    ids: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    nums: list[np.ndarray] = []
    cats = {c: Codes() for c in CATEGORICAL}
    rows = 0
    for chunk in _guarded(path, _chunks(path, packed, skip)):
        label = per_value(chunk[TARGET_COLUMN], lambda u: u.str.strip().map(TARGET))
        keep = ~np.isnan(label)
        ids.append(np.arange(rows, rows + len(chunk), dtype=np.int64)[keep])
        rows += len(chunk)
        ys.append(label[keep].astype(np.int64))
        part = chunk.loc[keep]
        block = np.empty((len(part), len(NUMERIC_FEATURES)), dtype=np.float64)
        for j, (column, kind) in enumerate(NUMERIC.items()):
            block[:, j] = PARSERS[kind](part[column])
        earliest, issued = (month_index(part[c]) for c in DATE_SOURCES)
        block[:, -1] = issued - earliest
        nums.append(block)
        for column in CATEGORICAL:
            cats[column].add(part[column])
    if sum(len(i) for i in ids) == 0:
        raise DataError(
            f"{path}: no labelled loans among its {rows} data rows (loan_status must be one of {', '.join(TARGET)})"
        )
    return Parsed(
        "accepted",
        np.concatenate(ids),
        np.concatenate(ys),
        np.concatenate(nums),
        NUMERIC_FEATURES,
        {c: cats[c].codes() for c in CATEGORICAL},
        {c: cats[c].names().astype(str) for c in CATEGORICAL},
        MISSING_MEANS_NEVER,
        tuple(CLASS_NAMES),
        {"column": TARGET_COLUMN, "mapping": dict(TARGET), "other_statuses": "dropped"},
        "0-based data-row number in the file",
        {CREDIT_HISTORY: "months from earliest_cr_line to issue_d"},
    )


def _skip_preamble(path: Path, packed: Gzip) -> int:
    """1 if the file opens with LendingClub's one-line "Notes offered by Prospectus" preamble."""
    opener: Callable[..., Any] = gzip.open if packed == "gzip" else open
    with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as handle:
        first = handle.readline(1 << 16)
        second = handle.readline(1 << 16)
    if TARGET_COLUMN in first:
        return 0
    return 1 if first.startswith(PREAMBLE_PREFIX) or TARGET_COLUMN in second else 0


def _check_header(path: Path, packed: Gzip, skip: int) -> None:
    header = pd.read_csv(
        path,
        compression=packed,
        skiprows=skip,
        nrows=0,
        encoding="utf-8",
        encoding_errors="replace",
    )
    present = {str(c).strip() for c in header.columns}
    missing = [c for c in REQUIRED if c not in present]
    if len(missing) == len(REQUIRED):
        raise DataError(
            f"{path}: not a Lending Club accepted-loans csv: its header has none of the "
            f"{len(REQUIRED)} required columns ({', '.join(REQUIRED[:4])}, ...)"
        )
    if missing:
        raise DataError(
            f"{path}: missing required column(s) {', '.join(missing)}; a Lending Club accepted-loans csv "
            f"({FILE_NAME}) has them"
        )


def _chunks(path: Path, packed: Gzip, skip: int) -> Iterator[pd.DataFrame]:
    wanted = set(REQUIRED)
    reader = pd.read_csv(
        path,
        compression=packed,
        skiprows=skip,
        usecols=lambda c: str(c).strip() in wanted,
        dtype=str,
        encoding="utf-8",
        encoding_errors="replace",
        skip_blank_lines=False,  # a blank record still counts: ids are data-row numbers
        chunksize=CHUNK_ROWS,
    )
    with reader:
        for chunk in reader:
            chunk.columns = [str(c).strip() for c in chunk.columns]
            yield chunk


def _guarded(path: Path, chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """The chunks, with pandas', gzip's and decoding errors turned into one-line DataErrors."""
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except READ_ERRORS as err:
            raise unreadable(path, err) from None
        yield chunk
