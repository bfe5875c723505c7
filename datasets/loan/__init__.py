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

The smaller `lending_club` table of the R package modeldata (also in the Rdatasets collection) is
recognised by its header and read through the same preprocessing (rdatasets.py).

The parsed table (before any split or fitting) is cached as an .npz named by the file's sha256, in
$UVERIFY_CACHE_DIR (default ~/.cache/uverify/loan): the 2.26M-row file is parsed once, and later loads
with any subsample, split or clip read the cache (`data.cache: false` turns it off; cache.py).

`subsample` keeps that many labelled loans, a seeded choice stratified by class, before the seeded,
stratified train/test split. Preprocessing is fitted on the TRAIN rows only (features.py): medians,
standardisation clipped to [-clip, clip], one-hot over the train categories, missing indicators. Sample
ids are the 0-based data-row number in the file (preamble and header excluded; dropped rows do not
renumber the others), so a deletion request made against the file stays valid under any subsample or split.

The modules, one concern each: columns.py (the column tables, allowlist and target mappings),
parsing.py (the parsed table and the field parsers both formats share), lending_club.py (the 151-column
export), rdatasets.py (modeldata's table), source.py (finding the file, telling its format), features.py
(the train-only preprocessing) and cache.py (the sha256-keyed .npz cache).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from uverify.datasets.base import Dataset, Splits, stratified_split, stratified_subset
from uverify.datasets.loan.cache import read_cached
from uverify.datasets.loan.features import Features
from uverify.datasets.loan.source import parse, resolve_path
from uverify.errors import DataError
from uverify.specs.schema import LoanData


def load(spec: LoanData) -> Splits:
    """Train/test splits of the labelled loans in `spec.path`, preprocessed as the module says."""
    path = resolve_path(spec.path)
    parsed = read_cached(path, parse) if spec.cache else parse(path)
    if spec.subsample is not None and spec.subsample < len(parsed.ids):
        parsed = parsed.take(stratified_subset(parsed.y, spec.subsample, spec.seed))
    try:
        train_idx, test_idx = stratified_split(len(parsed.ids), parsed.y, spec.test_fraction, spec.seed)
    except ValueError as err:
        raise DataError(f"{path}: cannot split {len(parsed.ids)} labelled loans into train and test ({err})") from None

    features = Features.fit(parsed, train_idx, spec.clip)
    domain = features.domain()
    class_names = list(parsed.class_names)
    prep: dict[str, Any] = {
        "kind": "loan",
        "source": parsed.source,
        **features.to_json(),  # features, numeric, categorical
        "clip": float(spec.clip),
        "target": parsed.target | {"class_names": class_names},
        "ids": parsed.ids_are,
        "subsample": spec.subsample,
        "seed": spec.seed,
    }

    def part(idx: np.ndarray) -> Dataset:
        X = features.transform(parsed, idx)
        return Dataset("loan", parsed.ids[idx], X, parsed.y[idx], list(class_names), domain, prep)

    return Splits(part(train_idx), part(test_idx))
