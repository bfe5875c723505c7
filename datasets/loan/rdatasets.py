"""The smaller `lending_club` table of the R package modeldata (also in the Rdatasets collection).

9,857 loans of 2016 Q1: 22 predictors and `Class` "good"/"bad", usually with a leading `rownames` column.
It is recognised by its header (`Class`, no `loan_status`), read whole (it is small) into the same
`Parsed` table as the accepted-loans export, and so goes through the same preprocessing. "bad" (charged
off, defaulted or 21-120 days late) is class 1. Its ids are the `rownames` column when present (distinct
integers, else an error), otherwise the 0-based data-row number.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from uverify.datasets.loan.columns import (
    RDATASETS_CATEGORICAL,
    RDATASETS_CLASSES,
    RDATASETS_COLUMNS,
    RDATASETS_EMP_LENGTH,
    RDATASETS_MAPPING,
    RDATASETS_NUMERIC,
    RDATASETS_SOURCE,
    RDATASETS_TARGET,
    TARGET_COLUMN,
)
from uverify.datasets.loan.parsing import (
    PARSERS,
    READ_ERRORS,
    Codes,
    Parsed,
    compression,
    finite,
    per_value,
    unreadable,
)
from uverify.errors import DataError

_ROWNAMES = ("rownames", "", "Unnamed: 0")


def emp_length(s: pd.Series) -> np.ndarray:
    """ "emp_lt_1" is 0, "emp_ge_10" is 10, "emp_3" is 3, "emp_unk" is missing."""

    def years(u: pd.Series) -> pd.Series:
        found = pd.to_numeric(u.str.extract(r"(\d+)", expand=False), errors="coerce")
        return found.mask(u.str.strip().str.contains("lt_1", regex=False), 0.0)

    return finite(per_value(s, years))


def is_rdatasets(path: Path) -> bool:
    """modeldata's table has `Class` and no `loan_status`."""
    try:
        packed = compression(path)
        header = pd.read_csv(path, compression=packed, nrows=0, encoding="utf-8", encoding_errors="replace")
    except READ_ERRORS:
        return False
    columns = {str(c).strip() for c in header.columns}
    return RDATASETS_TARGET in columns and TARGET_COLUMN not in columns


def read_rdatasets(path: Path) -> Parsed:
    """The `lending_club` csv (a leading `rownames` column, as Rdatasets writes it, gives the ids)."""
    try:
        frame = pd.read_csv(path, compression=compression(path), dtype=str, keep_default_na=False)
    except READ_ERRORS as err:
        raise unreadable(path, err) from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in RDATASETS_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} of {RDATASETS_SOURCE}")
    rownames = next((c for c in _ROWNAMES if c in frame.columns), None)
    if rownames is not None:
        names = frame[rownames].astype(str).str.strip()
        if not names.str.fullmatch(r"[+-]?\d{1,18}").all():
            raise DataError(f"{path}: the {rownames!r} column must hold integer row names")
        ids = names.astype(np.int64).to_numpy()
        if len(np.unique(ids)) != len(ids):
            raise DataError(f"{path}: the {rownames!r} column must hold distinct integer row names")
        ids_are = f"the file's {rownames!r} column"
    else:
        ids = np.arange(len(frame), dtype=np.int64)
        ids_are = "0-based data-row number in the file"
    frame = frame.replace({"": None, "NA": None})
    label = per_value(frame[RDATASETS_TARGET].fillna(""), lambda u: u.str.strip().map(RDATASETS_MAPPING))
    keep = ~np.isnan(label)
    if not keep.any():
        raise DataError(f"{path}: no row has Class 'good' or 'bad' ({RDATASETS_SOURCE})")
    part = frame.loc[keep]
    parsers = PARSERS | {RDATASETS_EMP_LENGTH: emp_length}
    raw = np.column_stack([parsers[kind](part[column]) for column, kind in RDATASETS_NUMERIC.items()])
    cats = {c: Codes() for c in RDATASETS_CATEGORICAL}
    for column in RDATASETS_CATEGORICAL:
        cats[column].add(part[column])
    return Parsed(
        "rdatasets",
        ids[keep].astype(np.int64),
        label[keep].astype(np.int64),
        raw.astype(np.float64),
        tuple(RDATASETS_NUMERIC),
        {c: cats[c].codes() for c in RDATASETS_CATEGORICAL},
        {c: cats[c].names().astype(str) for c in RDATASETS_CATEGORICAL},
        (),
        RDATASETS_CLASSES,
        {"column": RDATASETS_TARGET, "mapping": dict(RDATASETS_MAPPING)},
        ids_are,
        {},
    )
