"""The Lending Club loader on synthetic files in the real format (uverify.testing.loan)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

import uverify.datasets
from uverify.datasets import loan
from uverify.datasets.base import Splits
from uverify.datasets.loan import columns, parsing, rdatasets, source
from uverify.errors import DataError
from uverify.files import sha256_file
from uverify.specs.load import validate_spec
from uverify.specs.schema import LoanData
from uverify.study import study
from uverify.testing.loan import PREAMBLE, SUMMARY_ROWS, write_lending_club_rdatasets_csv, write_loan_csv

from helpers import assert_one_line_error, assert_study_is_whole, tiny_spec_dict

N_ROWS = 3000
FILE = columns.FILE_NAME
LABELS = {
    "Fully Paid": 0,
    "Does not meet the credit policy. Status:Fully Paid": 0,
    "Charged Off": 1,
    "Default": 1,
    "Does not meet the credit policy. Status:Charged Off": 1,
}
# Written independently of the loader: known only after origination, so never a feature.
LEAKY = {
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
    "debt_settlement_flag",
    "debt_settlement_flag_date",
    *(c for c in columns.COLUMNS if c.startswith(("hardship_", "settlement_"))),
}


def spec(path: Path, **overrides: Any) -> LoanData:
    return LoanData(dataset="loan", path=path, **overrides)


def write(tmp_path: Path, n_rows: int = N_ROWS, name: str = FILE, **kwargs: Any) -> Path:
    return write_loan_csv(tmp_path / name, n_rows, **kwargs)


def read_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """Header and data rows as the csv module sees them (preamble skipped)."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if rows[0][0].startswith("Notes offered"):
        rows = rows[1:]
    return rows[0], rows[1:]


def write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def column(path: Path, name: str) -> np.ndarray:
    header, rows = read_rows(path)
    j = header.index(name)
    return np.array([row[j] if len(row) > j else "" for row in rows], dtype=object)


def together(splits: Splits) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ids = np.concatenate([splits.train.ids, splits.test.ids])
    order = np.argsort(ids)
    X = np.concatenate([splits.train.X, splits.test.X])[order]
    y = np.concatenate([splits.train.y, splits.test.y])[order]
    return ids[order], X, y


def assert_same(a: Splits, b: Splits) -> None:
    for name in ("train", "test"):
        x, z = a.split(name), b.split(name)
        assert np.array_equal(x.ids, z.ids) and np.array_equal(x.y, z.y)
        assert np.array_equal(x.X, z.X)
    assert a.train.preprocessing == b.train.preprocessing


# ------------------------------------------------------------------------------------------ loading
def test_loads_the_labelled_rows_with_file_row_ids(tmp_path: Path) -> None:
    path = write(tmp_path)
    splits = loan.load(spec(path))
    statuses = column(path, "loan_status")
    assert len(statuses) == N_ROWS + len(SUMMARY_ROWS)
    assert list(column(path, "id")[-2:]) == list(SUMMARY_ROWS)
    expected = np.array([i for i, s in enumerate(statuses) if s in LABELS])

    ids, _, y = together(splits)
    assert np.array_equal(ids, expected)  # 0-based data-row numbers; Current, Late, summary rows gone
    assert np.array_equal(y, [LABELS[statuses[i]] for i in ids])
    assert not set(splits.train.ids) & set(splits.test.ids)
    assert {"Current", "Late (31-120 days)", "In Grace Period"} <= set(statuses[~np.isin(statuses, list(LABELS))])
    assert set(LABELS) <= set(statuses)
    for part in (splits.train, splits.test):
        assert part.X.dtype == np.float32 and part.y.dtype == np.int64 and part.ids.dtype == np.int64
        assert part.X.shape[1] == len(part.preprocessing["features"]) == part.domain.lower.shape[0]
        assert set(np.unique(part.y)) == {0, 1}
        assert part.class_names == ["paid", "default"]
    assert len(splits.test) == pytest.approx(0.2 * len(ids), abs=1)
    assert uverify.datasets.registered().count("loan") == 1
    assert_same(uverify.datasets.load(spec(path)), splits)  # found through the registry


def test_preamble_quoting_and_percent_strings_parse_to_the_same_data(tmp_path: Path) -> None:
    plain = write(tmp_path / "new", seed=3)
    old = write(tmp_path / "old", seed=3, preamble=True)
    first_lines = old.read_text(encoding="utf-8").splitlines()[:3]
    assert first_lines[0] == PREAMBLE and first_lines[1].startswith('"id","member_id"')
    assert all(v.endswith("%") for v in column(old, "int_rate")[: -len(SUMMARY_ROWS)])
    assert any(v.endswith("%") for v in column(old, "revol_util"))
    assert not any(v.endswith("%") for v in column(plain, "int_rate"))
    assert_same(loan.load(spec(plain)), loan.load(spec(old)))  # ids too: the preamble is not a row


def test_percent_strings_are_parsed_to_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, preamble=True)
    splits = loan.load(spec(path, clip=1e6))  # no clipping: X maps back to the raw numbers
    ids, X, _ = together(splits)
    numeric = splits.train.preprocessing["numeric"]
    mean, std = np.array(numeric["scaler"]["mean"]), np.array(numeric["scaler"]["std"])
    for name in ("int_rate", "revol_util"):
        j = numeric["columns"].index(name)
        raw = column(path, name)[ids]
        present = raw != ""
        expected = np.array([float(v.strip().rstrip("%")) for v in raw[present]])
        assert np.allclose(X[present, j] * std[j] + mean[j], expected, rtol=1e-5, atol=1e-3)
        assert np.allclose(X[~present, j] * std[j] + mean[j], numeric["medians"][j], rtol=1e-5)


def test_field_parsers() -> None:
    text = pd.Series([" 13.56%", "13.56", "13.56%", "", None, "abc", "inf", "1e3"], dtype="str")
    assert np.allclose(
        parsing.number(text), [13.56, 13.56, 13.56, np.nan, np.nan, np.nan, np.nan, 1000.0], equal_nan=True
    )
    terms = pd.Series([" 36 months", " 60 months", None, "x"], dtype="str")
    assert np.allclose(parsing.term(terms), [36, 60, np.nan, np.nan], equal_nan=True)
    years = pd.Series(["< 1 year", "1 year", "7 years", "10+ years", "n/a", None], dtype="str")
    assert np.allclose(parsing.emp_length(years), [0, 1, 7, 10, np.nan, np.nan], equal_nan=True)
    dates = pd.Series(["Dec-2015", "Jan-2007", " Aug-2003 ", "2015-12-01", None], dtype="str")
    expected = [2015 * 12 + 11, 2007 * 12, 2003 * 12 + 7, np.nan, np.nan]
    assert np.allclose(parsing.month_index(dates), expected, equal_nan=True)


def test_same_spec_same_arrays(tmp_path: Path) -> None:
    path = write(tmp_path)
    first, second = loan.load(spec(path)), loan.load(spec(path))
    assert_same(first, second)
    json.dumps(first.train.preprocessing, allow_nan=False)  # JSON-serialisable, no NaN
    other = loan.load(spec(path, seed=1))
    assert not np.array_equal(other.test.ids, first.test.ids)


# ------------------------------------------------------------------------------------------ leakage
def test_no_feature_comes_from_a_post_origination_column(tmp_path: Path) -> None:
    splits = loan.load(spec(write(tmp_path)))
    features = splits.train.preprocessing["features"]
    sources = {name.split("=")[0] for name in features} - {columns.CREDIT_HISTORY}
    assert sources <= set(columns.ALLOWLIST)
    assert not sources & LEAKY
    assert not set(columns.ALLOWLIST) & (LEAKY | set(columns.POST_ORIGINATION))
    for fragment in ("pymnt", "recover", "settlement", "hardship", "prncp", "loan_status", "url", "title"):
        assert not any(fragment in name for name in features), fragment
    assert not any(name.startswith(("last_", "next_", "debt_")) for name in features)


def test_features_depend_on_the_allowlisted_columns_only(tmp_path: Path) -> None:
    path = write(tmp_path / "full")
    header, rows = read_rows(path)
    kept = {*columns.ALLOWLIST, "loan_status"}
    blanked = [[v if name in kept else "" for name, v in zip(header, row, strict=False)] for row in rows]
    stripped = tmp_path / "stripped.csv"
    write_rows(stripped, header, blanked)
    assert_same(loan.load(spec(path)), loan.load(spec(stripped)))


# ------------------------------------------------------------------------------------------ fitting
def test_preprocessing_is_fitted_on_train_rows_only(tmp_path: Path) -> None:
    path = write(tmp_path)
    splits = loan.load(spec(path, clip=50.0))
    prep = splits.train.preprocessing
    n_num = len(prep["numeric"]["columns"])
    train_num = splits.train.X[:, :n_num].astype(np.float64)
    assert np.allclose(train_num.mean(axis=0), 0.0, atol=1e-4)
    assert np.allclose(train_num.std(axis=0), 1.0, atol=1e-3)
    assert not np.allclose(splits.test.X[:, :n_num].mean(axis=0), 0.0, atol=1e-4)

    train_ids = splits.train.ids
    j = prep["numeric"]["columns"].index("dti")
    dti = column(path, "dti")[train_ids]
    assert prep["numeric"]["medians"][j] == float(np.median(dti[dti != ""].astype(float)))
    for name in ("home_ownership", "purpose", "addr_state"):
        train_values = sorted(set(column(path, name)[train_ids]) - {""})
        assert prep["categorical"]["categories"][name] == train_values


def test_category_unseen_in_train_is_all_zeros(tmp_path: Path) -> None:
    path = write(tmp_path)
    before = loan.load(spec(path))
    header, rows = read_rows(path)
    target = int(before.test.ids[5])
    rows[target][header.index("home_ownership")] = "HOUSEBOAT"
    write_rows(path, header, rows)
    after = loan.load(spec(path))  # same labels, same split
    assert np.array_equal(after.test.ids, before.test.ids)
    features = after.test.preprocessing["features"]
    block = [k for k, name in enumerate(features) if name.startswith("home_ownership=")]
    assert "home_ownership=HOUSEBOAT" not in features
    row = int(np.flatnonzero(after.test.ids == target)[0])
    assert after.test.X[row, block].sum() == 0.0
    grade = [k for k, name in enumerate(features) if name.startswith("grade=")]
    assert np.all(after.train.X[:, grade].sum(axis=1) == 1.0)  # one-hot: exactly one grade each


def test_domain_contains_every_sample(tmp_path: Path) -> None:
    splits = loan.load(spec(write(tmp_path), clip=2.0))
    domain = splits.train.domain
    n_features = splits.train.X.shape[1]
    n_num = len(splits.train.preprocessing["numeric"]["columns"])
    assert domain.lower.shape == domain.upper.shape == (n_features,)
    assert np.all(domain.lower[:n_num] == -2.0) and np.all(domain.upper[:n_num] == 2.0)
    assert np.all(domain.lower[n_num:] == 0.0) and np.all(domain.upper[n_num:] == 1.0)
    for part in (splits.train, splits.test):
        assert domain.contains(part.X).all()
        assert set(np.unique(part.X[:, n_num:])) <= {0.0, 1.0}
    assert np.abs(splits.train.X[:, :n_num]).max() == 2.0  # clipping happened
    assert splits.train.preprocessing["clip"] == 2.0


def test_a_model_beats_the_majority_class(tmp_path: Path) -> None:
    splits = loan.load(spec(write(tmp_path, n_rows=4000)))
    model = LogisticRegression(solver="liblinear").fit(splits.train.X, splits.train.y)
    majority = max(np.mean(splits.test.y), 1 - np.mean(splits.test.y))
    assert model.score(splits.test.X, splits.test.y) > majority + 0.03


# ------------------------------------------------------------------------------------ subsample, path
def test_subsample_keeps_a_seeded_subset_with_unchanged_ids(tmp_path: Path) -> None:
    path = write(tmp_path)
    full_ids, _, full_y = together(loan.load(spec(path)))
    small = loan.load(spec(path, subsample=500))
    ids, _, y = together(small)
    assert len(ids) == 500 and np.isin(ids, full_ids).all()
    assert np.array_equal(y, full_y[np.searchsorted(full_ids, ids)])
    assert_same(small, loan.load(spec(path, subsample=500)))
    assert not np.array_equal(together(loan.load(spec(path, subsample=500, seed=1)))[0], ids)
    assert np.array_equal(together(loan.load(spec(path, subsample=10**9)))[0], full_ids)


def test_folder_and_gzip_paths(tmp_path: Path) -> None:
    path = write(tmp_path / "plain")
    reference = loan.load(spec(path))
    assert_same(loan.load(spec(path.parent)), reference)

    gz = tmp_path / "gz" / (FILE + ".gz")
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(path.read_bytes()))
    assert_same(loan.load(spec(gz.parent)), reference)  # the .csv.gz in a folder
    assert_same(loan.load(spec(gz.parent / FILE)), reference)  # the .csv named, the .gz beside it

    kaggle = tmp_path / "kaggle" / "accepted_2007_to_2018q4.csv" / FILE  # how Kaggle's archive unpacks
    kaggle.parent.mkdir(parents=True)
    kaggle.write_bytes(path.read_bytes())
    assert_same(loan.load(spec(tmp_path / "kaggle")), reference)


# ------------------------------------------------------------------------------------------- errors
def test_missing_file_names_the_file_and_its_source(tmp_path: Path) -> None:
    for where in (tmp_path / "nowhere.csv", tmp_path):
        with pytest.raises(DataError) as excinfo:
            loan.load(spec(where))
        assert_one_line_error(excinfo, FILE, "wordsforthewise/lending-club", "not downloaded automatically")


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = write(tmp_path, n_rows=50, drop_columns=("int_rate", "loan_status"))
    with pytest.raises(DataError) as excinfo:
        loan.load(spec(path))
    message = assert_one_line_error(excinfo, str(path), "int_rate", "loan_status")
    assert "dti" not in message  # only the missing ones are named


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes(), id="random-bytes"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x00" * 500, id="nul-bytes"),
        pytest.param(b"hello,world\n1,2\n", id="other-csv"),
        pytest.param(b"\x1f\x8b" + b"not really gzip" * 10, id="broken-gzip"),
        pytest.param(",".join(columns.COLUMNS).encode() + b"\n", id="header-only"),
        pytest.param(",".join(columns.COLUMNS).encode() + b'\n"1,Fully Paid\n', id="unclosed-quote"),
    ],
)
def test_unreadable_files_give_a_one_line_data_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / FILE
    path.write_bytes(content)
    with pytest.raises(DataError) as excinfo:
        loan.load(spec(path))
    assert_one_line_error(excinfo, str(path))


def test_a_file_without_labelled_loans_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, n_rows=40)
    header, rows = read_rows(path)
    j = header.index("loan_status")
    write_rows(path, header, [[*row[:j], "Current", *row[j + 1 :]] if row[j] else row for row in rows])
    with pytest.raises(DataError) as excinfo:
        loan.load(spec(path))
    assert_one_line_error(excinfo, "no labelled loans")


def test_fixture_is_in_the_real_format(tmp_path: Path) -> None:
    path = write(tmp_path, n_rows=400)
    header, rows = read_rows(path)
    assert tuple(header) == columns.COLUMNS and len(header) == 151
    assert all(len(row) == 151 for row in rows)
    assert set(column(path, "term")[:-2]) == {" 36 months", " 60 months"}
    assert {"10+ years", "< 1 year", "n/a", ""} <= set(column(path, "emp_length"))
    assert all(pd.Series(column(path, "issue_d")[:-2]).str.fullmatch(r"[A-Z][a-z]{2}-20\d\d"))
    assert rows[-1][0] == SUMMARY_ROWS[-1] and not any(rows[-1][1:])
    assert "" in set(column(path, "mths_since_last_delinq"))
    assert len(read_rows(write(tmp_path / "bare", n_rows=10, summary_rows=False))[1]) == 10


def test_missing_means_never_keeps_an_indicator(tmp_path: Path) -> None:
    path = write(tmp_path)
    splits = loan.load(spec(path))
    ids, X, _ = together(splits)
    names = splits.train.preprocessing["features"]
    for name in columns.MISSING_MEANS_NEVER:
        raw = column(path, name)[ids]
        indicator = X[:, names.index(f"{name}=missing")]
        blank = np.array([str(v).strip() == "" for v in raw])
        assert 0 < blank.sum() < len(blank)  # the fixture has both kinds
        np.testing.assert_array_equal(indicator, blank.astype(np.float32))
    assert splits.train.domain.contains(X).all()


# ------------------------------------------------------------------------ modeldata's lending_club table
def test_the_rdatasets_table_loads_through_the_same_preprocessing(tmp_path: Path) -> None:
    csv_path = write_lending_club_rdatasets_csv(tmp_path / "lending_club.csv", 600, seed=1)
    splits = loan.load(spec(csv_path))
    train, test = splits.train, splits.test
    assert len(train) + len(test) == 600 and train.class_names == ["good", "bad"]
    assert sorted(np.concatenate([train.ids, test.ids])) == list(range(1, 601))  # the rownames column
    prep = train.preprocessing
    assert prep["source"] == "rdatasets" and prep["numeric"]["columns"] == list(columns.RDATASETS_NUMERIC)
    assert prep["categorical"]["columns"] == list(columns.RDATASETS_CATEGORICAL)
    assert all(train.domain.contains(train.X)) and all(test.domain.contains(test.X))
    assert "sub_grade=A1" in prep["features"] and "verification_status=Verified" in prep["features"]
    # emp_length and term are numbers: "emp_lt_1" is 0 years, "term_60" 60 months
    assert list(rdatasets.emp_length(pd.Series(["emp_lt_1", "emp_3", "emp_ge_10", "emp_unk"]))[:3]) == [0, 3, 10]
    assert list(parsing.term(pd.Series(["term_36", "term_60"]))) == [36, 60]
    # a folder holding only lending_club.csv is found too, and the labels are learnable
    assert len(loan.load(spec(tmp_path)).train) == len(train)
    model = LogisticRegression(max_iter=500).fit(train.X, train.y)
    assert model.score(test.X, test.y) > max(np.mean(test.y), 1 - np.mean(test.y))


def test_the_rdatasets_table_without_rownames_and_with_a_missing_column(tmp_path: Path) -> None:
    csv_path = write_lending_club_rdatasets_csv(tmp_path / "lc.csv", 200, seed=2, rownames=False)
    splits = loan.load(spec(csv_path))
    assert sorted(np.concatenate([splits.train.ids, splits.test.ids])) == list(range(200))
    frame = pd.read_csv(csv_path).drop(columns=["int_rate", "sub_grade"])
    frame.to_csv(tmp_path / "broken.csv", index=False)
    with pytest.raises(DataError, match=r"missing column.*int_rate, sub_grade.*modeldata"):
        loan.load(spec(tmp_path / "broken.csv"))


def test_the_parsed_file_is_cached_by_its_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UVERIFY_CACHE_DIR", str(tmp_path / "cache"))
    csv_path = write_loan_csv(tmp_path / columns.FILE_NAME, 400, seed=3)
    first = loan.load(spec(csv_path, subsample=300))
    cached = list((tmp_path / "cache" / "loan").glob("*.npz"))
    assert len(cached) == 1 and cached[0].name.startswith(sha256_file(csv_path))

    def no_parsing(path: Path) -> None:
        raise AssertionError("parsed again although the cache holds it")

    monkeypatch.setattr(source, "read_labelled", no_parsing)
    again = loan.load(spec(csv_path, subsample=300))  # from the cache: the same arrays
    assert np.array_equal(first.train.X, again.train.X) and np.array_equal(first.test.ids, again.test.ids)
    assert len(loan.load(spec(csv_path, subsample=200)).train) == 160  # another subsample, same cache
    monkeypatch.undo()
    monkeypatch.setenv("UVERIFY_CACHE_DIR", str(tmp_path / "cache"))
    cached[0].write_bytes(b"damaged")  # a damaged cache is parsed again and replaced
    assert np.array_equal(loan.load(spec(csv_path, subsample=300)).train.X, first.train.X)
    assert cached[0].read_bytes()[:2] == b"PK"
    write_loan_csv(csv_path, 400, seed=4)  # new content: a new cache entry
    loan.load(spec(csv_path))
    assert len(list((tmp_path / "cache" / "loan").glob("*.npz"))) == 2
    # cache: false parses every time and writes nothing
    monkeypatch.setenv("UVERIFY_CACHE_DIR", str(tmp_path / "nocache"))
    loan.load(spec(csv_path, cache=False))
    assert not (tmp_path / "nocache").exists()


def test_the_study_runs_on_loan_files(tmp_path: Path) -> None:
    """The whole grid on a Lending Club file of the real format (and on the Rdatasets table's format)."""
    for name, path in (
        ("accepted", write(tmp_path / "a", 1200)),
        ("rdatasets", write_lending_club_rdatasets_csv(tmp_path / "b" / "lending_club.csv", 600, seed=0)),
    ):
        raw = tiny_spec_dict(
            name=f"loan-{name}",
            data={"dataset": "loan", "path": str(path), "samples": 20},
            model={"arch": "mlp", "hidden": [16]},
            train={"epochs": 3, "batch_size": 32, "lr": 0.01, "seed": 0, "adversarial": {"epsilon": 0.02, "steps": 2}},
            property={"norm": "inf", "epsilon": [0.02]},
            attack={"steps": 10, "restarts": 1},
        )
        raw["unlearning"] |= {"delete": {"fraction": 0.01, "seed": 0}}
        result = study(validate_spec(raw), tmp_path / f"out-{name}", progress=False, echo=lambda _: None)
        assert_study_is_whole(result, 0.6)  # (a tiny model may settle on the majority class, ~0.8)


def test_rdatasets_row_names_must_be_distinct_integers(tmp_path: Path) -> None:
    csv_path = write_lending_club_rdatasets_csv(tmp_path / "lending_club.csv", 50, seed=0)
    frame = pd.read_csv(csv_path, dtype={"rownames": str})
    for bad in ("1.5", "inf"):
        frame.loc[3, "rownames"] = bad
        frame.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(DataError, match="'rownames' column must hold integer row names"):
            loan.load(spec(tmp_path / "bad.csv", cache=False))
    frame.loc[3, "rownames"] = "1"
    frame.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(DataError, match="distinct integer row names"):
        loan.load(spec(tmp_path / "dup.csv", cache=False))
