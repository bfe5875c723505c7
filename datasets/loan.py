"""Lending Club's accepted loans (accepted_2007_to_2018Q4.csv): will a loan default, from what was known
when it was made?

The file is Lending Club's accepted-loans export, e.g. the Kaggle data set "wordsforthewise/lending-club"
(151 columns, about 2.26 million rows). It is never downloaded automatically: `spec.path` names the csv,
its `.csv.gz`, or a folder that holds either.

Target (`loan_status`): "Charged Off", "Default" and "Does not meet the credit policy. Status:Charged
Off" are class 1 ("default"); "Fully Paid" and "Does not meet the credit policy. Status:Fully Paid" are
class 0 ("paid"). Every other status (Current, Late, In Grace Period, ...) has no outcome yet and its
row is dropped, as are the summary rows ("Total amount funded in policy code 1: ...") at the end.

Features: an explicit ALLOWLIST of what is known at origination (the application, the credit report
pulled for it, and the grade and rate Lending Club assigned). Everything else is excluded, in particular
every column that is only known after the loan was issued, which would leak the outcome:
payments and balances (out_prncp*, total_pymnt*, total_rec_*, last_pymnt_*, next_pymnt_d), recoveries
and collection_recovery_fee, refreshed credit data (last_credit_pull_d, last_fico_range_*), pymnt_plan,
hardship_* and the hardship-plan dates and amounts, debt_settlement_flag* and settlement_*
(POST_ORIGINATION lists them). Identifiers and free text (id, member_id, url, desc, emp_title, title,
zip_code), funding by investors, joint-application and second-applicant columns, and the bureau
aggregates Lending Club added only from 2012 on are left out too: they are missing for early loans or
are not signal. issue_d is used only to measure the credit history (months from earliest_cr_line).

The smaller `lending_club` table of the R package modeldata (also in the Rdatasets collection: 9,857
loans of 2016 Q1, 22 predictors and `Class` "good"/"bad", usually with a leading `rownames` column) is
recognised by its header and read through the same preprocessing; "bad" (charged off, defaulted or
21-120 days late) is class 1. Its ids are the `rownames` column when present.

The parsed table (before any split or fitting) is cached as an .npz named by the file's sha256, in
$UVERIFY_CACHE_DIR (default ~/.cache/uverify/loan): the 2.26M-row file is parsed once, and later loads
with any subsample, split or clip read the cache (`data.cache: false` turns it off).

Preprocessing is fitted on the TRAIN rows only: numerics are imputed with the train median, then
standardised and clipped to [-clip, clip] (where missing means "never happened", a 0/1 indicator
feature keeps that fact); categoricals are one-hot with the categories seen in train
(a missing or unseen category is all zeros). Sample ids are the 0-based data-row number in the file
(preamble and header excluded; dropped rows do not renumber the others), so a deletion request made
against the file stays valid under any subsample or split.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from uverify.datasets.base import Dataset, Domain, Splits, stratified_split
from uverify.datasets.preprocess import StandardScaler
from uverify.errors import DataError, UverifyError
from uverify.files import atomic_write, sha256_file

FILE_NAME = "accepted_2007_to_2018Q4.csv"
SOURCE = "Lending Club's accepted-loans data, e.g. the Kaggle data set 'wordsforthewise/lending-club'"
CLASS_NAMES = ["paid", "default"]
TARGET_COLUMN = "loan_status"
ID_COLUMN = "id"
TARGET: dict[str, int] = {
    "Fully Paid": 0,
    "Does not meet the credit policy. Status:Fully Paid": 0,
    "Charged Off": 1,
    "Default": 1,
    "Does not meet the credit policy. Status:Charged Off": 1,
}
PREAMBLE_PREFIX = "Notes offered by Prospectus"
RDATASETS_FILE = "lending_club.csv"
CHUNK_ROWS = 200_000  # the file is read in chunks so its 2.26M rows of strings never sit in memory

# Numeric features known at origination, each with how its string is parsed.
NUMBER, TERM, EMP_LENGTH = "number", "term", "emp_length"
NUMERIC: dict[str, str] = {
    "loan_amnt": NUMBER,
    "term": TERM,  # " 36 months"
    "int_rate": NUMBER,  # 13.56 or "13.56%" (older downloads)
    "installment": NUMBER,
    "emp_length": EMP_LENGTH,  # "< 1 year" .. "10+ years", "n/a"
    "annual_inc": NUMBER,
    "dti": NUMBER,
    "delinq_2yrs": NUMBER,
    "fico_range_low": NUMBER,
    "fico_range_high": NUMBER,
    "inq_last_6mths": NUMBER,
    "mths_since_last_delinq": NUMBER,
    "mths_since_last_record": NUMBER,
    "open_acc": NUMBER,
    "pub_rec": NUMBER,
    "revol_bal": NUMBER,
    "revol_util": NUMBER,  # 45.3 or "45.3%"
    "total_acc": NUMBER,
    "mort_acc": NUMBER,
    "pub_rec_bankruptcies": NUMBER,
}
# Derived numeric feature: months of credit history at origination, from two "Dec-2015" dates.
CREDIT_HISTORY = "credit_history_months"
DATE_SOURCES = ("earliest_cr_line", "issue_d")
CATEGORICAL = (
    "grade",
    "sub_grade",
    "home_ownership",
    "verification_status",
    "purpose",
    "addr_state",
    "initial_list_status",
    "application_type",
)
NUMERIC_FEATURES = (*NUMERIC, CREDIT_HISTORY)
# Missing here means "never happened" (no delinquency, no public record), which the median would hide:
# each also gets a 0/1 "<column>=missing" feature.
MISSING_MEANS_NEVER = ("mths_since_last_delinq", "mths_since_last_record")
ALLOWLIST = (*NUMERIC, *DATE_SOURCES, *CATEGORICAL)
REQUIRED = (ID_COLUMN, TARGET_COLUMN, *ALLOWLIST)

# Known only after the loan was issued: never a feature (documentation; the ALLOWLIST is what counts).
POST_ORIGINATION = (
    "loan_status",
    "pymnt_plan",
    "out_prncp",
    "out_prncp_inv",
    "total_pymnt",
    "total_pymnt_inv",
    "total_rec_prncp",
    "total_rec_int",
    "total_rec_late_fee",
    "recoveries",
    "collection_recovery_fee",
    "last_pymnt_d",
    "last_pymnt_amnt",
    "next_pymnt_d",
    "last_credit_pull_d",
    "last_fico_range_high",
    "last_fico_range_low",
    "hardship_flag",
    "hardship_type",
    "hardship_reason",
    "hardship_status",
    "deferral_term",
    "hardship_amount",
    "hardship_start_date",
    "hardship_end_date",
    "payment_plan_start_date",
    "hardship_length",
    "hardship_dpd",
    "hardship_loan_status",
    "orig_projected_additional_accrued_interest",
    "hardship_payoff_balance_amount",
    "hardship_last_payment_amount",
    "debt_settlement_flag",
    "debt_settlement_flag_date",
    "settlement_status",
    "settlement_date",
    "settlement_amount",
    "settlement_percentage",
    "settlement_term",
)

# The 151 columns of accepted_2007_to_2018Q4.csv, in file order.
COLUMNS = tuple(
    """
id member_id loan_amnt funded_amnt funded_amnt_inv term int_rate installment grade sub_grade emp_title
emp_length home_ownership annual_inc verification_status issue_d loan_status pymnt_plan url desc purpose title
zip_code addr_state dti delinq_2yrs earliest_cr_line fico_range_low fico_range_high inq_last_6mths
mths_since_last_delinq mths_since_last_record open_acc pub_rec revol_bal revol_util total_acc
initial_list_status out_prncp out_prncp_inv total_pymnt total_pymnt_inv total_rec_prncp total_rec_int
total_rec_late_fee recoveries collection_recovery_fee last_pymnt_d last_pymnt_amnt next_pymnt_d
last_credit_pull_d last_fico_range_high last_fico_range_low collections_12_mths_ex_med
mths_since_last_major_derog policy_code application_type annual_inc_joint dti_joint verification_status_joint
acc_now_delinq tot_coll_amt tot_cur_bal open_acc_6m open_act_il open_il_12m open_il_24m mths_since_rcnt_il
total_bal_il il_util open_rv_12m open_rv_24m max_bal_bc all_util total_rev_hi_lim inq_fi total_cu_tl
inq_last_12m acc_open_past_24mths avg_cur_bal bc_open_to_buy bc_util chargeoff_within_12_mths delinq_amnt
mo_sin_old_il_acct mo_sin_old_rev_tl_op mo_sin_rcnt_rev_tl_op mo_sin_rcnt_tl mort_acc mths_since_recent_bc
mths_since_recent_bc_dlq mths_since_recent_inq mths_since_recent_revol_delinq num_accts_ever_120_pd
num_actv_bc_tl num_actv_rev_tl num_bc_sats num_bc_tl num_il_tl num_op_rev_tl num_rev_accts num_rev_tl_bal_gt_0
num_sats num_tl_120dpd_2m num_tl_30dpd num_tl_90g_dpd_24m num_tl_op_past_12m pct_tl_nvr_dlq percent_bc_gt_75
pub_rec_bankruptcies tax_liens tot_hi_cred_lim total_bal_ex_mort total_bc_limit total_il_high_credit_limit
revol_bal_joint sec_app_fico_range_low sec_app_fico_range_high sec_app_earliest_cr_line sec_app_inq_last_6mths
sec_app_mort_acc sec_app_open_acc sec_app_revol_util sec_app_open_act_il sec_app_num_rev_accts
sec_app_chargeoff_within_12_mths sec_app_collections_12_mths_ex_med sec_app_mths_since_last_major_derog
hardship_flag hardship_type hardship_reason hardship_status deferral_term hardship_amount hardship_start_date
hardship_end_date payment_plan_start_date hardship_length hardship_dpd hardship_loan_status
orig_projected_additional_accrued_interest hardship_payoff_balance_amount hardship_last_payment_amount
disbursement_method debt_settlement_flag debt_settlement_flag_date settlement_status settlement_date
settlement_amount settlement_percentage settlement_term
""".split()  # noqa: SIM905 (151 names read best as the header they are)
)

_MONTHS = {
    m.lower(): i
    for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"))
}
_DATE = re.compile(r"^([A-Za-z]{3})-(\d{4})$")
Gzip = Literal["gzip"] | None
_READ_ERRORS = (ValueError, OSError, EOFError, zlib.error)


# ------------------------------------------------------------------------------------------ locating
def resolve_path(path: Path) -> Path:
    """The csv (or .csv.gz) that `path` names: the file itself, or the one inside a folder.

    Kaggle's archive unpacks to a folder named like the file, holding the file, so a folder is searched
    one level deep and case-insensitively as well.
    """
    path = Path(path).expanduser()
    if path.is_file():
        return path
    if path.is_dir():
        for folder in [path, *sorted(d for d in path.iterdir() if d.is_dir())]:
            found = _find_in(folder)
            if found is not None:
                return found
    elif path.with_name(path.name + ".gz").is_file():
        return path.with_name(path.name + ".gz")
    where = f"in the folder {path}" if path.is_dir() else f"at {path}"
    raise DataError(
        f"Lending Club data not found: no {FILE_NAME} (or {FILE_NAME}.gz, or {RDATASETS_FILE}) {where}; it is "
        f"{SOURCE} (or {RDATASETS_SOURCE}), and it is not downloaded automatically: download it and point "
        "data.path at it"
    )


def _find_in(folder: Path) -> Path | None:
    names = (FILE_NAME, FILE_NAME + ".gz", RDATASETS_FILE)
    for name in names:
        if (folder / name).is_file():
            return folder / name
    entries = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_file()}
    return next((entries[n.lower()] for n in names if n.lower() in entries), None)


# ------------------------------------------------------------------------------------------- reading
def _compression(path: Path) -> Gzip:
    """gzip by content, not name: a .gz renamed to .csv still loads."""
    with open(path, "rb") as handle:
        return "gzip" if handle.read(2) == b"\x1f\x8b" else None


def _skip_preamble(path: Path, compression: Gzip) -> int:
    """1 if the file opens with LendingClub's one-line "Notes offered by Prospectus" preamble."""
    opener: Callable[..., Any] = gzip.open if compression == "gzip" else open
    with opener(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as handle:
        first = handle.readline(1 << 16)
        second = handle.readline(1 << 16)
    if TARGET_COLUMN in first:
        return 0
    return 1 if first.startswith(PREAMBLE_PREFIX) or TARGET_COLUMN in second else 0


def _per_value(s: pd.Series, parse: Callable[[pd.Series], Any]) -> np.ndarray:
    """`parse` applied to each distinct string once (terms, dates, statuses repeat millions of
    times); missing stays NaN."""
    codes, uniques = pd.factorize(s)
    values = np.asarray(parse(pd.Series(uniques, dtype=object)), dtype=np.float64)
    return np.append(values, np.nan)[codes]  # code -1 (missing) picks the trailing NaN


def _finite(values: np.ndarray) -> np.ndarray:
    values[~np.isfinite(values)] = np.nan  # "inf" parses, but is no amount
    return values


def _number(s: pd.Series) -> np.ndarray:
    """13.56, " 13.56" or "13.56%" -> 13.56; anything else is missing."""
    values = np.array(pd.to_numeric(s, errors="coerce"), dtype=np.float64)  # fast path: plain numbers
    retry = np.isnan(values) & np.asarray(s.notna(), dtype=bool)
    if retry.any():
        values[retry] = _per_value(
            s[retry],
            lambda u: pd.to_numeric(u.str.strip().str.rstrip("%").str.strip(), errors="coerce"),
        )
    return _finite(values)


def _term(s: pd.Series) -> np.ndarray:
    """ " 36 months" -> 36."""
    return _finite(_per_value(s, lambda u: pd.to_numeric(u.str.extract(r"(\d+)", expand=False), errors="coerce")))


def _emp_length(s: pd.Series) -> np.ndarray:
    """ "< 1 year" is 0, "10+ years" is 10, "n/a" or empty is missing."""

    def years(u: pd.Series) -> pd.Series:
        found = pd.to_numeric(u.str.extract(r"(\d+)", expand=False), errors="coerce")
        return found.mask(u.str.strip().str.startswith("<"), 0.0)

    return _finite(_per_value(s, years))


def _month_index(s: pd.Series) -> np.ndarray:
    """ "Dec-2015" -> 2015 * 12 + 11; anything else is missing."""

    def months(u: pd.Series) -> pd.Series:
        parts = u.str.strip().str.extract(_DATE)
        month = parts[0].str.lower().map(_MONTHS)
        return pd.to_numeric(parts[1], errors="coerce") * 12 + month

    return _per_value(s, months)


_PARSERS: dict[str, Callable[[pd.Series], np.ndarray]] = {
    NUMBER: _number,
    TERM: _term,
    EMP_LENGTH: _emp_length,
}


def _chunks(path: Path, compression: Gzip, skip: int) -> Iterator[pd.DataFrame]:
    wanted = set(REQUIRED)
    reader = pd.read_csv(
        path,
        compression=compression,
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


def _check_header(path: Path, compression: Gzip, skip: int) -> None:
    header = pd.read_csv(
        path,
        compression=compression,
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


class _Codes:
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


def _unreadable(path: Path, err: BaseException) -> DataError:
    reason = " ".join(str(err).split()) or type(err).__name__
    return DataError(f"{path}: cannot read it as a Lending Club csv ({reason})")


def _guarded(path: Path, chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """The chunks, with pandas', gzip's and decoding errors turned into one-line DataErrors."""
    while True:
        try:
            chunk = next(chunks)
        except StopIteration:
            return
        except _READ_ERRORS as err:
            raise _unreadable(path, err) from None
        yield chunk


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


def read_labelled(path: Path) -> Parsed:
    """The labelled rows of the 151-column file: ids, y, raw numeric features (float64, NaN = missing)
    and categorical codes, parsed chunk by chunk."""
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty (expected {FILE_NAME}, {SOURCE})")
    try:
        compression = _compression(path)
        skip = _skip_preamble(path, compression)
        _check_header(path, compression, skip)
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from None
    ids: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    nums: list[np.ndarray] = []
    cats = {c: _Codes() for c in CATEGORICAL}
    rows = 0
    for chunk in _guarded(path, _chunks(path, compression, skip)):
        label = _per_value(chunk[TARGET_COLUMN], lambda u: u.str.strip().map(TARGET))
        keep = ~np.isnan(label)
        ids.append(np.arange(rows, rows + len(chunk), dtype=np.int64)[keep])
        rows += len(chunk)
        ys.append(label[keep].astype(np.int64))
        part = chunk.loc[keep]
        block = np.empty((len(part), len(NUMERIC_FEATURES)), dtype=np.float64)
        for j, (column, kind) in enumerate(NUMERIC.items()):
            block[:, j] = _PARSERS[kind](part[column])
        earliest, issued = (_month_index(part[c]) for c in DATE_SOURCES)
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


# ------------------------------------------------------------------------------------------- fitting
def _medians(raw: np.ndarray) -> np.ndarray:
    """Per-column median of the non-missing values; 0 for a column that is missing throughout."""
    out = np.zeros(raw.shape[1], dtype=np.float64)
    for j in range(raw.shape[1]):
        present = raw[:, j][~np.isnan(raw[:, j])]
        if len(present):
            out[j] = float(np.median(present))
    return out


def load(spec: Any) -> Splits:
    """Train/test splits of the labelled loans in `spec.path`, preprocessed as the module says."""
    path = resolve_path(spec.path)
    parsed = read_cached(path) if getattr(spec, "cache", True) else parse(path)
    ids, y, raw, codes = parsed.ids, parsed.y, parsed.raw, parsed.codes
    categorical = tuple(parsed.codes)

    if spec.subsample is not None and spec.subsample < len(ids):
        rng = np.random.default_rng(spec.seed)
        keep = np.sort(rng.choice(len(ids), size=spec.subsample, replace=False))
        ids, y, raw = ids[keep], y[keep], raw[keep]
        codes = {c: v[keep] for c, v in codes.items()}
    try:
        train_idx, test_idx = stratified_split(len(ids), y, spec.test_fraction, spec.seed)
    except ValueError as err:
        raise DataError(f"{path}: cannot split {len(ids)} labelled loans into train and test ({err})") from None

    never = np.isnan(raw[:, [parsed.numeric.index(c) for c in parsed.missing_means_never]]).astype(np.float32)
    medians = _medians(raw[train_idx])
    raw = np.where(np.isnan(raw), medians, raw)  # imputed
    scaler = StandardScaler.fit(raw[train_idx], spec.clip)
    names = list(parsed.numeric)
    positions: dict[str, np.ndarray] = {}  # per column: vocabulary code -> one-hot slot (-1: none)
    categories: dict[str, list[str]] = {}
    for column in categorical:
        vocab = parsed.vocab[column]
        train_codes = np.unique(codes[column][train_idx])
        train_codes = train_codes[train_codes >= 0]
        order = np.argsort(vocab[train_codes].astype(str), kind="stable")
        categories[column] = [str(v) for v in vocab[train_codes][order]]
        position = np.full(len(vocab) + 1, -1, dtype=np.int64)  # last slot: missing (code -1)
        position[train_codes[order]] = np.arange(len(train_codes))
        positions[column] = position
        names += [f"{column}={v}" for v in categories[column]]
    names += [f"{column}=missing" for column in parsed.missing_means_never]
    n_num = len(parsed.numeric)

    def features(idx: np.ndarray) -> np.ndarray:
        """X for the rows idx, built per split so the full matrix never exists twice."""
        X = np.zeros((len(idx), len(names)), dtype=np.float32)
        X[:, :n_num] = scaler.transform(raw[idx])
        offset = n_num
        for column in categorical:
            slot = positions[column][codes[column][idx]]  # unseen in train or missing -> -1
            rows = np.flatnonzero(slot >= 0)
            X[rows, offset + slot[rows]] = 1.0
            offset += len(categories[column])
        X[:, offset:] = never[idx]
        return X

    lower = np.zeros(len(names), dtype=np.float32)
    upper = np.ones(len(names), dtype=np.float32)
    lower[:n_num], upper[:n_num] = -spec.clip, spec.clip
    domain = Domain(lower, upper)
    prep: dict[str, Any] = {
        "kind": "loan",
        "source": parsed.source,
        "features": names,
        "numeric": {
            "columns": list(parsed.numeric),
            "medians": medians.tolist(),
            "missing_indicators": list(parsed.missing_means_never),
            "scaler": scaler.to_json(),
            "derived": parsed.derived,
        },
        "categorical": {
            "columns": list(categorical),
            "categories": categories,
            "unknown": "all zeros",
        },
        "clip": float(spec.clip),
        "target": parsed.target | {"class_names": list(parsed.class_names)},
        "ids": parsed.ids_are,
        "subsample": spec.subsample,
        "seed": spec.seed,
    }

    def part(idx: np.ndarray) -> Dataset:
        return Dataset("loan", ids[idx], features(idx), y[idx], list(parsed.class_names), domain, prep)

    return Splits(part(train_idx), part(test_idx))


# ------------------------------------------------------------------------------- the Rdatasets table
# modeldata's (and Rdatasets') `lending_club`: 9,857 loans from 2016 Q1, 22 predictors and `Class`.
RDATASETS_TARGET = "Class"
RDATASETS_MAPPING = {"good": 0, "bad": 1}
RDATASETS_CLASSES = ("good", "bad")  # good: paid back or on time; bad: charged off, defaulted or 21-120 days late
RDATASETS_NUMERIC: dict[str, str] = {
    "funded_amnt": NUMBER,
    "term": TERM,  # "term_36"
    "int_rate": NUMBER,
    "annual_inc": NUMBER,
    "emp_length": "rdatasets_emp_length",  # "emp_lt_1", "emp_1".."emp_9", "emp_ge_10", "emp_unk"
    "delinq_2yrs": NUMBER,
    "inq_last_6mths": NUMBER,
    "revol_util": NUMBER,
    "acc_now_delinq": NUMBER,
    "open_il_6m": NUMBER,
    "open_il_12m": NUMBER,
    "open_il_24m": NUMBER,
    "total_bal_il": NUMBER,
    "all_util": NUMBER,
    "inq_fi": NUMBER,
    "inq_last_12m": NUMBER,
    "delinq_amnt": NUMBER,
    "num_il_tl": NUMBER,
    "total_il_high_credit_limit": NUMBER,
}
RDATASETS_CATEGORICAL = ("sub_grade", "addr_state", "verification_status")
RDATASETS_COLUMNS = (*RDATASETS_NUMERIC, *RDATASETS_CATEGORICAL, RDATASETS_TARGET)
RDATASETS_SOURCE = "the `lending_club` table of the R package modeldata (also in the Rdatasets collection)"
_ROWNAMES = ("rownames", "", "Unnamed: 0")


def _rdatasets_emp_length(s: pd.Series) -> np.ndarray:
    """ "emp_lt_1" is 0, "emp_ge_10" is 10, "emp_3" is 3, "emp_unk" is missing."""

    def years(u: pd.Series) -> pd.Series:
        found = pd.to_numeric(u.str.extract(r"(\d+)", expand=False), errors="coerce")
        return found.mask(u.str.strip().str.contains("lt_1", regex=False), 0.0)

    return _finite(_per_value(s, years))


def _is_rdatasets(path: Path) -> bool:
    """modeldata's table has `Class` and no `loan_status`."""
    try:
        compression = _compression(path)
        header = pd.read_csv(path, compression=compression, nrows=0, encoding="utf-8", encoding_errors="replace")
    except _READ_ERRORS:
        return False
    columns = {str(c).strip() for c in header.columns}
    return RDATASETS_TARGET in columns and TARGET_COLUMN not in columns


def read_rdatasets(path: Path) -> Parsed:
    """The `lending_club` csv (a leading `rownames` column, as Rdatasets writes it, gives the ids)."""
    try:
        frame = pd.read_csv(path, compression=_compression(path), dtype=str, keep_default_na=False)
    except _READ_ERRORS as err:
        raise _unreadable(path, err) from None
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
    label = _per_value(frame[RDATASETS_TARGET].fillna(""), lambda u: u.str.strip().map(RDATASETS_MAPPING))
    keep = ~np.isnan(label)
    if not keep.any():
        raise DataError(f"{path}: no row has Class 'good' or 'bad' ({RDATASETS_SOURCE})")
    part = frame.loc[keep]
    parsers = _PARSERS | {"rdatasets_emp_length": _rdatasets_emp_length}
    raw = np.column_stack([parsers[kind](part[column]) for column, kind in RDATASETS_NUMERIC.items()])
    cats = {c: _Codes() for c in RDATASETS_CATEGORICAL}
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


def parse(path: Path) -> Parsed:
    return read_rdatasets(path) if _is_rdatasets(path) else read_labelled(path)


# ------------------------------------------------------------------------------------------- caching
CACHE_VERSION = 1  # bump when parsing changes: older caches are then ignored


def cache_dir() -> Path:
    """$UVERIFY_CACHE_DIR, else $XDG_CACHE_HOME/uverify, else ~/.cache/uverify."""
    if os.environ.get("UVERIFY_CACHE_DIR"):
        return Path(os.environ["UVERIFY_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "uverify"


def read_cached(path: Path) -> Parsed:
    """`parse(path)` once per file content: the result is kept as an .npz named by the file's sha256,
    so the 2.26M-row csv is parsed once and later loads (any subsample, split or clip) read the cache.
    A damaged cache is parsed again and replaced; an unwritable cache folder only costs the speed."""
    digest = sha256_file(path)
    cached = cache_dir() / "loan" / f"{digest}.v{CACHE_VERSION}.npz"
    if cached.is_file():
        try:
            return _from_npz(cached)
        except (OSError, ValueError, KeyError, EOFError, zlib.error, zipfile.BadZipFile):
            pass
    parsed = parse(path)
    with contextlib.suppress(UverifyError):  # a read-only home: the data loads, only uncached
        atomic_write(cached, lambda tmp: _to_npz(parsed, tmp))
    return parsed


def _to_npz(parsed: Parsed, tmp: Path) -> None:
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
    with open(tmp, "wb") as handle:
        np.savez(handle, **arrays)  # type: ignore[arg-type]


def _from_npz(cached: Path) -> Parsed:
    with np.load(cached, allow_pickle=False) as data:
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
