"""Small synthetic Lending Club files, written in exactly the real formats.

The real Lending Club file is 1.6 GB and cannot ship with the package or be fetched in CI, yet the
loader must be exercised on its quirks: all 151 columns in file order, " 36 months", "10+ years",
"Dec-2015", percent strings in older downloads, a prospectus preamble, unlabelled (Current, Late)
loans and the summary rows at the end. `write_loan_csv` writes such a file, fast enough for
benchmarks to write 200,000 rows in a few seconds: every column is a numpy bytes array and rows are
assembled as one byte matrix, with no Python loop over rows or fields. Default risk rises with grade
(and so with int_rate), dti, a 60-month term, recent inquiries and a low income, so a model can beat
the majority class; post-origination columns (payments, recoveries, last_fico_*) are filled and
depend on the outcome, so a loader that leaked them would be caught by a suspiciously good model.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from uverify.datasets.loan.columns import COLUMNS, RDATASETS_COLUMNS

PREAMBLE = "Notes offered by Prospectus (https://www.lendingclub.com/info/prospectus.action)"
SUMMARY_ROWS = (
    "Total amount funded in policy code 1: 1741781700",
    "Total amount funded in policy code 2: 564617590",
)
STATUSES_DEFAULT = (
    "Charged Off",
    "Default",
    "Does not meet the credit policy. Status:Charged Off",
)
STATUSES_PAID = ("Fully Paid", "Does not meet the credit policy. Status:Fully Paid")
STATUSES_OPEN = ("Current", "Late (31-120 days)", "In Grace Period", "Late (16-30 days)")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
EMP_LENGTHS = (
    "< 1 year",
    "1 year",
    *(f"{k} years" for k in range(2, 10)),
    "10+ years",
    "n/a",
    "",
)
HOME = ("MORTGAGE", "RENT", "OWN", "ANY", "OTHER", "NONE")
PURPOSES = (
    "debt_consolidation",
    "credit_card",
    "home_improvement",
    "other",
    "major_purchase",
    "small_business",
    "car",
    "medical",
    "moving",
    "vacation",
    "house",
    "wedding",
    "renewable_energy",
    "educational",
)
_STATE_CODES = (
    "CA NY TX FL IL NJ PA OH GA VA NC MI MD AZ MA CO WA MN IN MO TN CT NV WI AL OR SC LA KY OK KS "
    "AR UT NM MS HI NH RI WV NE MT DE DC AK WY VT SD ME ID ND IA"
)
STATES = tuple(_STATE_CODES.split())
JOBS = ("Teacher", "Manager", "Registered Nurse", "Driver", "Owner", "Sales", "", 'Supervisor, "Ops"')
FREE_TEXT = frozenset({"emp_title", "title", "desc"})  # the only filled columns that may need quotes
ROWS_PER_BLOCK = 32_768  # rows assembled at once: bounds the byte matrix to a few tens of MB


def _bytes(values: Sequence[str] | np.ndarray) -> np.ndarray:
    return np.asarray([str(v).encode("ascii") for v in values], dtype="S")


def _pick(rng: np.random.Generator, values: Sequence[str], p: Sequence[float], n: int) -> np.ndarray:
    weights = np.asarray(p, dtype=np.float64)
    return _bytes(values)[rng.choice(len(values), size=n, p=weights / weights.sum())]


def _text(values: np.ndarray, decimals: int) -> np.ndarray:
    """Numbers as the file writes them ("14650.0", "13.56"); NaN becomes an empty field.

    Each distinct value is formatted once: formatting 200,000 floats one by one is too slow.
    """
    unique, inverse = np.unique(np.round(values.astype(np.float64), decimals), return_inverse=True)
    text = _bytes(["" if v != v else repr(v) for v in unique.tolist()])
    return text[inverse.reshape(-1)]


def _blank(values: np.ndarray, rng: np.random.Generator, share: float) -> np.ndarray:
    """A copy of `values` (float) with a random `share` set missing."""
    out = values.astype(np.float64)
    out[rng.random(len(out)) < share] = np.nan
    return out


def _dates(month_index: np.ndarray) -> np.ndarray:
    """Month counts (year * 12 + month - 1) as "Dec-2015"."""
    names = _bytes(MONTHS)[month_index % 12]
    return np.strings.add(np.strings.add(names, b"-"), (month_index // 12).astype("S"))


def _const(n: int, value: str) -> np.ndarray:
    return np.full(n, value.encode("ascii"), dtype="S")


def loan_columns(n_rows: int, seed: int = 0, *, old_style: bool = False) -> dict[str, np.ndarray]:
    """The data rows, one numpy bytes array per filled column (the other columns are empty).

    `old_style` writes int_rate and revol_util as percent strings (" 13.56%", "45.3%"), as Lending
    Club's own downloads did; the random draws do not depend on it, so both styles hold the same loans.
    """
    rng = np.random.default_rng(seed)
    n = n_rows
    grade = rng.choice(7, size=n, p=[0.17, 0.29, 0.28, 0.15, 0.07, 0.03, 0.01])
    sub = rng.integers(1, 6, size=n)
    risk = grade * 5 + sub - 1  # 0 (A1) .. 34 (G5)
    int_rate = np.clip(5.31 + 0.72 * risk + rng.normal(0.0, 0.4, n), 5.31, 30.99)
    term = np.where(rng.random(n) < 0.2 + 0.02 * risk, 60, 36)
    loan_amnt = np.clip(np.round(rng.lognormal(np.log(13000), 0.6, n) / 25) * 25, 1000, 40000)
    r = int_rate / 1200.0
    installment = loan_amnt * r / (1.0 - (1.0 + r) ** -term)
    annual_inc = np.round(np.clip(rng.lognormal(np.log(65000), 0.55, n), 4000, 2_000_000), -2)
    dti = _blank(np.clip(rng.normal(18.0, 8.0, n), 0.0, 45.0), rng, 0.001)
    fico_low = np.clip(np.round((765 - 3.0 * risk + rng.normal(0, 22, n)) / 5) * 5, 660, 845)
    issued = rng.integers(2007 * 12 + 5, 2018 * 12 + 12, size=n)  # Jun-2007 .. Dec-2018
    history = np.clip(rng.normal(200, 90, n), 36, 700).astype(np.int64)
    open_acc = rng.poisson(11, n) + 1
    revol_util = _blank(np.clip(rng.normal(50, 24, n), 0, 120), rng, 0.001)
    inq = _blank(rng.poisson(0.6 + 0.03 * risk), rng, 0.0005)

    logit = (
        -2.5
        + 0.2 * (risk - 10)
        + 0.08 * (np.nan_to_num(dti, nan=18.0) - 18.0)
        + 0.8 * (term == 60)
        - 1.0 * np.log(annual_inc / 65000)
        + 0.2 * np.nan_to_num(inq)
    )
    defaulted = rng.random(n) < 1.0 / (1.0 + np.exp(-logit))
    still_open = rng.random(n) < np.clip((issued // 12 - 2014) / 4.5, 0.05, 0.9)
    status = np.where(
        defaulted,
        _pick(rng, STATUSES_DEFAULT, [0.96, 0.01, 0.03], n),
        _pick(rng, STATUSES_PAID, [0.97, 0.03], n),
    )
    status[still_open] = _pick(rng, STATUSES_OPEN, [0.93, 0.04, 0.02, 0.01], int(still_open.sum()))
    every = (*STATUSES_DEFAULT, *STATUSES_PAID, *STATUSES_OPEN)
    if n >= len(every):  # every status at least once, even in a tiny file
        status[rng.choice(n, size=len(every), replace=False)] = _bytes(every)
    finished = ~np.isin(status, _bytes(STATUSES_OPEN))
    bad = np.isin(status, _bytes(STATUSES_DEFAULT))

    paid_share = np.where(bad, rng.uniform(0.1, 0.7, n), np.where(finished, 1.0, rng.uniform(0, 1, n)))
    total_pymnt = _text(installment * term * paid_share, 2)
    recoveries = np.where(bad, np.round(loan_amnt * rng.uniform(0, 0.15, n), 2), 0.0)
    last_fico = np.clip(fico_low - 120 * bad + np.round(rng.normal(0, 20, n) / 5) * 5, 500, 845)
    ids = (1_000_000 + np.arange(n) * 13 + rng.integers(0, 13, size=n)).astype("S")
    amount = _text(loan_amnt, 1)
    letters = _bytes("ABCDEFG")[grade]
    rate, util = _text(int_rate, 2), _text(revol_util, 1)
    if old_style:
        rate = np.strings.add(np.strings.add(b" ", rate), b"%")
        util = np.where(util == b"", util, np.strings.add(util, b"%"))
    purpose = _pick(rng, PURPOSES, [57, 22, 6.5, 6, 2, 1.1, 1, 1.1, 0.7, 0.6, 0.5, 0.1, 0.06, 0.02], n)
    payment = _text(installment, 2)
    return {
        "id": ids,
        "loan_amnt": amount,
        "funded_amnt": amount,
        "funded_amnt_inv": amount,
        "term": np.where(term == 60, b" 60 months", b" 36 months"),
        "int_rate": rate,
        "installment": payment,
        "grade": letters,
        "sub_grade": np.strings.add(letters, sub.astype("S")),
        "emp_title": _pick(rng, JOBS, [1] * len(JOBS), n),
        "emp_length": _pick(rng, EMP_LENGTHS, [8, 6, 9, 8, 6, 6, 5, 4, 4, 4, 33, 1, 6], n),
        "home_ownership": _pick(rng, HOME, [0.49, 0.40, 0.107, 0.002, 0.0005, 0.0005], n),
        "annual_inc": _text(annual_inc, 1),
        "verification_status": _pick(rng, ("Source Verified", "Verified", "Not Verified"), [0.39, 0.28, 0.33], n),
        "issue_d": _dates(issued),
        "loan_status": status,
        "pymnt_plan": _const(n, "n"),
        "url": np.strings.add(b"https://lendingclub.com/browse/loanDetail.action?loan_id=", ids),
        "purpose": purpose,
        "title": np.strings.replace(purpose, b"_", b" "),
        "zip_code": np.strings.add(rng.integers(100, 999, size=n).astype("S"), b"xx"),
        "addr_state": _pick(rng, STATES, [14, 8, 8, 7] + [1.3] * (len(STATES) - 4), n),
        "dti": _text(dti, 2),
        "delinq_2yrs": _text(rng.poisson(0.3, n), 1),
        "earliest_cr_line": _dates(issued - history),
        "fico_range_low": _text(fico_low, 1),
        "fico_range_high": _text(fico_low + 4, 1),
        "inq_last_6mths": _text(inq, 1),
        "mths_since_last_delinq": _text(_blank(rng.integers(0, 120, n), rng, 0.5), 1),
        "mths_since_last_record": _text(_blank(rng.integers(0, 120, n), rng, 0.84), 1),
        "open_acc": _text(open_acc, 1),
        "pub_rec": _text(rng.poisson(0.2, n), 1),
        "revol_bal": _text(np.round(rng.lognormal(np.log(11000), 0.9, n)), 1),
        "revol_util": util,
        "total_acc": _text(open_acc + rng.poisson(12, n), 1),
        "initial_list_status": _pick(rng, ("w", "f"), [0.65, 0.35], n),
        "out_prncp": _text(np.where(finished, 0.0, loan_amnt * (1 - paid_share)), 2),
        "total_pymnt": total_pymnt,
        "total_pymnt_inv": total_pymnt,
        "total_rec_prncp": _text(np.minimum(installment * term * paid_share * 0.8, loan_amnt), 2),
        "total_rec_int": _text(installment * term * paid_share * 0.2, 2),
        "total_rec_late_fee": _text(15.0 * bad, 1),
        "recoveries": _text(recoveries, 2),
        "collection_recovery_fee": _text(recoveries * 0.18, 2),
        "last_pymnt_d": _dates(issued + np.round(term * paid_share).astype(np.int64)),
        "last_pymnt_amnt": np.where(bad, b"0.0", payment),
        "next_pymnt_d": np.where(finished, b"", b"Apr-2019"),
        "last_credit_pull_d": _const(n, "Mar-2019"),
        "last_fico_range_high": _text(last_fico + 4, 1),
        "last_fico_range_low": _text(last_fico, 1),
        "collections_12_mths_ex_med": _const(n, "0.0"),
        "policy_code": _const(n, "1.0"),
        "application_type": _pick(rng, ("Individual", "Joint App"), [0.95, 0.05], n),
        "mort_acc": _text(_blank(rng.poisson(1.5, n), rng, 0.02), 1),
        "pub_rec_bankruptcies": _text(_blank(rng.poisson(0.13, n), rng, 0.001), 1),
        "hardship_flag": _const(n, "N"),
        "disbursement_method": _const(n, "Cash"),
        "debt_settlement_flag": np.where(bad & (rng.random(n) < 0.1), b"Y", b"N"),
    }


def _escaped(values: np.ndarray, quote_all: bool) -> np.ndarray:
    """Free text as csv writes it: quotes doubled and, unless every field is quoted anyway, the
    field quoted when it holds a comma, quote or newline. Each distinct value is escaped once."""

    def one(v: bytes) -> bytes:
        doubled = v.replace(b'"', b'""')
        if quote_all or not any(ch in v for ch in b',"\r\n'):
            return doubled
        return b'"' + doubled + b'"'

    unique, inverse = np.unique(values, return_inverse=True)
    return np.asarray([one(v) for v in unique.tolist()], dtype="S")[inverse.reshape(-1)]


def _rows(header: list[str], filled: dict[str, np.ndarray], quote_all: bool, n: int) -> Iterable[bytes]:
    """The data rows as bytes, a block at a time.

    Each column is a fixed-width bytes array (short values padded with NUL); the block's columns and
    separators are laid side by side in one uint8 matrix, and dropping the NUL padding leaves the
    csv text of every row.
    """
    quote = b'"' if quote_all else b""
    layout: list[bytes | str] = []  # literal separators/quotes, or the name of a filled column
    literal = b""
    for k, column in enumerate(header):
        literal += b"," if k else b""
        if column in filled:
            layout += [literal + quote, column]
            literal = quote
        else:
            literal += quote * 2
    layout.append(literal + b"\n")
    columns = {c: _escaped(v, quote_all) if c in FREE_TEXT else v for c, v in filled.items()}
    for lo in range(0, n, ROWS_PER_BLOCK):
        hi = min(n, lo + ROWS_PER_BLOCK)
        parts = []
        for item in layout:
            if isinstance(item, bytes):
                if item:
                    parts.append(np.broadcast_to(np.frombuffer(item, np.uint8), (hi - lo, len(item))))
                continue
            block = np.ascontiguousarray(columns[item][lo:hi])
            if block.dtype.itemsize:
                parts.append(block.view(np.uint8).reshape(hi - lo, block.dtype.itemsize))
        matrix = np.concatenate(parts, axis=1).reshape(-1)
        yield matrix[matrix != 0].tobytes()


def write_loan_csv(
    path: str | Path,
    n_rows: int,
    seed: int = 0,
    *,
    preamble: bool = False,
    summary_rows: bool = True,
    drop_columns: Iterable[str] = (),
) -> Path:
    """Write `n_rows` synthetic loans to `path` as accepted_2007_to_2018Q4.csv lays them out.

    `preamble` makes it an original Lending Club download: the prospectus line before the header,
    every field quoted and percent strings for int_rate and revol_util. `summary_rows` appends the
    "Total amount funded in policy code ..." rows (id column only). `drop_columns` leaves columns
    out, to test the loader's error. A name ending in .gz is written gzip-compressed.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    dropped = set(drop_columns)
    header = [c for c in COLUMNS if c not in dropped]
    filled = {c: v for c, v in loan_columns(n_rows, seed, old_style=preamble).items() if c in header}

    def text(rows: list[list[str]]) -> bytes:
        buffer = io.StringIO()
        if preamble:
            csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL).writerows(rows)
        else:
            csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode("utf-8")

    summary = [[t if c == "id" else "" for c in header] for t in SUMMARY_ROWS] if summary_rows else []
    with gzip.open(target, "wb", compresslevel=1) if target.suffix == ".gz" else open(target, "wb") as out:
        if preamble:
            out.write(PREAMBLE.encode("utf-8") + b"\n")
        out.write(text([header]))
        for block in _rows(header, filled, preamble, n_rows):
            out.write(block)
        out.write(text(summary))
    return target


STATES = ("CA", "TX", "NY", "FL", "IL", "NJ", "PA", "OH", "GA", "VA", "NC", "MI", "WA", "AZ", "MA")
RDATASETS_EMP = ("emp_lt_1", *(f"emp_{k}" for k in range(1, 10)), "emp_ge_10", "emp_unk")


def write_lending_club_rdatasets_csv(path: str | Path, n_rows: int, seed: int = 0, *, rownames: bool = True) -> Path:
    """Write `n_rows` synthetic loans as Rdatasets writes modeldata's `lending_club` (a quoted
    "rownames" column first, then the 22 predictors and Class "good"/"bad", NA for missing).

    "bad" grows with the sub-grade, the interest rate and recent inquiries, so a model can learn it."""
    rng = np.random.default_rng(seed)
    grade = rng.integers(0, 7, n_rows)
    sub = rng.integers(1, 6, n_rows)
    int_rate = np.round(5.3 + 3.2 * grade + 0.6 * sub + rng.normal(0, 0.8, n_rows), 2)
    inq = rng.poisson(0.4 + 0.25 * grade)
    risk = -3.2 + 0.45 * grade + 0.12 * sub + 0.5 * inq + rng.normal(0, 0.6, n_rows)
    bad = rng.random(n_rows) < 1 / (1 + np.exp(-risk))
    income = np.round(rng.lognormal(11.0, 0.5, n_rows), -2)
    util = np.round(rng.uniform(0, 100, n_rows), 1)
    all_util = rng.integers(0, 120, n_rows).astype(float)
    all_util[rng.random(n_rows) < 0.05] = np.nan  # NA in the real table too
    columns: dict[str, np.ndarray] = {
        "funded_amnt": rng.integers(10, 400, n_rows) * 100,
        "term": np.where(rng.random(n_rows) < 0.7, "term_36", "term_60"),
        "int_rate": int_rate,
        "annual_inc": income,
        "emp_length": np.asarray(RDATASETS_EMP)[rng.integers(0, len(RDATASETS_EMP), n_rows)],
        "delinq_2yrs": rng.poisson(0.3, n_rows),
        "inq_last_6mths": inq,
        "revol_util": util,
        "acc_now_delinq": rng.poisson(0.01, n_rows),
        "open_il_6m": rng.poisson(1.0, n_rows),
        "open_il_12m": rng.poisson(0.8, n_rows),
        "open_il_24m": rng.poisson(1.5, n_rows),
        "total_bal_il": rng.integers(0, 80_000, n_rows),
        "all_util": all_util,
        "inq_fi": rng.poisson(1.0, n_rows),
        "inq_last_12m": rng.poisson(2.0, n_rows),
        "delinq_amnt": np.where(rng.random(n_rows) < 0.01, rng.integers(1, 5000, n_rows), 0),
        "num_il_tl": rng.poisson(8, n_rows),
        "total_il_high_credit_limit": rng.integers(0, 100_000, n_rows),
        "sub_grade": np.array([f"{'ABCDEFG'[g]}{s}" for g, s in zip(grade, sub, strict=True)]),
        "addr_state": np.asarray(STATES)[rng.integers(0, len(STATES), n_rows)],
        "verification_status": np.asarray(("Not_Verified", "Source_Verified", "Verified"))[rng.integers(0, 3, n_rows)],
        "Class": np.where(bad, "bad", "good"),
    }
    header = (["rownames"] if rownames else []) + list(RDATASETS_COLUMNS)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    writer.writerow(header)
    for i in range(n_rows):
        row: list[object] = [i + 1] if rownames else []
        for column in RDATASETS_COLUMNS:
            value = columns[column][i]
            if isinstance(value, float | np.floating) and np.isnan(value):
                row.append("NA")
            elif isinstance(value, np.integer | np.floating):
                row.append(value.item())
            else:
                row.append(str(value))
        writer.writerow(row)
    # R writes strings quoted and NA bare
    target.write_text(buffer.getvalue().replace(',"NA"', ",NA"), encoding="utf-8")
    return target
